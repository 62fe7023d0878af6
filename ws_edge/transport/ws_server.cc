#include "ws_edge/transport/ws_server.h"

#include <chrono>
#include <cstdio>
#include <mutex>
#include <utility>
#include <websocketpp/concurrency/none.hpp>
#include <websocketpp/config/asio.hpp>
#include <websocketpp/config/asio_no_tls.hpp>
#include <websocketpp/server.hpp>

#include "absl/container/flat_hash_map.h"
#include "common/log.h"
#include "ws_edge/transport/lingering_close.h"

namespace tether::edge {
namespace {

// websocketpp's plain-TCP socket policy with a careful close. Its own shuts down both
// directions, and Linux answers input arriving after that with a reset, which can overtake the
// close frame just sent (a node behind nginx then sees 1006, not 1009). This one shuts down the
// sending side only and hands the descriptor itself to LingeringClose, which drains the input
// until the peer's FIN (or a deadline) before it really closes the socket. release() takes the
// descriptor out of asio's hands (out of epoll, pending operations aborted), so the library's
// next read fails at once and frees the connection: nothing of it waits on the peer.
class CarefulSocket : public websocketpp::transport::asio::basic_socket::connection {
 public:
  using type = CarefulSocket;
  using ptr = std::shared_ptr<type>;

  ptr get_shared() { return std::static_pointer_cast<type>(shared_from_this()); }
  void set_lingering_close(LingeringClose* lingering) { lingering_ = lingering; }

  void async_shutdown(websocketpp::transport::asio::socket::shutdown_handler handler) {
    std::error_code ec;
    get_socket().shutdown(asio::ip::tcp::socket::shutdown_send, ec);
    if (!ec && lingering_ != nullptr) {
      std::error_code release_ec;
      const int fd = get_socket().release(release_ec);
      if (!release_ec && fd >= 0) lingering_->Adopt(fd);
    }
    handler(ec);
  }

 private:
  LingeringClose* lingering_ = nullptr;  // not owned; outlives every connection
};

class CarefulSocketEndpoint : public websocketpp::transport::asio::basic_socket::endpoint {
 public:
  using socket_con_type = CarefulSocket;
  using socket_con_ptr = CarefulSocket::ptr;

  void set_lingering_close(LingeringClose* lingering) { lingering_ = lingering; }

 protected:
  std::error_code init(socket_con_ptr scon) {
    scon->set_lingering_close(lingering_);
    return websocketpp::transport::asio::basic_socket::endpoint::init(scon);
  }

 private:
  LingeringClose* lingering_ = nullptr;
};

struct CarefulAsioConfig : websocketpp::config::asio {
  struct transport_config : websocketpp::config::asio::transport_config {
    using socket_type = CarefulSocketEndpoint;
  };
  using transport_type = websocketpp::transport::asio::endpoint<transport_config>;
};

// websocketpp settings: a small per-connection read buffer (the default 16 KiB would dominate
// idle memory), the pre-handshake frame limit as the default message size (raised per socket
// after hello), no logging. No extensions: permessage-deflate offers are declined.
template <class Base>
struct EdgeConfig : Base {
  using type = EdgeConfig;
  using base = Base;
  // One thread runs the loop and touches every connection (WsServer's contract): no locks, no
  // strand per connection.
  using concurrency_type = websocketpp::concurrency::none;
  struct transport_config : Base::transport_config {
    using concurrency_type = websocketpp::concurrency::none;
    static const bool enable_multithreading = false;
  };
  using transport_type = websocketpp::transport::asio::endpoint<transport_config>;
  static const size_t connection_read_buffer_size = 1024;
  static const size_t max_message_size = 64 * 1024;
  static const size_t max_http_body_size = 16 * 1024;
  // A peer that stopped reading never answers a close: do not hold its buffers for long.
  static const long timeout_close_handshake = 2000;
  static const websocketpp::log::level elog_level = websocketpp::log::elevel::none;
  static const websocketpp::log::level alog_level = websocketpp::log::alevel::none;
};

using PlainConfig = EdgeConfig<CarefulAsioConfig>;
using TlsConfig = EdgeConfig<websocketpp::config::asio_tls>;

bool IsLoopback(const asio::ip::address& a) {
  if (a.is_v6() && a.to_v6().is_v4_mapped()) {
    return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6()).is_loopback();
  }
  return a.is_loopback();
}

template <class Config>
class WsServerImpl final : public WsServer {
 public:
  using Server = websocketpp::server<Config>;
  using ConnPtr = typename Server::connection_ptr;

