#include "ws_edge/transport/lingering_close.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <thread>

namespace tether::edge {

LingeringClose::LingeringClose(size_t max_sockets, std::chrono::milliseconds linger)
    : max_sockets_(max_sockets), linger_(linger) {
  if (::pipe2(wake_fds_, O_CLOEXEC | O_NONBLOCK) != 0) {
    wake_fds_[0] = wake_fds_[1] = -1;
    absl::MutexLock lock(&mu_);
    stopped_ = true;  // no loop: every Adopt closes at once
    return;
  }
  thread_ = std::thread([this] { Loop(); });
}

LingeringClose::~LingeringClose() {
  Stop();
  if (wake_fds_[0] >= 0) ::close(wake_fds_[0]);
  if (wake_fds_[1] >= 0) ::close(wake_fds_[1]);
}

void LingeringClose::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopped_ = true;
  }
  if (joined_.exchange(true)) return;  // another Stop joins (or joined) the thread
  Wake();
  if (thread_.joinable()) thread_.join();
}

void LingeringClose::Adopt(int fd) {
  {
    absl::MutexLock lock(&mu_);
    if (!stopped_ && count_ < max_sockets_) {
      ++count_;
      adopted_.push_back({fd, std::chrono::steady_clock::now() + linger_});
      fd = -1;
    }
  }
  if (fd >= 0) {
    closed_at_once_.fetch_add(1);
    ::close(fd);
    return;
  }
  Wake();
}

size_t LingeringClose::lingering() {
  absl::MutexLock lock(&mu_);
  return count_;
}

void LingeringClose::Wake() {
  if (wake_fds_[1] < 0) return;
  const char byte = 1;
  // A full pipe already holds a wake-up: the failure is harmless.
  [[maybe_unused]] ssize_t n = ::write(wake_fds_[1], &byte, 1);
}

void LingeringClose::Loop() {
  std::vector<Entry> draining;
  std::vector<pollfd> fds;
  char scratch[16 * 1024];
  for (;;) {
    bool stop;
    {
      absl::MutexLock lock(&mu_);
      stop = stopped_;
      draining.insert(draining.end(), adopted_.begin(), adopted_.end());
      adopted_.clear();
    }
    const auto now = std::chrono::steady_clock::now();
    // Close what has ended (or everything, when stopping); keep the rest.
    size_t closed = 0;
    auto keep = std::remove_if(draining.begin(), draining.end(), [&](const Entry& e) {
      if (!stop && now < e.deadline) return false;
      if (!stop) timed_out_.fetch_add(1);
      ::close(e.fd);
      ++closed;
      return true;
    });
    draining.erase(keep, draining.end());
    if (closed > 0) {
      absl::MutexLock lock(&mu_);
      count_ -= closed;
    }
    if (stop) return;

    fds.assign(1, pollfd{wake_fds_[0], POLLIN, 0});
    auto next = now + std::chrono::hours(1);
    for (const Entry& e : draining) {
      fds.push_back(pollfd{e.fd, POLLIN, 0});
      next = std::min(next, e.deadline);
    }
    const auto wait = std::chrono::ceil<std::chrono::milliseconds>(next - now).count();
    int ready = ::poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(wait, 0)));
    if (ready < 0 && errno != EINTR) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));  // out of memory: no spin
    }
    if (ready <= 0) continue;  // deadlines are checked at the top
    if (fds[0].revents != 0) {
      while (::read(wake_fds_[0], scratch, sizeof(scratch)) > 0) {
      }
    }
    // fds[i + 1] belongs to draining[i]: both were built in the same order above.
    closed = 0;
    for (size_t i = 0; i < draining.size(); ++i) {
      if (fds[i + 1].revents == 0) continue;
      if ((fds[i + 1].revents & POLLNVAL) != 0) {  // not ours (never happens): do not close
        draining[i].fd = -1;
        ++closed;
        continue;
      }
      bool ended = (fds[i + 1].revents & POLLERR) != 0;
      // One bounded read per wake-up: a peer that keeps sending cannot hold the loop, and its
      // deadline ends it.
      ssize_t n = ::recv(draining[i].fd, scratch, sizeof(scratch), MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        ended = true;
      }
      if (ended) {
        ::close(draining[i].fd);
        draining[i].fd = -1;
        ++closed;
      }
    }
    if (closed > 0) {
      draining.erase(
          std::remove_if(draining.begin(), draining.end(), [](const Entry& e) { return e.fd < 0; }),
          draining.end());
      absl::MutexLock lock(&mu_);
      count_ -= closed;
    }
  }
}

}  // namespace tether::edge
