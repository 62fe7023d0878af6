// Clock: the one source of time for code that makes decisions with it.
#ifndef TETHER_COMMON_CLOCK_H_
#define TETHER_COMMON_CLOCK_H_

#include <atomic>
#include <cstdint>

namespace tether::common {

// Milliseconds since the Unix epoch. Implementations are thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t NowMs() const = 0;
};

// The system's wall clock. Stateless and thread-safe.
class RealClock final : public Clock {
 public:
  int64_t NowMs() const override;
};

// A clock a test moves by hand. Thread-safe (atomic).
class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t start_ms = 1'700'000'000'000) : now_ms_(start_ms) {}
  int64_t NowMs() const override { return now_ms_.load(); }
  void Advance(int64_t ms) { now_ms_.fetch_add(ms); }
  void Set(int64_t ms) { now_ms_.store(ms); }

 private:
  std::atomic<int64_t> now_ms_;
};

}  // namespace tether::common

#endif  // TETHER_COMMON_CLOCK_H_
