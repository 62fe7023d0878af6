// ClientLoop: one asio io_context thread that runs many NodeClient sockets (a test runs a few,
// the benchmark thousands), with the websocketpp client endpoint they share.
#ifndef TETHER_WS_EDGE_CLIENT_CLIENT_LOOP_H_
#define TETHER_WS_EDGE_CLIENT_CLIENT_LOOP_H_

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>
#include <functional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <websocketpp/client.hpp>
#include <websocketpp/concurrency/none.hpp>
#include <websocketpp/config/asio_no_tls_client.hpp>

namespace tether::edge::client {

// The asio transport of websocketpp with two additions for node clients:
//  - TCP_NODELAY on every socket once connected. Node frames are small request/answer pairs;
//    with Nagle's algorithm a frame written while the previous one is unacknowledged waits for
//    the peer's delayed ACK (up to 40 ms on Linux).
//  - It can bind a socket to a local (source) address before it connects, so that a fleet of
//    sockets can be spread over 127.0.0.2, 127.0.0.3, ... and not run out of ephemeral ports.
//    websocketpp resolves the host and connects with asio::async_connect, which closes and
//    reopens the socket, so a socket-init handler's bind() is lost (websocketpp issue #302);
//    with a source address this transport opens, binds and connects the socket itself (the
//    host must then be a numeric address).
template <typename TransportConfig>
class NodeClientTransport : public websocketpp::transport::asio::endpoint<TransportConfig> {
 public:
  using base = websocketpp::transport::asio::endpoint<TransportConfig>;
  using transport_con_ptr = typename base::transport_con_ptr;
  using timer_ptr = typename base::timer_ptr;

  // The local address the next connect() on this endpoint binds to (empty: the kernel
  // chooses). Consumed by that connect. Loop thread only.
  void set_next_source_address(std::string address) { next_source_ = std::move(address); }

  // Called by websocketpp's client::connect (it names transport_type::async_connect).
  void async_connect(transport_con_ptr tcon, websocketpp::uri_ptr uri,
                     websocketpp::transport::connect_handler cb) {
    websocketpp::transport::connect_handler connected = [tcon, cb](const std::error_code& ec) {
      if (!ec) {
        std::error_code ignored;
        tcon->get_raw_socket().set_option(asio::ip::tcp::no_delay(true), ignored);
      }
      cb(ec);
    };
    std::string source = std::exchange(next_source_, std::string());
    if (source.empty()) {
      base::async_connect(std::move(tcon), std::move(uri), std::move(connected));
      return;
    }
    tcon->set_uri(uri);
    std::error_code ec;
    const asio::ip::address local = asio::ip::make_address(source, ec);
    std::error_code remote_ec;
    const asio::ip::address remote = asio::ip::make_address(uri->get_host(), remote_ec);
    if (ec || remote_ec) {
      connected(websocketpp::transport::asio::error::make_error_code(
          websocketpp::transport::asio::error::invalid_host_service));
      return;
    }
    asio::ip::tcp::socket& socket = tcon->get_raw_socket();
    const asio::ip::tcp::endpoint peer(remote, uri->get_port());
    socket.open(peer.protocol(), ec);
    if (!ec) {
      // Pick the port at connect(), per destination, instead of at bind() per source address.
      const int one = 1;
      (void)::setsockopt(socket.native_handle(), IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one,
                         sizeof(one));
      socket.bind(asio::ip::tcp::endpoint(local, 0), ec);
    }
    if (ec) {
      connected(base::socket_con_type::translate_ec(ec));
      return;
    }
    timer_ptr timer = tcon->set_timer(
        TransportConfig::timeout_connect, [this, tcon, connected](const std::error_code& timer_ec) {
          this->handle_connect_timeout(tcon, nullptr, connected, timer_ec);
        });
    socket.async_connect(peer, [this, tcon, timer, connected](const std::error_code& connect_ec) {
      this->handle_connect(tcon, timer, connected, connect_ec);
    });
  }

 private:
  std::string next_source_;
};

// websocketpp settings for node clients: no TLS, no permessage-deflate (the default extension
// config is off), a small read buffer so thousands of sockets stay cheap, the protocol's 25 MiB
// frame limit, no access/error logging, and the transport above. Every websocketpp call of a
// loop happens on its one thread, so no locks and no strands (concurrency::none).
struct ClientConfig : websocketpp::config::asio_client {
  using type = ClientConfig;
  using base = websocketpp::config::asio_client;
  using concurrency_type = websocketpp::concurrency::none;
  struct transport_config : base::transport_config {
    using concurrency_type = websocketpp::concurrency::none;
    static const bool enable_multithreading = false;
  };
  using transport_type = NodeClientTransport<transport_config>;
  static const size_t connection_read_buffer_size = 4096;
  static const size_t max_message_size = 26'214'400;
  static const websocketpp::log::level elog_level = websocketpp::log::elevel::none;
  static const websocketpp::log::level alog_level = websocketpp::log::alevel::none;
};

using WsClient = websocketpp::client<ClientConfig>;

// Owns the io_context, the endpoint and the thread running them; the thread starts in the
// constructor and stops in the destructor, which must run after every NodeClient using this loop
// is destroyed. Run/RunSync are thread-safe; endpoint() may only be used on the loop thread.
class ClientLoop {
 public:
  ClientLoop();
  ~ClientLoop();
  ClientLoop(const ClientLoop&) = delete;
  ClientLoop& operator=(const ClientLoop&) = delete;

  // Queues `fn` on the loop thread.
  void Run(std::function<void()> fn);
  // Runs `fn` on the loop thread and returns when it is done (inline when already there).
  void RunSync(const std::function<void()>& fn);
  bool InLoopThread() const { return std::this_thread::get_id() == thread_.get_id(); }

  WsClient& endpoint() { return endpoint_; }

 private:
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  WsClient endpoint_;
  std::thread thread_;
};

}  // namespace tether::edge::client

#endif  // TETHER_WS_EDGE_CLIENT_CLIENT_LOOP_H_
