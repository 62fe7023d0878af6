#include "ws_edge/client/client_loop.h"

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <system_error>

#include "absl/synchronization/notification.h"

namespace tether::edge::client {

ClientLoop::ClientLoop() : work_(asio::make_work_guard(io_)) {
  std::error_code ec;
  endpoint_.init_asio(&io_, ec);
  if (ec) {
    std::fprintf(stderr, "fatal: websocketpp init_asio: %s\n", ec.message().c_str());
    std::abort();
  }
  // The OpenClaw node host sends no User-Agent; an empty value makes websocketpp leave it out.
  endpoint_.set_user_agent("");
  thread_ = std::thread([this] {
    // The one catch of this thread: a throwing handler must not take every client down.
    for (;;) {
      try {
        io_.run();
        return;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "client loop: uncaught exception: %s\n", e.what());
      }
    }
  });
}

ClientLoop::~ClientLoop() {
  work_.reset();
  io_.stop();
  thread_.join();
}

void ClientLoop::Run(std::function<void()> fn) { asio::post(io_, std::move(fn)); }

void ClientLoop::RunSync(const std::function<void()>& fn) {
  if (InLoopThread()) {
    fn();
    return;
  }
  absl::Notification done;
  asio::post(io_, [&] {
    fn();
    done.Notify();
  });
  done.WaitForNotification();
}

}  // namespace tether::edge::client
