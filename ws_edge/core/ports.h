// The edge core's two seams: the node-facing socket layer and the registry link.
#ifndef TETHER_WS_EDGE_CORE_PORTS_H_
#define TETHER_WS_EDGE_CORE_PORTS_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "proto/tether/v1/edge_link.pb.h"

namespace tether::edge {

// Node sockets, identified by a number the transport assigns. Called on the event loop only.
class Downstream {
 public:
  virtual ~Downstream() = default;
  // Queues a text frame. False when it would push the socket's unsent bytes past the bound
  // (a slow reader); the caller then closes the socket.
  virtual bool Send(uint64_t socket, const std::string& text) = 0;
  // Starts a close handshake; OnClose follows.
  virtual void Close(uint64_t socket, int code, const std::string& reason) = 0;
  // The frame-size limit after the handshake (before it, the transport's own small limit).
  virtual void SetMaxMessageSize(uint64_t socket, size_t bytes) = 0;
};

// The EdgeLink stream to the registry. Called on the event loop only.
class RegistryLink {
 public:
  virtual ~RegistryLink() = default;
  // Queues a message on the current stream; false when there is no attached stream.
  virtual bool Send(const v1::EdgeMessage& message) = 0;
};

// Runs CPU-heavy work (device-signature checks) away from the event loop, so one socket's
// handshake never stalls the others. `work` runs on any thread; `then` runs on the loop after it.
class Offload {
 public:
  virtual ~Offload() = default;
  virtual void Run(std::function<void()> work, std::function<void()> then) = 0;
};

// Runs both at once on the caller's thread (tests, and single-core deployments).
class InlineOffload final : public Offload {
 public:
  void Run(std::function<void()> work, std::function<void()> then) override {
    work();
    then();
  }
};

}  // namespace tether::edge

#endif  // TETHER_WS_EDGE_CORE_PORTS_H_
