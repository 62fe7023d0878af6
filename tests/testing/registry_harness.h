// RegistryHarness: a Registry over a store (a MemoryStore unless a factory says otherwise) and
// a FakeClock, with recording edges and a presence recorder, for the core's scenario and
// property tests.
#ifndef TETHER_TESTS_TESTING_REGISTRY_HARNESS_H_
#define TETHER_TESTS_TESTING_REGISTRY_HARNESS_H_

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/clock.h"
#include "gtest/gtest.h"
#include "registry_service/core/registry.h"
#include "registry_service/store/memory_store.h"
#include "tests/testing/fake_edge_sink.h"

namespace tether::testing {

// Makes the store under test from the options and the fake clock's start time.
using StoreFactory = std::function<std::unique_ptr<registry::Store>(
    const registry::StoreOptions& options, int64_t start_ms)>;

inline std::unique_ptr<registry::Store> MakeMemoryStore(const registry::StoreOptions& options,
                                                        int64_t start_ms) {
  return std::make_unique<registry::MemoryStore>(options, start_ms);
}

// Owns everything it creates. Not thread-safe (single-threaded tests).
class RegistryHarness {
 public:
  explicit RegistryHarness(registry::StoreOptions options = DefaultOptions(),
                           const StoreFactory& factory = MakeMemoryStore,
                           const registry::RegistryOptions& registry_options = {})
      : store_(factory(options, clock_.NowMs())), registry_(*store_, clock_, registry_options) {
    auto watch =
        registry_.Watch(0, [this](const registry::PresenceEvent& e) { events_.push_back(e); });
    EXPECT_TRUE(watch.ok());
  }

  static registry::StoreOptions DefaultOptions() {
    registry::StoreOptions o;
    o.auto_approve_all = true;
    return o;
  }

  // Attaches `edge_id` with `epoch` through a new recording sink.
  RecordingEdgeSink& Attach(const std::string& edge_id, const std::string& epoch = "e1") {
    auto sink = std::make_shared<RecordingEdgeSink>();
    sinks_[edge_id] = sink;
    epochs_[edge_id] = epoch;
    EXPECT_TRUE(registry_.AttachEdge(edge_id, epoch, sink).ok());
    return *sink;
  }
  RecordingEdgeSink& Sink(const std::string& edge_id) { return *sinks_.at(edge_id); }
  void Detach(const std::string& edge_id) {
    registry_.DetachEdge(edge_id, sinks_.at(edge_id).get());
  }

  static registry::ConnectionSpec Spec(const std::string& conn_id, const std::string& node_id,
                                       const std::string& edge_id, const std::string& epoch) {
    registry::ConnectionSpec s;
    s.conn_id = conn_id;
    s.node_id = node_id;
    s.edge_id = edge_id;
    s.edge_epoch = epoch;
    s.public_key = "pk-" + node_id;
    s.shared_token_ok = true;
    s.client.client_id = "node-host";
    s.client.commands = {"system.which", "system.run"};
    return s;
  }

  // Registers `conn_id` for `node_id` on `edge_id`; returns the granted generation (0: refused).
  uint64_t Register(const std::string& conn_id, const std::string& node_id,
                    const std::string& edge_id = "edgeA") {
    auto r = registry_.Register(Spec(conn_id, node_id, edge_id, epochs_.at(edge_id)));
    if (!r.ok() || !r->granted) return 0;
    return r->generation;
  }

  // An invoke whose result is captured in `results()[tag]`.
  registry::InvokeTicket Invoke(const std::string& tag, const std::string& node_id,
                                int64_t timeout_ms = 5000, const std::string& key = "",
                                const std::string& command = "system.which") {
    registry::InvokeParams p;
    p.node_id = node_id;
    p.command = command;
    p.params_json = R"({"bins":["ls"]})";
    p.timeout_ms = timeout_ms;
    p.idempotency_key = key;
    return registry_.Invoke(p, [this, tag](const registry::InvokeResult& r) {
      ASSERT_FALSE(results_.count(tag)) << "invoke " << tag << " ended twice";
      results_[tag] = r;
    });
  }

  // The most recent invoke sent to `conn_id` on `edge_id`.
  std::optional<registry::Dispatch> LastInvokeTo(const std::string& edge_id,
                                                 const std::string& conn_id) {
    std::optional<registry::Dispatch> found;
    for (const auto& d : Sink(edge_id).invokes()) {
      if (d.conn_id == conn_id) found = d;
    }
    return found;
  }

  bool Result(const std::string& conn_id, const registry::Dispatch& d,
              const std::string& payload = R"({"ok":1})") {
    registry::InvokeOutcome o;
    o.code = registry::InvokeCode::kOk;
    o.payload_json = payload;
    return registry_.AcceptResult(conn_id, d.invoke_id, d.node_id, o);
  }

  registry::CloseResult Close(const std::string& edge_id, const std::string& conn_id) {
    return registry_.Close(edge_id, conn_id);
  }

  // Moves time by `ms`, ticking every 500 ms; attached edges renew their leases on the way
  // unless `heartbeats` is false (then their leases lapse).
  void Advance(int64_t ms, bool heartbeats = true) {
    while (ms > 0) {
      const int64_t step = std::min<int64_t>(ms, 500);
      clock_.Advance(step);
      ms -= step;
      if (heartbeats) {
        for (const auto& [edge_id, epoch] : epochs_) {
          (void)registry_.Heartbeat(edge_id, epoch);
        }
      }
      registry_.Tick();
    }
  }

  registry::NodeView Node(const std::string& node_id) {
    auto n = store_->GetNode(node_id);
    EXPECT_TRUE(n.ok()) << n.status();
    return n.ok() ? *n : registry::NodeView{};
  }

  int CountEvents(const std::string& node_id, registry::PresenceKind kind) const {
    int n = 0;
    for (const auto& e : events_) n += e.node_id == node_id && e.kind == kind;
    return n;
  }

  common::FakeClock& clock() { return clock_; }
  registry::Store& store() { return *store_; }
  registry::Registry& registry() { return registry_; }
  std::map<std::string, registry::InvokeResult>& results() { return results_; }
  std::vector<registry::PresenceEvent>& events() { return events_; }
  const std::string& epoch(const std::string& edge_id) { return epochs_.at(edge_id); }

 private:
  common::FakeClock clock_;
  std::unique_ptr<registry::Store> store_;
  registry::Registry registry_;
  std::map<std::string, std::shared_ptr<RecordingEdgeSink>> sinks_;
  std::map<std::string, std::string> epochs_;
  std::map<std::string, registry::InvokeResult> results_;
  std::vector<registry::PresenceEvent> events_;
};

}  // namespace tether::testing

#endif  // TETHER_TESTS_TESTING_REGISTRY_HARNESS_H_