  explicit WsServerImpl(const WsServerOptions& options)
      : options_(options),
        lingering_(options.max_lingering_closes, std::chrono::milliseconds(options.linger_ms)) {
    std::error_code ec;
    server_.init_asio(ec);
    if constexpr (!std::is_same_v<Config, TlsConfig>) server_.set_lingering_close(&lingering_);
    server_.set_reuse_addr(true);
    server_.set_listen_backlog(options_.listen_backlog);
    server_.set_open_handler([this](websocketpp::connection_hdl hdl) { OnOpen(hdl); });
    // Small frames (ticks, invoke requests, acks) must not wait for the peer's delayed ACK:
    // with Nagle on, two back-to-back writes stalled 40 ms (bench/RESULTS.md).
    // (After accept: websocketpp's socket_init handler runs before the socket is open.)
    server_.set_tcp_post_init_handler([this](websocketpp::connection_hdl hdl) {
      std::error_code ec;
      ConnPtr con = server_.get_con_from_hdl(hdl, ec);
      if (!ec) con->get_raw_socket().lowest_layer().set_option(asio::ip::tcp::no_delay(true), ec);
    });
    if constexpr (std::is_same_v<Config, TlsConfig>) {
      server_.set_tls_init_handler([this](websocketpp::connection_hdl) { return TlsContext(); });
    }
  }

  absl::StatusOr<int> Listen() override {
    if constexpr (std::is_same_v<Config, TlsConfig>) {
      if (absl::Status s = ReloadTls(); !s.ok()) return s;
    }
    std::error_code ec;
    asio::ip::address address = asio::ip::make_address(options_.host, ec);
    if (ec) return absl::InvalidArgumentError("bad listen host: " + options_.host);
    server_.listen(asio::ip::tcp::endpoint(address, static_cast<uint16_t>(options_.port)), ec);
    if (ec) {
      return absl::UnavailableError("cannot listen on " + options_.host + ":" +
                                    std::to_string(options_.port) + ": " + ec.message());
    }
    asio::ip::tcp::endpoint local = server_.get_local_endpoint(ec);
    if (ec) return absl::UnavailableError("no local endpoint: " + ec.message());
    timer_ = std::make_unique<asio::steady_timer>(server_.get_io_service());
    ping_timer_ = std::make_unique<asio::steady_timer>(server_.get_io_service());
    accept_timer_ = std::make_unique<asio::steady_timer>(server_.get_io_service());
    StartAccept();
    ArmTimer();
    ArmPings();
    return static_cast<int>(local.port());
  }

  void set_core(EdgeCore* core) override { core_ = core; }

  // The accept loop, in place of websocketpp's: that one accepts again at once after a failed
  // accept, and with the process out of file descriptors (EMFILE) the pending connection makes
  // every retry fail the same way: one core spins and the log floods. Here a failure waits a
  // back-off (10 ms, doubling to 1 s; reset by the next success) before the next accept, and is
  // logged once per wait. Loop thread only.
  void StartAccept() {
    if (!server_.is_listening()) return;
    ConnPtr con = server_.get_connection();
    if (!con) {
      AcceptLater("cannot create a connection");
      return;
    }
    std::error_code ec;
    server_.async_accept(
        std::static_pointer_cast<typename Server::transport_con_type>(con),
        [this, con](const std::error_code& accept_ec) {
          if (!accept_ec) {
            accept_backoff_ = std::chrono::milliseconds(0);
            con->start();
            StartAccept();
            return;
          }
          con->terminate(accept_ec);
          if (accept_ec == websocketpp::error::operation_canceled) return;  // stopped listening
          AcceptLater(accept_ec.message());
        },
        ec);
    if (ec) {
      con->terminate(std::error_code());
      if (ec != websocketpp::error::async_accept_not_listening) AcceptLater(ec.message());
    }
  }

