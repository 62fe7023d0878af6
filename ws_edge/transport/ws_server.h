// WsServer: the edge's WebSocket listener (the only code that includes websocketpp).
#ifndef TETHER_WS_EDGE_TRANSPORT_WS_SERVER_H_
#define TETHER_WS_EDGE_TRANSPORT_WS_SERVER_H_

#include <cstdint>
#include <functional>
#include <string>

#include <websocketpp/config/asio_no_tls.hpp>
#include <websocketpp/server.hpp>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "ws_edge/core/edge_core.h"
#include "ws_edge/core/ports.h"

namespace tether::edge {

// websocketpp settings: a small per-connection read buffer (the default 16 KiB would dominate
// idle memory), the pre-handshake frame limit as the default message size (raised per socket
// after hello), no logging. No extensions: permessage-deflate offers are declined.
struct EdgeWsConfig : websocketpp::config::asio {
  using type = EdgeWsConfig;
  using base = websocketpp::config::asio;
  static const size_t connection_read_buffer_size = 1024;
  static const size_t max_message_size = 64 * 1024;
  static const size_t max_http_body_size = 16 * 1024;
  // A peer that stopped reading never answers a close: do not hold its buffers for long.
  static const long timeout_close_handshake = 2000;
  static const websocketpp::log::level elog_level = websocketpp::log::elevel::none;
  static const websocketpp::log::level alog_level = websocketpp::log::alevel::none;
};

struct WsServerOptions {
  std::string host = "127.0.0.1";
  int port = 18789;                          // 0: any free port
  size_t max_send_buffer_bytes = 52'428'800;  // unsent bytes per socket before "slow consumer"
  int64_t ping_interval_ms = 25'000;          // WS ping period once authenticated
  int64_t pong_timeout_ms = 25'000;           // a peer silent this long after a ping is dead
  int64_t timer_ms = 250;                     // how often EdgeCore::OnTimer runs
  int listen_backlog = 4096;
  bool trust_x_forwarded_for = false;  // node address from the proxy's X-Forwarded-For
};

// Owns the asio loop and every socket on it. The loop thread (the one calling Run) is the
// only thread that touches sockets or the core; other threads hand work over with Post.
class WsServer final : public Downstream {
 public:
  explicit WsServer(const WsServerOptions& options);
  ~WsServer() override;

  // Binds and listens; returns the bound port.
  absl::StatusOr<int> Listen();
  // The core that receives socket events. Not owned; must outlive Run.
  void set_core(EdgeCore* core) { core_ = core; }
  // Runs the loop on the calling thread until Stop.
  void Run();
  // Thread-safe.
  void Post(std::function<void()> fn);
  void Stop();  // thread-safe: stops accepting and ends Run
  void StopListening();
  size_t socket_count() const { return sockets_.size(); }

  // Downstream (loop thread only).
  bool Send(uint64_t socket, const std::string& text) override;
  void Close(uint64_t socket, int code, const std::string& reason) override;
  void SetMaxMessageSize(uint64_t socket, size_t bytes) override;

 private:
  using Server = websocketpp::server<EdgeWsConfig>;
  using ConnPtr = Server::connection_ptr;

  ConnPtr Get(uint64_t socket);
  void ArmTimer();
  void ArmPings();

  const WsServerOptions options_;
  Server server_;
  EdgeCore* core_ = nullptr;  // not owned
  uint64_t next_socket_ = 1;
  absl::flat_hash_map<uint64_t, websocketpp::connection_hdl> sockets_;
  std::unique_ptr<asio::steady_timer> timer_;
  std::unique_ptr<asio::steady_timer> ping_timer_;
};

}  // namespace tether::edge

#endif  // TETHER_WS_EDGE_TRANSPORT_WS_SERVER_H_
