#include "common/clock.h"

#include <chrono>
#include <utility>

namespace tether::common {
namespace {

int64_t SystemWallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

RealClock::RealClock() : RealClock(SystemWallMs, SteadyMs) {}

RealClock::RealClock(std::function<int64_t()> wall_ms, std::function<int64_t()> steady_ms)
    : steady_ms_(std::move(steady_ms)),
      anchor_wall_ms_(wall_ms()),
      anchor_steady_ms_(steady_ms_()) {}

int64_t RealClock::NowMs() const { return anchor_wall_ms_ + (steady_ms_() - anchor_steady_ms_); }

}  // namespace tether::common
