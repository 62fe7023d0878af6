#include "ws_edge/core/handshake_limiter.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstdio>
#include <vector>

namespace tether::edge {

std::string HostOf(absl::string_view address) {
  if (!address.empty() && address.front() == '[') {
    const size_t end = address.find(']');
    return std::string(address.substr(1, end == absl::string_view::npos ? end : end - 1));
  }
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos || address.find(':') != colon) return std::string(address);
  return std::string(address.substr(0, colon));
}

std::string LimitKeyOf(absl::string_view address) {
  std::string host = HostOf(address);
  in6_addr a{};
  if (host.find(':') == std::string::npos || inet_pton(AF_INET6, host.c_str(), &a) != 1) {
    return host;
  }
  const unsigned char* b = a.s6_addr;
  char out[INET6_ADDRSTRLEN + 4];
  if (IN6_IS_ADDR_V4MAPPED(&a)) {
    std::snprintf(out, sizeof(out), "%u.%u.%u.%u", b[12], b[13], b[14], b[15]);
  } else {
    std::snprintf(out, sizeof(out), "%x:%x:%x:%x::/64", b[0] << 8 | b[1], b[2] << 8 | b[3],
                  b[4] << 8 | b[5], b[6] << 8 | b[7]);
  }
  return out;
}

HandshakeLimiter::Bucket& HandshakeLimiter::Refill(absl::string_view source, int64_t now_ms) {
  auto [it, fresh] = buckets_.try_emplace(std::string(source));
  Bucket& b = it->second;
  if (fresh) {
    b.tokens = limits_.burst;
  } else {
    const double elapsed = static_cast<double>(std::max<int64_t>(now_ms - b.updated_ms, 0));
    b.tokens = std::min(limits_.burst, b.tokens + elapsed * limits_.rate_per_sec / 1000.0);
  }
  b.updated_ms = now_ms;
  return b;
}

bool HandshakeLimiter::Allow(absl::string_view source, int64_t now_ms) {
  if (limits_.rate_per_sec <= 0) return true;
  Bucket& b = Refill(source, now_ms);
  if (b.tokens < 1) return false;
  b.tokens -= 1;
  return true;
}

void HandshakeLimiter::ChargeFailure(absl::string_view source, int64_t now_ms) {
  if (limits_.rate_per_sec <= 0) return;
  Bucket& b = Refill(source, now_ms);
  b.tokens -= limits_.failure_cost;  // may go negative: a failing client waits longer
}

void HandshakeLimiter::Prune(int64_t now_ms) {
  std::vector<std::string> full;
  for (const auto& [source, b] : buckets_) {
    const double refilled =
        b.tokens + static_cast<double>(now_ms - b.updated_ms) * limits_.rate_per_sec / 1000.0;
    if (refilled >= limits_.burst) full.push_back(source);
  }
  for (const std::string& s : full) buckets_.erase(s);
}

}  // namespace tether::edge