  void AcceptLater(const std::string& why) {
    accept_backoff_ = std::min(std::chrono::milliseconds(1000),
                               std::max(std::chrono::milliseconds(10), accept_backoff_ * 2));
    common::Log(common::LogLevel::kWarn, "accept_failed",
                {{"error", why},
                 {"retry_in_ms", std::to_string(accept_backoff_.count())},
                 {"hint", "out of file descriptors? see --max_connections and ulimit -n"}});
    accept_timer_->expires_after(accept_backoff_);
    accept_timer_->async_wait([this](const std::error_code& ec) {
      if (!ec) StartAccept();
    });
  }

  void Run() override {
    // One catch at the top of the I/O thread: websocketpp and asio may still throw on bugs.
    for (;;) {
      try {
        server_.run();
        return;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "ws_edge: I/O loop error: %s\n", e.what());
      }
    }
  }

  void Post(std::function<void()> fn) override {
    asio::post(server_.get_io_service(), std::move(fn));
  }

  void StopListening() override {
    std::error_code ec;
    server_.stop_listening(ec);
  }

  void Stop() override {
    Post([this] {
      StopListening();
      if (timer_) timer_->cancel();
      if (ping_timer_) ping_timer_->cancel();
      if (accept_timer_) accept_timer_->cancel();
      server_.stop();
    });
  }

