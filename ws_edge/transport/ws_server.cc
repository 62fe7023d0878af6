#include "ws_edge/transport/ws_server.h"

#include <chrono>
#include <utility>

namespace tether::edge {
namespace {

bool IsLoopback(const asio::ip::address& a) {
  if (a.is_v6() && a.to_v6().is_v4_mapped()) {
    return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6()).is_loopback();
  }
  return a.is_loopback();
}

}  // namespace

WsServer::WsServer(const WsServerOptions& options) : options_(options) {
  std::error_code ec;
  server_.init_asio(ec);
  server_.set_reuse_addr(true);
  server_.set_listen_backlog(options_.listen_backlog);
  server_.set_open_handler([this](websocketpp::connection_hdl hdl) {
    std::error_code ec;
    ConnPtr con = server_.get_con_from_hdl(hdl, ec);
    if (ec) return;
    const uint64_t socket = next_socket_++;
    sockets_[socket] = hdl;
    // The socket id rides on the connection so later handlers find it without a lookup.
    con->set_pong_timeout(static_cast<long>(options_.pong_timeout_ms));
    con->set_pong_timeout_handler([this, socket](websocketpp::connection_hdl, std::string) {
      ConnPtr c = Get(socket);
      if (c) c->terminate(std::error_code());  // a dead peer: no close handshake to wait for
    });
    con->set_message_handler([this, socket](websocketpp::connection_hdl, Server::message_ptr msg) {
      if (msg->get_opcode() != websocketpp::frame::opcode::text) {
        Close(socket, 1003, "text frames only");
        return;
      }
      if (core_ != nullptr) core_->OnMessage(socket, msg->get_payload());
    });
    con->set_close_handler([this, socket](websocketpp::connection_hdl) {
      sockets_.erase(socket);
      if (core_ != nullptr) core_->OnClose(socket);
    });
    con->set_fail_handler([this, socket](websocketpp::connection_hdl) {
      sockets_.erase(socket);
      if (core_ != nullptr) core_->OnClose(socket);
    });
    std::string remote = con->get_remote_endpoint();
    bool loopback = false;
    auto endpoint = con->get_raw_socket().remote_endpoint(ec);
    if (!ec) loopback = IsLoopback(endpoint.address());
    if (options_.trust_x_forwarded_for) {
      // The first entry is the client as the (trusted, overwriting) proxy saw it.
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
    if (core_ != nullptr) core_->OnOpen(socket, remote, loopback);
  });
}

WsServer::~WsServer() = default;

absl::StatusOr<int> WsServer::Listen() {
  std::error_code ec;
  asio::ip::address address = asio::ip::make_address(options_.host, ec);
  if (ec) return absl::InvalidArgumentError("bad listen host: " + options_.host);
  server_.listen(asio::ip::tcp::endpoint(address, static_cast<uint16_t>(options_.port)), ec);
  if (ec) {
    return absl::UnavailableError("cannot listen on " + options_.host + ":" +
                                  std::to_string(options_.port) + ": " + ec.message());
  }
  server_.start_accept(ec);
  if (ec) return absl::UnavailableError("accept failed: " + ec.message());
  asio::ip::tcp::endpoint local = server_.get_local_endpoint(ec);
  if (ec) return absl::UnavailableError("no local endpoint: " + ec.message());
  timer_ = std::make_unique<asio::steady_timer>(server_.get_io_service());
  ping_timer_ = std::make_unique<asio::steady_timer>(server_.get_io_service());
  ArmTimer();
  ArmPings();
  return static_cast<int>(local.port());
}

void WsServer::ArmTimer() {
  timer_->expires_after(std::chrono::milliseconds(options_.timer_ms));
  timer_->async_wait([this](const std::error_code& ec) {
    if (ec) return;
    if (core_ != nullptr) core_->OnTimer();
    ArmTimer();
  });
}

void WsServer::ArmPings() {
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

void WsServer::Run() {
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

void WsServer::Post(std::function<void()> fn) {
  asio::post(server_.get_io_service(), std::move(fn));
}

void WsServer::StopListening() {
  std::error_code ec;
  server_.stop_listening(ec);
}

void WsServer::Stop() {
  Post([this] {
    StopListening();
    if (timer_) timer_->cancel();
    if (ping_timer_) ping_timer_->cancel();
    server_.stop();
  });
}

WsServer::ConnPtr WsServer::Get(uint64_t socket) {
  auto it = sockets_.find(socket);
  if (it == sockets_.end()) return nullptr;
  std::error_code ec;
  ConnPtr con = server_.get_con_from_hdl(it->second, ec);
  return ec ? nullptr : con;
}

bool WsServer::Send(uint64_t socket, const std::string& text) {
  ConnPtr con = Get(socket);
  if (!con) return true;  // already gone; its close is on the way
  if (con->get_buffered_amount() + text.size() > options_.max_send_buffer_bytes) return false;
  std::error_code ec = con->send(text, websocketpp::frame::opcode::text);
  return !ec || ec == websocketpp::error::make_error_code(websocketpp::error::invalid_state);
}

void WsServer::Close(uint64_t socket, int code, const std::string& reason) {
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

void WsServer::SetMaxMessageSize(uint64_t socket, size_t bytes) {
  if (ConnPtr con = Get(socket)) con->set_max_message_size(bytes);
}

}  // namespace tether::edge
