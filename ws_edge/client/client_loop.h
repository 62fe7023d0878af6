// ClientLoop: one asio io_context thread that runs many NodeClient sockets (a test runs a few,
// the benchmark thousands), with the websocketpp client endpoint they share.
#ifndef TETHER_WS_EDGE_CLIENT_CLIENT_LOOP_H_
#define TETHER_WS_EDGE_CLIENT_CLIENT_LOOP_H_

#include <cstddef>
#include <functional>
#include <thread>
#include <websocketpp/client.hpp>
#include <websocketpp/config/asio_no_tls_client.hpp>

namespace tether::edge::client {

// websocketpp settings for node clients: no TLS, no permessage-deflate (the default extension
// config is off), a small read buffer so thousands of sockets stay cheap, the protocol's 25 MiB
// frame limit, and no access/error logging.
struct ClientConfig : websocketpp::config::asio_client {
  using type = ClientConfig;
  using base = websocketpp::config::asio_client;
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