  absl::Status ReloadTls() override {
    if constexpr (!std::is_same_v<Config, TlsConfig>) {
      return absl::OkStatus();
    } else {
      auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
      std::error_code ec;
      ctx->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                           asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                           asio::ssl::context::no_tlsv1_1,
                       ec);
      if (!ec) ctx->use_certificate_chain_file(options_.tls_cert_file, ec);
      if (!ec) ctx->use_private_key_file(options_.tls_key_file, asio::ssl::context::pem, ec);
      if (ec) return absl::InvalidArgumentError("TLS certificate or key: " + ec.message());
      std::lock_guard<std::mutex> lock(tls_mu_);
      tls_ = std::move(ctx);
      return absl::OkStatus();
    }
  }

  // Downstream (loop thread only).
  bool Send(uint64_t socket, const std::string& text) override {
    ConnPtr con = Get(socket);
    if (!con) return true;  // already gone; its close is on the way
    if (con->get_buffered_amount() + text.size() > options_.max_send_buffer_bytes) return false;
    std::error_code ec = con->send(text, websocketpp::frame::opcode::text);
    return !ec || ec == websocketpp::error::make_error_code(websocketpp::error::invalid_state);
  }

  void Close(uint64_t socket, int code, const std::string& reason) override {
    ConnPtr con = Get(socket);
    if (!con) return;
    std::error_code ec;
    if (con->get_state() == websocketpp::session::state::connecting) {
      con->terminate(ec);
      return;
    }
    con->close(static_cast<websocketpp::close::status::value>(code), reason, ec);
    if (ec) con->terminate(ec);
  }

  void SetMaxMessageSize(uint64_t socket, size_t bytes) override {
    if (ConnPtr con = Get(socket)) con->set_max_message_size(bytes);
  }

 private:
  std::shared_ptr<asio::ssl::context> TlsContext() {
    std::lock_guard<std::mutex> lock(tls_mu_);
    return tls_;
  }

  void OnOpen(websocketpp::connection_hdl hdl) {
    std::error_code ec;
    ConnPtr con = server_.get_con_from_hdl(hdl, ec);
    if (ec) return;
    const uint64_t socket = next_socket_++;
    sockets_[socket] = hdl;
    con->set_pong_timeout(static_cast<long>(options_.pong_timeout_ms));
    con->set_pong_timeout_handler([this, socket](websocketpp::connection_hdl, std::string) {
      ConnPtr c = Get(socket);
      if (c) c->terminate(std::error_code());  // a dead peer: no close handshake to wait for
    });
    con->set_message_handler(
        [this, socket](websocketpp::connection_hdl, typename Server::message_ptr msg) {
          if (msg->get_opcode() != websocketpp::frame::opcode::text) {
            Close(socket, 1003, "text frames only");
            return;
          }
          if (core_ != nullptr) core_->OnMessage(socket, msg->get_payload());
        });
    // Pongs are control frames that websocketpp's buffered amount does not count, so a client
    // that pings without reading could grow the send queue without bound: one pong a second.
    con->set_ping_handler([this, socket](websocketpp::connection_hdl, std::string) {
      const auto now = std::chrono::steady_clock::now();
      auto& last = last_pong_[socket];
      if (now - last < std::chrono::seconds(1)) return false;
      last = now;
      return true;
    });
    auto gone = [this, socket](websocketpp::connection_hdl) {
      sockets_.erase(socket);
      last_pong_.erase(socket);
      if (core_ != nullptr) core_->OnClose(socket);
    };
    con->set_close_handler(gone);
    con->set_fail_handler(gone);
    std::string remote = con->get_remote_endpoint();
    bool loopback = false;
    auto endpoint = con->get_raw_socket().lowest_layer().remote_endpoint(ec);
    if (!ec) loopback = IsLoopback(endpoint.address());
    if (options_.trust_x_forwarded_for) {
      // The first entry is the client as the (trusted, overwriting) proxy saw it. Without a
      // usable header the peer is the proxy, whose loopback address says nothing about the
      // client: never loopback then (--auto_approve_loopback must not pair it).
      loopback = false;
      std::string forwarded = con->get_request_header("X-Forwarded-For");
      forwarded = forwarded.substr(0, forwarded.find(','));
      forwarded.erase(0, forwarded.find_first_not_of(' '));
      forwarded.erase(forwarded.find_last_not_of(' ') + 1);
      asio::ip::address a = asio::ip::make_address(forwarded, ec);
      if (!ec) {
        remote = a.is_v6() ? "[" + forwarded + "]:0" : forwarded + ":0";
        loopback = IsLoopback(a);
      }
    }
    // The handshake is over and nothing reads the HTTP request or response again (websocketpp
    // reads them only to log sockets that fail before opening): free their headers, about a
    // kilobyte per idle socket. The library offers no setter; the objects are not const.
    using Connection = typename Server::connection_type;
    const_cast<typename Connection::request_type&>(con->get_request()) = {};
    const_cast<typename Connection::response_type&>(con->get_response()) = {};
    if (core_ != nullptr) core_->OnOpen(socket, remote, loopback);
  }

  void ArmTimer() {
    timer_->expires_after(std::chrono::milliseconds(options_.timer_ms));
    timer_->async_wait([this](const std::error_code& ec) {
      if (ec) return;
      if (core_ != nullptr) core_->OnTimer();
      ArmTimer();
    });
  }

  void ArmPings() {
    ping_timer_->expires_after(std::chrono::milliseconds(options_.ping_interval_ms));
    ping_timer_->async_wait([this](const std::error_code& ec) {
      if (ec) return;
      for (const auto& [socket, hdl] : sockets_) {
        std::error_code perr;
        ConnPtr con = server_.get_con_from_hdl(hdl, perr);
        if (!perr && con->get_state() == websocketpp::session::state::open) con->ping("", perr);
      }
      ArmPings();
    });
  }

  ConnPtr Get(uint64_t socket) {
    auto it = sockets_.find(socket);
    if (it == sockets_.end()) return nullptr;
    std::error_code ec;
    ConnPtr con = server_.get_con_from_hdl(it->second, ec);
    return ec ? nullptr : con;
  }

  const WsServerOptions options_;
  LingeringClose lingering_;  // before server_: its sockets hand descriptors over until the end
  Server server_;
  EdgeCore* core_ = nullptr;  // not owned
  uint64_t next_socket_ = 1;
  absl::flat_hash_map<uint64_t, websocketpp::connection_hdl> sockets_;
  absl::flat_hash_map<uint64_t, std::chrono::steady_clock::time_point> last_pong_;
  std::unique_ptr<asio::steady_timer> timer_;
  std::unique_ptr<asio::steady_timer> ping_timer_;
  // Accept loop (StartAccept): the back-off after a failed accept, doubling up to 1 s.
  std::unique_ptr<asio::steady_timer> accept_timer_;
  std::chrono::milliseconds accept_backoff_{0};
  std::mutex tls_mu_;  // guards tls_: ReloadTls runs on the signal thread
  std::shared_ptr<asio::ssl::context> tls_;
};

}  // namespace

std::unique_ptr<WsServer> WsServer::Create(const WsServerOptions& options) {
  if (!options.tls_cert_file.empty()) return std::make_unique<WsServerImpl<TlsConfig>>(options);
  return std::make_unique<WsServerImpl<PlainConfig>>(options);
}

}  // namespace tether::edge
