#include "tests/chaos/relay.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace tether::chaos {
namespace {

constexpr size_t kMaxPending = 1 << 20;

int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void SetNonBlocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK); }

sockaddr_in Loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

// One relayed connection: a (the edge's side) and b (the registry's side).
struct Pair {
  int a = -1;
  int b = -1;
  std::string a_to_b;
  std::string b_to_a;
  bool dead = false;
  ~Pair() {
    if (a >= 0) close(a);
    if (b >= 0) close(b);
  }
};

// Reads what `from` has into `buf` (bounded); false when the peer closed or failed.
bool Pump(int from, std::string& buf) {
  char chunk[16384];
  while (buf.size() < kMaxPending) {
    const ssize_t n = read(from, chunk, sizeof(chunk));
    if (n > 0) {
      buf.append(chunk, static_cast<size_t>(n));
      continue;
    }
    if (n == 0) return false;
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
  }
  return true;
}

bool Flush(int to, std::string& buf) {
  while (!buf.empty()) {
    const ssize_t n = send(to, buf.data(), buf.size(), MSG_NOSIGNAL);
    if (n > 0) {
      buf.erase(0, static_cast<size_t>(n));
      continue;
    }
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
  }
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Relay>> Relay::Start(int target_port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr = Loopback(0);
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd, 128) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    return absl::InternalError(absl::StrCat("relay listen: ", std::strerror(errno)));
  }
  SetNonBlocking(fd);
  auto relay = std::unique_ptr<Relay>(new Relay());
  relay->listen_fd_ = fd;
  relay->port_ = ntohs(addr.sin_port);
  relay->target_port_ = target_port;
  relay->thread_ = std::thread([r = relay.get()] { r->Loop(); });
  return relay;
}

Relay::~Relay() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  if (listen_fd_ >= 0) close(listen_fd_);
}

void Relay::Cut(int64_t ms) {
  cut_until_ms_ = SteadyMs() + ms;
  cut_generation_.fetch_add(1);
}

void Relay::Stall(int64_t ms) { stall_until_ms_ = SteadyMs() + ms; }

void Relay::Loop() {
  std::vector<std::unique_ptr<Pair>> pairs;
  int64_t seen_generation = cut_generation_.load();
  while (!stop_) {
    const int64_t now = SteadyMs();
    if (const int64_t g = cut_generation_.load(); g != seen_generation) {
      seen_generation = g;
      pairs.clear();  // closes both sides of every relayed connection
    }
    const bool stalled = now < stall_until_ms_.load();
    std::vector<pollfd> fds;
    fds.push_back({listen_fd_, POLLIN, 0});
    for (const auto& p : pairs) {
      short ea = 0, eb = 0;
      if (!stalled) {
        if (p->a_to_b.size() < kMaxPending) ea |= POLLIN;
        if (p->b_to_a.size() < kMaxPending) eb |= POLLIN;
        if (!p->b_to_a.empty()) ea |= POLLOUT;
        if (!p->a_to_b.empty()) eb |= POLLOUT;
      }
      fds.push_back({p->a, ea, 0});
      fds.push_back({p->b, eb, 0});
    }
    // Bounded wait: stop_, cuts and the end of a stall are noticed within 20 ms.
    if (poll(fds.data(), fds.size(), 20) < 0 && errno != EINTR) break;
    if (fds[0].revents & POLLIN) {
      for (int i = 0; i < 64; ++i) {
        const int c = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c < 0) break;
        ++accepted_;
        if (SteadyMs() < cut_until_ms_.load()) {
          close(c);
          continue;
        }
        // Blocking connect on loopback: refused or accepted by the kernel at once (a stopped
        // registry's backlog still accepts).
        const int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in t = Loopback(target_port_);
        if (s < 0 || connect(s, reinterpret_cast<sockaddr*>(&t), sizeof(t)) != 0) {
          if (s >= 0) close(s);
          close(c);
          continue;
        }
        const int one = 1;
        setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        SetNonBlocking(s);
        auto p = std::make_unique<Pair>();
        p->a = c;
        p->b = s;
        pairs.push_back(std::move(p));
      }
    }
    if (stalled) continue;
    for (size_t i = 0; i < pairs.size() && 1 + 2 * i + 1 < fds.size(); ++i) {
      Pair& p = *pairs[i];
      const pollfd& fa = fds[1 + 2 * i];
      const pollfd& fb = fds[2 + 2 * i];
      if (fa.fd != p.a || fb.fd != p.b) continue;
      bool ok = true;
      if (fa.revents & (POLLIN | POLLHUP | POLLERR)) ok &= Pump(p.a, p.a_to_b);
      if (fb.revents & (POLLIN | POLLHUP | POLLERR)) ok &= Pump(p.b, p.b_to_a);
      ok &= Flush(p.b, p.a_to_b);
      ok &= Flush(p.a, p.b_to_a);
      if (!ok) p.dead = true;
    }
    std::vector<std::unique_ptr<Pair>> alive;
    for (auto& p : pairs) {
      if (!p->dead) alive.push_back(std::move(p));
    }
    pairs = std::move(alive);
  }
}

}  // namespace tether::chaos
