#include "ws_edge/core/handshake_limiter.h"

#include "gtest/gtest.h"

namespace tether::edge {
namespace {

TEST(HandshakeLimiter, BurstThenRateAndFailuresCostMore) {
  HandshakeLimiter limiter(HandshakeLimits{10, 5, 4});
  int64_t now = 1000;
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(limiter.Allow("10.0.0.1", now)) << i;
  EXPECT_FALSE(limiter.Allow("10.0.0.1", now));
  EXPECT_TRUE(limiter.Allow("10.0.0.2", now));  // other addresses are unaffected
  now += 100;                                   // one token back
  EXPECT_TRUE(limiter.Allow("10.0.0.1", now));
  EXPECT_FALSE(limiter.Allow("10.0.0.1", now));
  // A failed proof costs four more: the address needs 500 ms before its next attempt.
  limiter.ChargeFailure("10.0.0.2", now);
  now += 400;
  EXPECT_TRUE(limiter.Allow("10.0.0.2", now));  // 3 + 4 tokens - 4 - 1 = 2... still some left
  limiter.ChargeFailure("10.0.0.2", now);
  limiter.ChargeFailure("10.0.0.2", now);
  EXPECT_FALSE(limiter.Allow("10.0.0.2", now));
}

TEST(HandshakeLimiter, PruneForgetsRecoveredAddressesAndZeroRateMeansOff) {
  HandshakeLimiter limiter(HandshakeLimits{10, 5, 4});
  limiter.Allow("a", 0);
  limiter.Allow("b", 0);
  EXPECT_EQ(limiter.tracked(), 2u);
  limiter.Prune(10'000);
  EXPECT_EQ(limiter.tracked(), 0u);
  HandshakeLimiter off(HandshakeLimits{0, 0, 0});
  for (int i = 0; i < 1000; ++i) EXPECT_TRUE(off.Allow("a", 0));
}

TEST(HandshakeLimiter, HostOfStripsThePort) {
  EXPECT_EQ(HostOf("127.0.0.2:5555"), "127.0.0.2");
  EXPECT_EQ(HostOf("[::1]:80"), "::1");
  EXPECT_EQ(HostOf("10.1.1.1"), "10.1.1.1");
}

}  // namespace
}  // namespace tether::edge
