// Fakes for the edge core's seams: a downstream that records frames and a link that records
// messages.
#ifndef TETHER_TESTS_TESTING_EDGE_FAKES_H_
#define TETHER_TESTS_TESTING_EDGE_FAKES_H_

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "proto/tether/v1/edge_link.pb.h"
#include "ws_edge/core/ports.h"

namespace tether::testing {

// Records what the core sent to each socket. Not thread-safe (the core is single-threaded).
// As hostile as websocketpp: when `on_close` is set, Close reports the socket closed inline,
// before returning (terminate() on plain ws:// does that), so the core sees OnClose from
// inside its own call.
class FakeDownstream final : public edge::Downstream {
 public:
  struct Socket {
    std::vector<std::string> frames;
    bool closed = false;
    int close_code = 0;
    std::string close_reason;
    size_t max_message_size = 0;
    bool refuse_sends = false;  // behaves like a reader that stopped reading
  };
  bool Send(uint64_t socket, const std::string& text) override {
    Socket& s = sockets[socket];
    if (s.refuse_sends) return false;
    s.frames.push_back(text);
    return true;
  }
  void Close(uint64_t socket, int code, const std::string& reason) override {
    Socket& s = sockets[socket];
    if (s.closed) return;
    s.closed = true;
    s.close_code = code;
    s.close_reason = reason;
    ++closes_in_progress;
    if (on_close) on_close(socket);
    --closes_in_progress;
  }
  void SetMaxMessageSize(uint64_t socket, size_t bytes) override {
    sockets[socket].max_message_size = bytes;
  }
  std::map<uint64_t, Socket> sockets;
  std::function<void(uint64_t)> on_close;  // e.g. the core's OnClose, called inline
  int closes_in_progress = 0;
};

// Records what the core sent to the registry; `up` says whether a stream is attached.
class FakeLink final : public edge::RegistryLink {
 public:
  bool Send(const v1::EdgeMessage& message) override {
    if (!up || full) return false;
    sent.push_back(message);
    return true;
  }
  bool up = true;
  bool full = false;  // up, but its queue is full: every send fails
  std::vector<v1::EdgeMessage> sent;
};

// Holds offloaded work until the test runs it, as a worker thread would later.
class DeferredOffload final : public edge::Offload {
 public:
  void Run(std::function<void()> work, std::function<void()> then) override {
    jobs.push_back({std::move(work), std::move(then)});
  }
  void RunAll() {
    auto pending = std::move(jobs);
    jobs.clear();
    for (auto& [work, then] : pending) {
      work();
      then();
    }
  }
  std::vector<std::pair<std::function<void()>, std::function<void()>>> jobs;
};

}  // namespace tether::testing

#endif  // TETHER_TESTS_TESTING_EDGE_FAKES_H_
