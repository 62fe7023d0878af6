#include <atomic>
#include <set>

#include "absl/status/statusor.h"
#include "common/clock.h"
#include "common/ids.h"
#include "common/status_macros.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace tether::common {
namespace {

using ::tether::testing::IsOk;
using ::tether::testing::StatusIs;

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::StatusOr<int> Quarter(int x) {
  ASSIGN_OR_RETURN(int h, Half(x));
  ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

absl::Status CheckEven(int x) {
  RETURN_IF_ERROR(Half(x).status());
  return absl::OkStatus();
}

TEST(StatusMacros, PropagateErrorsAndValues) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_THAT(Quarter(6), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(CheckEven(4), IsOk());
  EXPECT_THAT(CheckEven(3), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(Ids, UniqueAndWellFormed) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    std::string id = RandomHexId();
    ASSERT_EQ(id.size(), 32u);
    EXPECT_TRUE(seen.insert(id).second);
  }
  std::set<std::string> unique;
  for (int i = 0; i < 1000; ++i) {
    std::string id = UniqueId();
    ASSERT_EQ(id.size(), 32u);
    EXPECT_TRUE(unique.insert(id).second);
  }
  std::string uuid = RandomUuid();
  ASSERT_EQ(uuid.size(), 36u);
  EXPECT_EQ(uuid[14], '4');
  EXPECT_EQ(uuid[8], '-');
  EXPECT_EQ(RandomToken(32).size(), 43u);
}

TEST(FakeClock, MovesOnlyByHand) {
  FakeClock clock(1000);
  EXPECT_EQ(clock.NowMs(), 1000);
  clock.Advance(5);
  EXPECT_EQ(clock.NowMs(), 1005);
  RealClock real;
  EXPECT_GT(real.NowMs(), 1'600'000'000'000);
}

// The wall clock steps (NTP, an operator) while the steady clock runs on: durations measured
// with RealClock follow the steady clock only, and its values start at the wall time.
TEST(RealClock, WallClockStepsMoveNeitherDurationsNorDeadlines) {
  std::atomic<int64_t> wall{1'700'000'000'000};
  std::atomic<int64_t> steady{5'000};
  RealClock clock([&] { return wall.load(); }, [&] { return steady.load(); });
  EXPECT_EQ(clock.NowMs(), 1'700'000'000'000);
  const int64_t lease_expires = clock.NowMs() + 10'000;
  wall += 3'600'000;  // a step forward of an hour: would have expired every lease at once
  steady += 1'000;
  EXPECT_EQ(clock.NowMs(), 1'700'000'001'000);
  EXPECT_LT(clock.NowMs(), lease_expires);
  wall -= 7'200'000;  // a step back of two hours: would have stopped ticks for two hours
  steady += 1'000;
  EXPECT_EQ(clock.NowMs(), 1'700'000'002'000);  // still moving forward at the steady rate
  steady += 8'000;
  EXPECT_GE(clock.NowMs(), lease_expires);  // the lease lapses after 10 s of steady time
}

}  // namespace
}  // namespace tether::common
