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

TEST(HandshakeLimiter, IPv6IsLimitedPerSlash64) {
  EXPECT_EQ(LimitKeyOf("127.0.0.2:5555"), "127.0.0.2");
  EXPECT_EQ(LimitKeyOf("[2001:db8:1:2::17]:443"), "2001:db8:1:2::/64");
  EXPECT_EQ(LimitKeyOf("[2001:db8:1:2:ffff:1:2:3]:443"), "2001:db8:1:2::/64");
  EXPECT_NE(LimitKeyOf("[2001:db8:1:3::17]:443"), LimitKeyOf("[2001:db8:1:2::17]:443"));
  EXPECT_EQ(LimitKeyOf("[::ffff:10.0.0.7]:80"), "10.0.0.7");  // IPv4-mapped: per address
  // One host rotating through its /64 shares one bucket.
  HandshakeLimiter limiter(HandshakeLimits{1, 2, 0});
  EXPECT_TRUE(limiter.Allow(LimitKeyOf("[2001:db8::1]:1"), 0));
  EXPECT_TRUE(limiter.Allow(LimitKeyOf("[2001:db8::2]:1"), 0));
  EXPECT_FALSE(limiter.Allow(LimitKeyOf("[2001:db8::3]:1"), 0));
  EXPECT_TRUE(limiter.Allow(LimitKeyOf("[2001:db8:0:1::3]:1"), 0));  // another /64
}

}  // namespace
}  // namespace tether::edge
