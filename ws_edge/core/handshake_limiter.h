// HandshakeLimiter: per-source-address token buckets for handshake attempts.
#ifndef TETHER_WS_EDGE_CORE_HANDSHAKE_LIMITER_H_
#define TETHER_WS_EDGE_CORE_HANDSHAKE_LIMITER_H_

#include <cstdint>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"

namespace tether::edge {

struct HandshakeLimits {
  double rate_per_sec = 100;  // tokens refilled per second per source address (0: no limit)
  double burst = 200;         // bucket size (a NATed fleet reconnecting after an edge restart)
  double failure_cost = 5;    // extra tokens a failed device proof or token check costs
};

// Each source address has a bucket: an attempt takes one token, a failed proof takes
// `failure_cost` more, tokens refill at `rate_per_sec` up to `burst`. A flood of bad
// handshakes from one address therefore throttles that address only. Not thread-safe (the
// edge's loop owns it).
class HandshakeLimiter {
 public:
  explicit HandshakeLimiter(const HandshakeLimits& limits) : limits_(limits) {}

  // True when an attempt from `source` may proceed (and charges it).
  bool Allow(absl::string_view source, int64_t now_ms);
  void ChargeFailure(absl::string_view source, int64_t now_ms);
  // Forgets sources whose buckets are full again (bounded memory under address churn).
  void Prune(int64_t now_ms);
  size_t tracked() const { return buckets_.size(); }

 private:
  struct Bucket {
    double tokens = 0;
    int64_t updated_ms = 0;
  };
  Bucket& Refill(absl::string_view source, int64_t now_ms);

  const HandshakeLimits limits_;
  absl::flat_hash_map<std::string, Bucket> buckets_;
};

// "1.2.3.4:5678" -> "1.2.3.4"; "[::1]:5678" -> "::1".
std::string HostOf(absl::string_view address);

// The source a limit applies to: the host of an IPv4 address (also when IPv4-mapped), and the
// /64 prefix of an IPv6 one ("2001:db8:1:2::/64"): one IPv6 subscriber usually holds a whole
// /64, so per-address limits would let it open as many handshakes as it has addresses.
std::string LimitKeyOf(absl::string_view address);

}  // namespace tether::edge

#endif  // TETHER_WS_EDGE_CORE_HANDSHAKE_LIMITER_H_
