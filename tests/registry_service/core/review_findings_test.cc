// Regression tests for findings of a review of the registry core against architecture.md.
// Each test states the invariant it checks; they fail on the code as reviewed. Every test runs on
// the MemoryStore and on a RedisStore.
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/registry_harness.h"
#include "tests/testing/store_scenario.h"

namespace tether::registry {
namespace {

using ::tether::testing::RecordingEdgeSink;
using ::tether::testing::RegistryHarness;
using ::tether::testing::StoreName;
using ::tether::testing::StoreNames;
using Kind = EdgeCommand::Kind;
using ReviewFindings = ::tether::testing::StoreScenarioTest;

// Invariant 7: a superseded connection is told to close. When the supersede happens while the
// old connection's edge has no EdgeLink stream, the kClose is dropped by Registry::Apply (no
// route) and MemoryStore has already set retire_sent; the edge's resync reports the connection
// again, it is "kept", and nothing ever retires it: the half-open old socket lingers forever.
TEST_P(ReviewFindings, SupersededWhileEdgeLinkDownIsStillRetiredAfterResync) {
  RegistryHarness h(RegistryHarness::DefaultOptions(), Factory());
  h.Attach("edgeA");
  h.Attach("edgeB");
  const uint64_t ga = h.Register("a1", "n1", "edgeA");
  ASSERT_GT(ga, 0u);
  h.Detach("edgeA");                               // A's link blips (lease still valid)
  ASSERT_GT(h.Register("b1", "n1", "edgeB"), 0u);  // a1 superseded: its kClose has no route
  h.Attach("edgeA");                               // same epoch: the blip ends
  auto r =
      h.registry().Resync("edgeA", "e1", {{RegistryHarness::Spec("a1", "n1", "edgeA", "e1"), ga}});
  ASSERT_TRUE(r.ok());
  h.Advance(30'000);  // well past superseded_grace_ms
  EXPECT_EQ(h.Node("n1").conn_id, "b1");
  EXPECT_GE(h.Sink("edgeA").CommandsFor("a1", Kind::kClose), 1)
      << "the superseded connection a1 is never told to close (invariant 7)";
}

// Invariant 5: a watcher receives every change, in order, or a clear error. One decision that
// publishes more events than the presence history holds (an edge restart with many owners)
// makes PumpPresence's ReadPresence fail; it then skips published_ to the head and every
// watcher silently misses those events (and keeps believing the nodes are connected).
TEST_P(ReviewFindings, WatcherDoesNotSilentlyMissABurstLargerThanTheHistory) {
  StoreOptions o = RegistryHarness::DefaultOptions();
  o.presence_history = 4;
  RegistryHarness h(o, Factory());
  h.Attach("edgeA", "epoch-1");
  for (int i = 0; i < 6; ++i) {
    ASSERT_GT(h.Register("c" + std::to_string(i), "n" + std::to_string(i)), 0u);
  }
  int seen = 0;
  std::vector<absl::Status> errors;
  ASSERT_TRUE(h.registry()
                  .Watch(
                      0, [&](const PresenceEvent&) { ++seen; },
                      [&](const absl::Status& s) { errors.push_back(s); })
                  .ok());
  h.Detach("edgeA");             // the old process died: its stream ended
  h.Attach("edgeA", "epoch-2");  // edge restarted: 6 owners lost in one decision
  EXPECT_FALSE(h.Node("n0").connected);
  // Either every event, in order, or a clear error telling the watcher to re-list.
  ASSERT_EQ(errors.size(), 1u) << "the watcher saw " << seen << " of 6 disconnects and no error";
  EXPECT_EQ(errors[0].code(), absl::StatusCode::kOutOfRange);
  // The registry keeps serving new watchers from the current revision.
  int later = 0;
  ASSERT_TRUE(h.registry().Watch(0, [&](const PresenceEvent&) { ++later; }).ok());
  h.Register("c9", "n9");
  EXPECT_EQ(later, 1);
}

// Failure model: "Invokes routed to a dead edge fail fast, not at their timeout." When an
// edge's new EdgeLink stream attaches (same epoch, after a blip) before the server noticed the
// old stream died, the old stream's DetachEdge finds the route replaced and returns without
// failing the invokes that were sent into the dead stream; the resync keeps the connection, so
// those invokes hang until their (up to 300 s) timeout. The edge itself assumes the registry
// fails them (EdgeCore::OnLinkDown).
TEST_P(ReviewFindings, InvokesSentIntoAReplacedStreamFailFast) {
  RegistryHarness h(RegistryHarness::DefaultOptions(), Factory());
  h.Attach("edgeA");
  const uint64_t g = h.Register("c1", "n1");
  h.Invoke("i", "n1", 60'000);
  ASSERT_EQ(h.Sink("edgeA").InvokesTo("c1"), 1);
  // The edge reconnects on a new stream before the old stream's OnDone ran.
  auto second = std::make_shared<RecordingEdgeSink>();
  ASSERT_TRUE(h.registry().AttachEdge("edgeA", "e1", second).ok());
  ASSERT_TRUE(h.registry()
                  .Resync("edgeA", "e1", {{RegistryHarness::Spec("c1", "n1", "edgeA", "e1"), g}})
                  .ok());
  h.Detach("edgeA");  // the old stream's OnDone: DetachEdge(edgeA, first sink)
  h.Advance(2'000);
  ASSERT_EQ(h.results().count("i"), 1u)
      << "the invoke sent into the dead stream is still pending; it ends only at its timeout";
  EXPECT_EQ(h.results()["i"].outcome.code, InvokeCode::kDisconnected);
}

INSTANTIATE_TEST_SUITE_P(Stores, ReviewFindings, StoreNames(), StoreName);

}  // namespace
}  // namespace tether::registry
