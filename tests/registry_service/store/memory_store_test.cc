// MemoryStore beyond the store contract (store_contract_test runs that on both stores): how it
// keeps per-node records small.
#include "registry_service/store/memory_store.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace tether::registry {
namespace {

using ::testing::ElementsAre;
using ::tether::testing::IsOk;

constexpr int64_t kNow = 1'700'000'000'000;

class MemoryStoreTest : public ::testing::Test {
 protected:
  MemoryStoreTest() : store_(Options(), kNow) {
    Effects fx;
    EXPECT_THAT(store_.AttachEdge("A", "e1", kNow, &fx), IsOk());
  }

  static StoreOptions Options() {
    StoreOptions o;
    o.auto_approve_all = true;
    return o;
  }

  void Connect(const std::string& conn, const std::string& node,
               std::vector<std::string> commands) {
    ConnectionSpec s;
    s.conn_id = conn;
    s.node_id = node;
    s.edge_id = "A";
    s.edge_epoch = "e1";
    s.shared_token_ok = true;
    s.client.commands = std::move(commands);
    Effects fx;
    auto r = store_.Register(s, kNow, &fx);
    ASSERT_THAT(r, IsOk());
    ASSERT_TRUE(r->granted);
  }

  MemoryStore store_;
};

// Nodes declaring equal command lists share one copy; a list no node holds any more is dropped
// from the table when it has doubled since the last sweep, so the table holds at most twice the
// distinct lists in use at that sweep, not every list ever declared.
TEST_F(MemoryStoreTest, EqualCommandListsAreSharedAndUnusedOnesDropped) {
  for (int i = 0; i < 10; ++i) Connect("c" + std::to_string(i), "n" + std::to_string(i), {"a"});
  EXPECT_EQ(store_.InternedListCountForTest(), 1u);
  // 300 distinct lists, then every one of those nodes reconnects declaring the same list.
  for (int i = 0; i < 300; ++i) {
    Connect("d" + std::to_string(i), "m" + std::to_string(i), {"x" + std::to_string(i)});
  }
  EXPECT_GE(store_.InternedListCountForTest(), 128u);
  for (int i = 0; i < 300; ++i) Connect("e" + std::to_string(i), "m" + std::to_string(i), {"a"});
  // New lists double the table (301, last swept at 256): the sweep drops the 300 unused ones.
  for (int i = 0; i < 250; ++i) {
    Connect("f" + std::to_string(i), "k" + std::to_string(i), {"y" + std::to_string(i)});
  }
  EXPECT_LE(store_.InternedListCountForTest(), 1u + 250u);
  auto view = store_.GetNode("m7");
  ASSERT_THAT(view, IsOk());
  EXPECT_THAT(view->client.commands, ElementsAre("a"));
  view = store_.GetNode("k7");
  ASSERT_THAT(view, IsOk());
  EXPECT_THAT(view->client.commands, ElementsAre("y7"));
}

// Any byte may be in a command name: a list is never taken for another that joins the same.
TEST_F(MemoryStoreTest, ListsThatJoinTheSameAreNotTheSameList) {
  Connect("c1", "n1", {std::string("system.run\0system.which", 24)});
  Connect("c2", "n2", {"system.run", "system.which"});
  EXPECT_EQ(store_.InternedListCountForTest(), 2u);
  auto view = store_.GetNode("n2");
  ASSERT_THAT(view, IsOk());
  EXPECT_THAT(view->client.commands, ElementsAre("system.run", "system.which"));
}

}  // namespace
}  // namespace tether::registry
