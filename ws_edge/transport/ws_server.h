// WsServer: the edge's WebSocket listener, ws:// or wss:// (the only code that includes
// websocketpp).
#ifndef TETHER_WS_EDGE_TRANSPORT_WS_SERVER_H_
#define TETHER_WS_EDGE_TRANSPORT_WS_SERVER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "ws_edge/core/edge_core.h"
#include "ws_edge/core/ports.h"

namespace tether::edge {

struct WsServerOptions {
  std::string host = "127.0.0.1";
  int port = 18789;                           // 0: any free port
  size_t max_send_buffer_bytes = 52'428'800;  // unsent bytes per socket before "slow consumer"
  int64_t ping_interval_ms = 25'000;          // WS ping period once authenticated
  int64_t pong_timeout_ms = 25'000;           // a peer silent this long after a ping is dead
  int64_t timer_ms = 250;                     // how often EdgeCore::OnTimer runs
  int listen_backlog = 4096;
  // ws:// only (see LingeringClose): a closed socket's input is drained this long at most
  // before it is really closed, for at most this many sockets at once. Lingering descriptors
  // are outside --max_connections, whose default leaves 256 of the process's limit free: keep
  // this well under that. A peer that completes the close answers with its FIN within a round
  // trip, so only peers still sending (or gone silent) linger long.
  int64_t linger_ms = 2'000;
  size_t max_lingering_closes = 128;
  bool trust_x_forwarded_for = false;  // node address from the proxy's X-Forwarded-For
  // wss:// when set: PEM certificate chain and key files, re-read by ReloadTls().
  std::string tls_cert_file;
  std::string tls_key_file;
};

// Owns the asio loop and every socket on it. The loop thread (the one calling Run) is the only
// thread that touches sockets or the core; other threads hand work over with Post.
class WsServer : public Downstream {
 public:
  // ws:// or, with options.tls_cert_file, wss://.
  static std::unique_ptr<WsServer> Create(const WsServerOptions& options);
  ~WsServer() override = default;

  // Binds and listens; returns the bound port.
  virtual absl::StatusOr<int> Listen() = 0;
  // The core that receives socket events. Not owned; must outlive Run.
  virtual void set_core(EdgeCore* core) = 0;
  // Runs the loop on the calling thread until Stop.
  virtual void Run() = 0;
  virtual void Post(std::function<void()> fn) = 0;  // thread-safe
  virtual void Stop() = 0;                          // thread-safe: stops accepting, ends Run
  virtual void StopListening() = 0;                 // loop thread
  // Re-reads the certificate and key for new connections (wss only). Thread-safe.
  virtual absl::Status ReloadTls() = 0;
};

}  // namespace tether::edge

#endif  // TETHER_WS_EDGE_TRANSPORT_WS_SERVER_H_
