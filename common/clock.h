// Clock: the one source of time for code that makes decisions with it.
#ifndef TETHER_COMMON_CLOCK_H_
#define TETHER_COMMON_CLOCK_H_

#include <atomic>
#include <cstdint>
#include <functional>

namespace tether::common {

// Milliseconds on a timeline that looks like Unix-epoch time (so values also serve as
// timestamps) but that, for a real clock, never jumps: leases, deadlines, ticks and timeouts are
// differences of NowMs(). Implementations are thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t NowMs() const = 0;
};

// The wall clock read once, at construction, then advanced by the steady (monotonic) clock.
// An NTP step or a hand-set system clock after start moves neither leases nor deadlines nor
// ticks (with the raw wall clock a step forward expired every lease and invoke at once and a
// step back stopped ticks); timestamps drift from the wall clock by at most the step. The
// signature skew window compares a node's signedAt with the challenge's ts, both from here.
// Thread-safe (immutable after construction).
class RealClock final : public Clock {
 public:
  RealClock();
  // For tests: the two sources, in milliseconds (wall: since the epoch; steady: any origin).
  RealClock(std::function<int64_t()> wall_ms, std::function<int64_t()> steady_ms);
  int64_t NowMs() const override;

 private:
  const std::function<int64_t()> steady_ms_;
  const int64_t anchor_wall_ms_;
  const int64_t anchor_steady_ms_;
};

// A clock a test moves by hand, forward or backward. Thread-safe (atomic).
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
