#include "common/http_server.h"

#include <array>
#include <asio.hpp>

namespace tether::common {

struct HttpServer::Impl {
  asio::io_context io;
  asio::ip::tcp::acceptor acceptor{io};
};

namespace {

// One connection: read the request head (bounded), answer, close.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(asio::ip::tcp::socket socket, const std::map<std::string, HttpServer::Handler>& handlers)
      : socket_(std::move(socket)), handlers_(handlers) {}

  void Start() {
    auto self = shared_from_this();
    asio::async_read_until(socket_, asio::dynamic_buffer(request_, 8192), "\r\n\r\n",
                           [self](const std::error_code& ec, size_t) { self->Answer(ec); });
  }

 private:
  void Answer(const std::error_code& ec) {
    if (ec) return;
    HttpResponse r{404, "text/plain", "not found\n"};
    const size_t sp1 = request_.find(' ');
    const size_t sp2 = request_.find(' ', sp1 + 1);
    if (request_.compare(0, 4, "GET ") != 0 || sp2 == std::string::npos) {
      r = HttpResponse{405, "text/plain", "GET only\n"};
    } else {
      std::string path = request_.substr(sp1 + 1, sp2 - sp1 - 1);
      path = path.substr(0, path.find('?'));
      auto it = handlers_.find(path);
      if (it != handlers_.end()) r = it->second();
    }
    response_ = "HTTP/1.0 " + std::to_string(r.status) + (r.status < 400 ? " OK" : " Error") +
                "\r\nContent-Type: " + r.content_type +
                "\r\nContent-Length: " + std::to_string(r.body.size()) +
                "\r\nConnection: close\r\n\r\n" + r.body;
    auto self = shared_from_this();
    asio::async_write(socket_, asio::buffer(response_), [self](const std::error_code&, size_t) {
      std::error_code ignored;
      self->socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
    });
  }

  asio::ip::tcp::socket socket_;
  const std::map<std::string, HttpServer::Handler>& handlers_;
  std::string request_;
  std::string response_;
};

void Accept(asio::ip::tcp::acceptor& acceptor,
            const std::map<std::string, HttpServer::Handler>& handlers) {
  acceptor.async_accept(
      [&acceptor, &handlers](const std::error_code& ec, asio::ip::tcp::socket socket) {
        if (ec == asio::error::operation_aborted) return;
        if (!ec) std::make_shared<Session>(std::move(socket), handlers)->Start();
        Accept(acceptor, handlers);
      });
}

}  // namespace

HttpServer::HttpServer() : impl_(std::make_unique<Impl>()) {}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Handle(const std::string& path, Handler handler) {
  handlers_[path] = std::move(handler);
}

absl::StatusOr<int> HttpServer::Start(const std::string& host, int port) {
  std::error_code ec;
  asio::ip::tcp::endpoint ep(asio::ip::make_address(host, ec), static_cast<uint16_t>(port));
  if (ec) return absl::InvalidArgumentError("bad metrics host: " + host);
  impl_->acceptor.open(ep.protocol(), ec);
  if (!ec) impl_->acceptor.set_option(asio::ip::tcp::acceptor::reuse_address(true), ec);
  if (!ec) impl_->acceptor.bind(ep, ec);
  if (!ec) impl_->acceptor.listen(64, ec);
  if (ec) return absl::UnavailableError("metrics listener: " + ec.message());
  const int bound = impl_->acceptor.local_endpoint(ec).port();
  Accept(impl_->acceptor, handlers_);
  thread_ = std::thread([this] { impl_->io.run(); });
  return bound;
}

void HttpServer::Stop() {
  if (!thread_.joinable()) return;
  asio::post(impl_->io, [this] {
    std::error_code ec;
    impl_->acceptor.close(ec);
    impl_->io.stop();
  });
  thread_.join();
}

}  // namespace tether::common
