// RecordingEdgeSink: an EdgeSink that records what the registry sent to one edge.
#ifndef TETHER_TESTS_TESTING_FAKE_EDGE_SINK_H_
#define TETHER_TESTS_TESTING_FAKE_EDGE_SINK_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "registry_service/core/registry.h"

namespace tether::testing {

// Records invokes and commands in arrival order. Thread-safe.
class RecordingEdgeSink final : public registry::EdgeSink {
 public:
  void SendInvoke(const registry::Dispatch& dispatch, int64_t remaining_ms) override {
    if (before_invoke) before_invoke();  // e.g. a stream's write that stalls
    absl::MutexLock lock(&mu_);
    invokes_.push_back(dispatch);
    remaining_.push_back(remaining_ms);
    log_.push_back("invoke " + dispatch.conn_id);
  }
  void SendCommand(const registry::EdgeCommand& command) override {
    absl::MutexLock lock(&mu_);
    commands_.push_back(command);
    static const char* const kKinds[] = {"superseded", "close", "cancel"};
    log_.push_back(std::string(kKinds[static_cast<int>(command.kind)]) + " " + command.conn_id);
  }
  // Everything received, in arrival order: "invoke <conn>", "superseded <conn>", ...
  std::vector<std::string> log() {
    absl::MutexLock lock(&mu_);
    return log_;
  }
  // Runs at the start of SendInvoke, outside the sink's lock. Set before use.
  std::function<void()> before_invoke;
  std::vector<registry::Dispatch> invokes() {
    absl::MutexLock lock(&mu_);
    return invokes_;
  }
  std::vector<int64_t> remaining() {
    absl::MutexLock lock(&mu_);
    return remaining_;
  }
  std::vector<registry::EdgeCommand> commands() {
    absl::MutexLock lock(&mu_);
    return commands_;
  }
  // Invokes sent to `conn_id`.
  int InvokesTo(const std::string& conn_id) {
    absl::MutexLock lock(&mu_);
    int n = 0;
    for (const auto& d : invokes_) n += d.conn_id == conn_id;
    return n;
  }
  // Commands of `kind` for `conn_id`.
  int CommandsFor(const std::string& conn_id, registry::EdgeCommand::Kind kind) {
    absl::MutexLock lock(&mu_);
    int n = 0;
    for (const auto& c : commands_) n += c.conn_id == conn_id && c.kind == kind;
    return n;
  }

 private:
  absl::Mutex mu_;
  std::vector<registry::Dispatch> invokes_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> remaining_ ABSL_GUARDED_BY(mu_);
  std::vector<registry::EdgeCommand> commands_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> log_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tether::testing

#endif  // TETHER_TESTS_TESTING_FAKE_EDGE_SINK_H_
