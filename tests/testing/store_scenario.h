// StoreScenarioTest: a gtest fixture parameterized by the store a RegistryHarness runs on,
// "memory" (MemoryStore) or "redis" (RedisStore on a redis-server the suite starts), so the
// same scenarios check both implementations.
#ifndef TETHER_TESTS_TESTING_STORE_SCENARIO_H_
#define TETHER_TESTS_TESTING_STORE_SCENARIO_H_

#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "registry_service/store/redis_store.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/registry_harness.h"

namespace tether::testing {

// Owns the suite's redis-server (started in SetUpTestSuite, killed in TearDownTestSuite).
// Not thread-safe (gtest's main thread).
class StoreScenarioTest : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    auto server = RedisServer::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    redis_ = std::move(*server);
  }
  static void TearDownTestSuite() { redis_.reset(); }

  // Each store it makes is empty (for Redis: a key prefix of its own).
  static StoreFactory Factory() {
    if (GetParam() != "redis") return MakeMemoryStore;
    return [](const registry::StoreOptions& options, int64_t) -> std::unique_ptr<registry::Store> {
      static int counter = 0;
      registry::RedisStoreOptions redis;
      redis.client = redis_->ClientOptions();
      redis.key_prefix = "scenario" + std::to_string(++counter) + ":";
      auto store = std::make_unique<registry::RedisStore>(options, redis);
      EXPECT_TRUE(store->Connect().ok());
      return store;
    };
  }

  inline static std::unique_ptr<RedisServer> redis_;
};

// For INSTANTIATE_TEST_SUITE_P(Stores, Suite, StoreNames(), StoreName).
inline auto StoreNames() { return ::testing::Values("memory", "redis"); }
inline std::string StoreName(const ::testing::TestParamInfo<std::string>& info) {
  return info.param;
}

}  // namespace tether::testing

#endif  // TETHER_TESTS_TESTING_STORE_SCENARIO_H_
