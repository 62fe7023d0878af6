// Two Registry instances over one store, as two replicas over one Redis: presence watchers on
// either see every change, whichever replica decided it, with the same revisions, in order.
#include <memory>
#include <vector>

#include "common/clock.h"
#include "gtest/gtest.h"
#include "registry_service/core/registry.h"
#include "registry_service/store/memory_store.h"
#include "tests/testing/fake_edge_sink.h"
#include "tests/testing/registry_harness.h"

namespace tether::registry {
namespace {

using ::tether::testing::RecordingEdgeSink;
using ::tether::testing::RegistryHarness;

TEST(SharedStore, WatchersOnEveryReplicaSeeTheSameEventsWithTheSameRevisions) {
  common::FakeClock clock;
  MemoryStore store(RegistryHarness::DefaultOptions(), clock.NowMs());
  Registry r1(store, clock, RegistryOptions{});
  Registry r2(store, clock, RegistryOptions{});
  std::vector<PresenceEvent> seen1, seen2;
  ASSERT_TRUE(r1.Watch(0, [&](const PresenceEvent& e) { seen1.push_back(e); }).ok());
  ASSERT_TRUE(r2.Watch(0, [&](const PresenceEvent& e) { seen2.push_back(e); }).ok());

  // Every decision runs on replica 1 (the edge is attached there).
  ASSERT_TRUE(r1.AttachEdge("edgeA", "e1", std::make_shared<RecordingEdgeSink>()).ok());
  ASSERT_TRUE(r1.Register(RegistryHarness::Spec("c1", "n1", "edgeA", "e1")).ok());
  ASSERT_TRUE(r1.Register(RegistryHarness::Spec("c2", "n1", "edgeA", "e1")).ok());
  r1.Close("edgeA", "c2");
  ASSERT_EQ(seen1.size(), 3u);  // connected, replaced, disconnected
  EXPECT_TRUE(seen2.empty());   // replica 2 learns at its next tick
  r2.Tick();
  ASSERT_EQ(seen2.size(), seen1.size());
  for (size_t i = 0; i < seen1.size(); ++i) {
    EXPECT_EQ(seen2[i].revision, seen1[i].revision);
    EXPECT_EQ(seen2[i].kind, seen1[i].kind);
    EXPECT_EQ(seen2[i].conn_id, seen1[i].conn_id);
  }
  r2.Tick();  // nothing new: nothing twice
  EXPECT_EQ(seen2.size(), seen1.size());

  // A watcher that joins replica 2 later, "from now", gets only what follows.
  std::vector<PresenceEvent> late;
  ASSERT_TRUE(r2.Watch(0, [&](const PresenceEvent& e) { late.push_back(e); }).ok());
  ASSERT_TRUE(r1.Register(RegistryHarness::Spec("c3", "n2", "edgeA", "e1")).ok());
  r2.Tick();
  ASSERT_EQ(late.size(), 1u);
  EXPECT_EQ(late[0].node_id, "n2");
  EXPECT_EQ(late[0].revision, seen1.back().revision);
}

// With no watcher a replica skips ahead instead of reading the history; a watcher that joins
// afterwards from now does not get old events.
TEST(SharedStore, AReplicaWithoutWatchersSkipsAhead) {
  common::FakeClock clock;
  MemoryStore store(RegistryHarness::DefaultOptions(), clock.NowMs());
  Registry r1(store, clock, RegistryOptions{});
  Registry r2(store, clock, RegistryOptions{});
  ASSERT_TRUE(r1.AttachEdge("edgeA", "e1", std::make_shared<RecordingEdgeSink>()).ok());
  ASSERT_TRUE(r1.Register(RegistryHarness::Spec("c1", "n1", "edgeA", "e1")).ok());
  r2.Tick();
  std::vector<PresenceEvent> seen;
  ASSERT_TRUE(r2.Watch(0, [&](const PresenceEvent& e) { seen.push_back(e); }).ok());
  r2.Tick();
  EXPECT_TRUE(seen.empty());
}

// An invoke started on replica 1 and expired in the store by replica 2's tick: replica 1's
// caller is not left hanging; it gets TIMEOUT, once, at most kWaiterSlackMs after the deadline.
TEST(SharedStore, ACallerWhoseInvokeEndedOnAnotherReplicaGetsTimeoutNotAHang) {
  common::FakeClock clock;
  MemoryStore store(RegistryHarness::DefaultOptions(), clock.NowMs());
  Registry r1(store, clock, RegistryOptions{});
  Registry r2(store, clock, RegistryOptions{});
  ASSERT_TRUE(r1.AttachEdge("edgeA", "e1", std::make_shared<RecordingEdgeSink>()).ok());
  ASSERT_TRUE(r1.Register(RegistryHarness::Spec("c1", "n1", "edgeA", "e1")).ok());
  InvokeParams p;
  p.node_id = "n1";
  p.command = "system.which";
  p.timeout_ms = 2000;
  std::vector<InvokeResult> results;
  r1.Invoke(p, [&](const InvokeResult& r) { results.push_back(r); });
  clock.Advance(2100);
  r2.Tick();  // replica 2 expires it in the store; the waiter is on replica 1
  r1.Tick();
  EXPECT_TRUE(results.empty());  // within the slack
  clock.Advance(kWaiterSlackMs);
  r1.Tick();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].outcome.code, InvokeCode::kTimeout);
  clock.Advance(5000);
  r1.Tick();
  r2.Tick();
  EXPECT_EQ(results.size(), 1u);
}

}  // namespace
}  // namespace tether::registry
