// Recovery after a start with an empty table (architecture.md, "Registry restart"): not
// serving, registrations refused as retryable, no expiry (so no false DISCONNECTED), ownership
// rebuilt from the edges' resyncs, ready after the grace or once the expected edges resynced.
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "registry_service/core/registry.h"
#include "tests/testing/registry_harness.h"

namespace tether::registry {
namespace {

using ::tether::testing::MakeMemoryStore;
using ::tether::testing::RegistryHarness;

RegistryOptions Recovery(int64_t grace_ms, int expected_edges = 0) {
  RegistryOptions o;
  o.recovery_grace_ms = grace_ms;
  o.recovery_edges = expected_edges;
  return o;
}

StoreOptions ShortLeases() {
  StoreOptions o = RegistryHarness::DefaultOptions();
  o.lease_ttl_ms = 2000;
  return o;
}

// What an edge reports for one of its live connections.
LiveConnection Live(const std::string& conn_id, const std::string& node_id,
                    const std::string& edge_id, const std::string& epoch, uint64_t generation) {
  LiveConnection l;
  l.spec = RegistryHarness::Spec(conn_id, node_id, edge_id, epoch);
  l.generation = generation;
  return l;
}

TEST(Recovery, NoPhaseWithoutAGrace) {
  RegistryHarness h(RegistryHarness::DefaultOptions(), MakeMemoryStore, Recovery(0));
  EXPECT_FALSE(h.registry().Recovering());
  EXPECT_TRUE(h.registry().ServingStatus().ok());
  EXPECT_EQ(h.registry().RetryAfterMs(), 0);
}

TEST(Recovery, EmptyStoreStartsNotServingWithARetryHint) {
  RegistryHarness h(RegistryHarness::DefaultOptions(), MakeMemoryStore, Recovery(10'000));
  ASSERT_TRUE(h.registry().Recovering());
  absl::Status s = h.registry().ServingStatus();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(s.message().find("recovering"), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("retry after 1000 ms"), absl::string_view::npos) << s;
  EXPECT_EQ(h.registry().RetryAfterMs(), 1000);
  h.clock().Advance(9'800);
  EXPECT_EQ(h.registry().RetryAfterMs(), 200);  // never longer than the grace left
}

TEST(Recovery, RegistrationsAreRefusedAsRetryableUntilTheGracePasses) {
  RegistryHarness h(RegistryHarness::DefaultOptions(), MakeMemoryStore, Recovery(3'000));
  h.Attach("edgeA");
  auto r = h.registry().Register(RegistryHarness::Spec("c1", "n1", "edgeA", "e1"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  h.Advance(2'500);
  EXPECT_TRUE(h.registry().Recovering());
  h.Advance(500);
  EXPECT_FALSE(h.registry().Recovering());
  EXPECT_TRUE(h.registry().ServingStatus().ok());
  EXPECT_GT(h.Register("c1", "n1"), 0u);
}

// Ownership comes back from the edges' reports, highest generation first whatever order the
// edges report in; nobody is announced DISCONNECTED.
TEST(Recovery, ResyncsRebuildOwnershipAndEndRecoveryWhenTheExpectedEdgesReported) {
  RegistryHarness h(RegistryHarness::DefaultOptions(), MakeMemoryStore, Recovery(60'000, 2));
  h.Attach("edgeB");
  // The newer connection reports first, the superseded-to-be older one second.
  ASSERT_TRUE(h.registry().Resync("edgeB", "e1", {Live("c2", "n1", "edgeB", "e1", 7)}).ok());
  EXPECT_TRUE(h.registry().Recovering());  // one of two edges
  h.Attach("edgeA");
  ASSERT_TRUE(h.registry()
                  .Resync("edgeA", "e1",
                          {Live("c1", "n1", "edgeA", "e1", 5), Live("c3", "n2", "edgeA", "e1", 9)})
                  .ok());
  EXPECT_FALSE(h.registry().Recovering());
  EXPECT_EQ(h.Node("n1").conn_id, "c2");
  EXPECT_EQ(h.Node("n2").conn_id, "c3");
  EXPECT_EQ(h.CountEvents("n1", PresenceKind::kDisconnected), 0);
  EXPECT_EQ(h.CountEvents("n2", PresenceKind::kDisconnected), 0);
  // Serving: an invoke reaches the owner.
  h.Invoke("i1", "n1");
  EXPECT_TRUE(h.LastInvokeTo("edgeB", "c2").has_value());
  // A new registration gets a generation above every reported one.
  EXPECT_GT(h.Register("c4", "n1", "edgeA"), 9u);
}

TEST(Recovery, AnAttachedEdgeThatHasNotResyncedHoldsRecoveryOpen) {
  RegistryHarness h(RegistryHarness::DefaultOptions(), MakeMemoryStore, Recovery(60'000, 1));
  h.Attach("edgeA");
  h.Attach("edgeB");
  ASSERT_TRUE(h.registry().Resync("edgeA", "e1", {}).ok());
  EXPECT_TRUE(h.registry().Recovering());  // edgeB owes its resync
  ASSERT_TRUE(h.registry().Resync("edgeB", "e1", {Live("c1", "n1", "edgeB", "e1", 3)}).ok());
  EXPECT_FALSE(h.registry().Recovering());
}

// A lease that lapses during recovery publishes nothing until recovery ended; then the lost
// edge's connection is disconnected exactly once.
TEST(Recovery, NoExpiryWhileRecovering) {
  RegistryHarness h(ShortLeases(), MakeMemoryStore, Recovery(10'000));
  h.Attach("edgeA");
  ASSERT_TRUE(h.registry().Resync("edgeA", "e1", {Live("c1", "n1", "edgeA", "e1", 4)}).ok());
  h.Advance(9'500, /*heartbeats=*/false);  // the 2 s lease is long gone
  EXPECT_TRUE(h.registry().Recovering());
  EXPECT_EQ(h.CountEvents("n1", PresenceKind::kDisconnected), 0);
  EXPECT_EQ(h.Node("n1").conn_id, "c1");
  h.Advance(1'000, /*heartbeats=*/false);
  EXPECT_FALSE(h.registry().Recovering());
  EXPECT_EQ(h.CountEvents("n1", PresenceKind::kDisconnected), 1);
  h.Advance(5'000, /*heartbeats=*/false);
  EXPECT_EQ(h.CountEvents("n1", PresenceKind::kDisconnected), 1);
}

// An edge that keeps heartbeating through recovery loses nothing at its end.
TEST(Recovery, HeartbeatingEdgesKeepTheirConnectionsAcrossTheEnd) {
  RegistryHarness h(ShortLeases(), MakeMemoryStore, Recovery(5'000));
  h.Attach("edgeA");
  ASSERT_TRUE(h.registry().Resync("edgeA", "e1", {Live("c1", "n1", "edgeA", "e1", 4)}).ok());
  h.Advance(8'000);
  EXPECT_FALSE(h.registry().Recovering());
  EXPECT_EQ(h.CountEvents("n1", PresenceKind::kDisconnected), 0);
  EXPECT_EQ(h.Node("n1").conn_id, "c1");
}

}  // namespace
}  // namespace tether::registry
