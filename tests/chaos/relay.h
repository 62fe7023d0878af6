// Relay: a small TCP relay on 127.0.0.1 that the chaos soak puts between the edges and the
// registry (the EdgeLink), so the test can cut or stall that link. One thread polls every
// relayed pair; buffers are bounded (reads stop while a direction has 1 MiB pending). Owned by
// the soak's main thread; Cut/Stall are thread-safe.
#ifndef TETHER_TESTS_CHAOS_RELAY_H_
#define TETHER_TESTS_CHAOS_RELAY_H_

#include <atomic>
#include <cstdint>
#include <thread>

#include "absl/status/statusor.h"

namespace tether::chaos {

class Relay {
 public:
  // Relays 127.0.0.1:<returned port> to 127.0.0.1:target_port.
  static absl::StatusOr<std::unique_ptr<Relay>> Start(int target_port);
  ~Relay();
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  int port() const { return port_; }
  // Closes every relayed connection now and refuses new ones (accepted, then closed at once)
  // for `ms` milliseconds.
  void Cut(int64_t ms);
  // Forwards nothing in either direction for `ms` milliseconds; connections stay open.
  void Stall(int64_t ms);
  int64_t connections_accepted() const { return accepted_.load(); }

 private:
  Relay() = default;
  void Loop();

  int listen_fd_ = -1;
  int port_ = 0;
  int target_port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> cut_until_ms_{0};    // steady ms; refuse while now < this
  std::atomic<int64_t> stall_until_ms_{0};  // steady ms; forward nothing while now < this
  std::atomic<int64_t> cut_generation_{0};  // raised by Cut: close every pair
  std::atomic<int64_t> accepted_{0};
  std::thread thread_;
};

}  // namespace tether::chaos

#endif  // TETHER_TESTS_CHAOS_RELAY_H_
