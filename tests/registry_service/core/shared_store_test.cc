// Two Registry instances over one store, as two replicas over one Redis: presence watchers on
// either see every change, whichever replica decided it, with the same revisions, in order;
// on Redis, edge messages and invoke outcomes reach the replica that holds the edge's stream
// or the caller, whichever replica decided them.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "gtest/gtest.h"
#include "registry_service/core/registry.h"
#include "registry_service/store/memory_store.h"
#include "registry_service/store/redis_store.h"
#include "tests/testing/fake_edge_sink.h"
#include "tests/testing/redis_server.h"
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

// A burst another replica decided, larger than the history, cannot be served in order from the
// history: the watcher is told to re-list (OUT_OF_RANGE), never left with a silent gap.
TEST(SharedStore, ABurstLargerThanTheHistoryFromAnotherReplicaEndsTheWatchWithOutOfRange) {
  common::FakeClock clock;
  StoreOptions o = RegistryHarness::DefaultOptions();
  o.presence_history = 4;
  MemoryStore store(o, clock.NowMs());
  Registry r1(store, clock, RegistryOptions{});
  Registry r2(store, clock, RegistryOptions{});
  auto sink = std::make_shared<RecordingEdgeSink>();
  ASSERT_TRUE(r1.AttachEdge("edgeA", "e1", sink).ok());
  int seen = 0;
  std::vector<absl::Status> errors;
  ASSERT_TRUE(r2.Watch(
                    0, [&](const PresenceEvent&) { ++seen; },
                    [&](const absl::Status& s) { errors.push_back(s); })
                  .ok());
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(r1.Register(RegistryHarness::Spec("c" + std::to_string(i), "n" + std::to_string(i),
                                                  "edgeA", "e1"))
                    .ok());
  }
  r2.Tick();
  ASSERT_EQ(errors.size(), 1u) << "the watcher saw " << seen << " of 6 and no error";
  EXPECT_EQ(errors[0].code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(seen, 0);
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
  r1.ExpireWaiters();  // (the server's deadline thread)
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].outcome.code, InvokeCode::kTimeout);
  clock.Advance(5000);
  r1.Tick();
  r2.Tick();
  EXPECT_EQ(results.size(), 1u);
}

}  // namespace
}  // namespace tether::registry

// --- Two replicas on one Redis: edge messages and outcomes routed through the store ----------

namespace tether::registry {
namespace {

using ::tether::testing::RedisServer;

// Two Registry replicas, each with its own RedisStore (own replica id, own connections) on one
// redis-server and one key prefix, and one fake clock. Tests call PumpRouted by hand where
// the server's router thread would.
class RoutedReplicas : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto server = RedisServer::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    redis_ = std::move(*server);
  }
  static void TearDownTestSuite() { redis_.reset(); }

  void SetUp() override {
    static int n = 0;
    const std::string prefix = "routed" + std::to_string(++n) + ":";
    for (int i = 0; i < 2; ++i) {
      RedisStoreOptions o;
      o.client = redis_->ClientOptions();
      o.key_prefix = prefix;
      o.replica_id = "r" + std::to_string(i + 1);
      auto store = std::make_unique<RedisStore>(RegistryHarness::DefaultOptions(), o);
      ASSERT_TRUE(store->Connect().ok());
      stores_[i] = std::move(store);
      replicas_[i] = std::make_unique<Registry>(*stores_[i], clock_, RegistryOptions{});
    }
  }

  // The common start: edgeA's stream on replica 1, node n1 connected through it as c1.
  std::shared_ptr<RecordingEdgeSink> EdgeAWithNode1OnReplica1() {
    auto sink = std::make_shared<RecordingEdgeSink>();
    if (!r1().AttachEdge("edgeA", "e1", sink).ok()) return nullptr;
    if (!r1().Register(RegistryHarness::Spec("c1", "n1", "edgeA", "e1")).ok()) return nullptr;
    return sink;
  }

  Registry& r1() { return *replicas_[0]; }
  Registry& r2() { return *replicas_[1]; }

  // An invoke on `replica` whose outcome lands in results_[tag].
  void Invoke(Registry& replica, const std::string& tag, const std::string& key = "",
              int64_t timeout_ms = 5000) {
    InvokeParams p;
    p.node_id = "n1";
    p.command = "system.which";
    p.timeout_ms = timeout_ms;
    p.idempotency_key = key;
    replica.Invoke(p, [this, tag](const InvokeResult& r) {
      ASSERT_FALSE(results_.count(tag)) << tag << " ended twice";
      results_[tag] = r;
    });
  }

  static std::unique_ptr<RedisServer> redis_;
  common::FakeClock clock_;
  std::unique_ptr<RedisStore> stores_[2];
  std::unique_ptr<Registry> replicas_[2];
  std::map<std::string, InvokeResult> results_;
};

std::unique_ptr<RedisServer> RoutedReplicas::redis_;

InvokeOutcome Ok(const std::string& payload) {
  InvokeOutcome o;
  o.code = InvokeCode::kOk;
  o.payload_json = payload;
  return o;
}

TEST_F(RoutedReplicas, AnInvokeDecidedOnOneReplicaReachesTheEdgeOnTheOtherAndItsResultTheCaller) {
  auto sink = EdgeAWithNode1OnReplica1();
  ASSERT_NE(sink, nullptr);

  Invoke(r2(), "call");
  EXPECT_TRUE(sink->invokes().empty());  // replica 2 holds no stream for edgeA
  ASSERT_TRUE(r1().PumpRouted(0).ok());
  ASSERT_EQ(sink->invokes().size(), 1u);
  const Dispatch d = sink->invokes()[0];
  EXPECT_EQ(d.conn_id, "c1");
  EXPECT_GT(sink->remaining()[0], 0);

  // The result arrives through edgeA on replica 1; the caller waits on replica 2.
  EXPECT_TRUE(r1().AcceptResult("c1", d.invoke_id, "n1", Ok(R"({"x":1})"), "edgeA"));
  EXPECT_FALSE(results_.count("call"));
  ASSERT_TRUE(r2().PumpRouted(0).ok());
  ASSERT_TRUE(results_.count("call"));
  EXPECT_EQ(results_["call"].outcome.code, InvokeCode::kOk);
  EXPECT_EQ(results_["call"].outcome.payload_json, R"({"x":1})");
  ASSERT_TRUE(r2().PumpRouted(0).ok());  // nothing twice
  ASSERT_TRUE(r1().PumpRouted(0).ok());
  EXPECT_EQ(sink->invokes().size(), 1u);
}

// Invariant 8 across replicas: an invoke decided on replica 2 for the old socket, then the
// socket superseded by a registration on replica 2's edge, reach edgeA (on replica 1) in that
// order, so the edge keeps the old socket until the invoke settles.
TEST_F(RoutedReplicas, EdgeMessagesArriveInDecisionOrderWhicheverReplicaDecided) {
  auto sinkA = std::make_shared<RecordingEdgeSink>();
  auto sinkB = std::make_shared<RecordingEdgeSink>();
  ASSERT_TRUE(r1().AttachEdge("edgeA", "e1", sinkA).ok());
  ASSERT_TRUE(r2().AttachEdge("edgeB", "e1", sinkB).ok());
  ASSERT_TRUE(r1().Register(RegistryHarness::Spec("c1", "n1", "edgeA", "e1")).ok());
  Invoke(r2(), "old");
  ASSERT_TRUE(r2().Register(RegistryHarness::Spec("c2", "n1", "edgeB", "e1")).ok());
  EXPECT_TRUE(sinkA->log().empty());
  ASSERT_TRUE(r1().PumpRouted(0).ok());
  EXPECT_EQ(sinkA->log(), (std::vector<std::string>{"invoke c1", "superseded c1"}));
  // The old socket's invoke settles on replica 1: its retirement follows, still in order.
  const Dispatch d = sinkA->invokes()[0];
  EXPECT_TRUE(r1().AcceptResult("c1", d.invoke_id, "n1", Ok("{}"), "edgeA"));
  EXPECT_EQ(sinkA->log(), (std::vector<std::string>{"invoke c1", "superseded c1", "close c1"}));
  ASSERT_TRUE(r2().PumpRouted(0).ok());
  EXPECT_EQ(results_["old"].outcome.code, InvokeCode::kOk);
  EXPECT_TRUE(sinkB->log().empty());
}

TEST_F(RoutedReplicas, CallersOnBothReplicasWithOneKeyShareOneInvoke) {
  auto sink = EdgeAWithNode1OnReplica1();
  ASSERT_NE(sink, nullptr);
  Invoke(r1(), "on1", "k");
  Invoke(r2(), "on2", "k");
  ASSERT_TRUE(r1().PumpRouted(0).ok());
  ASSERT_EQ(sink->invokes().size(), 1u);
  EXPECT_TRUE(r1().AcceptResult("c1", sink->invokes()[0].invoke_id, "n1", Ok("7"), "edgeA"));
  ASSERT_TRUE(r2().PumpRouted(0).ok());
  ASSERT_TRUE(results_.count("on1") && results_.count("on2"));
  EXPECT_EQ(results_["on1"].outcome.payload_json, "7");
  EXPECT_EQ(results_["on2"].outcome.payload_json, "7");
  EXPECT_EQ(results_["on1"].invoke_id, results_["on2"].invoke_id);
}

TEST_F(RoutedReplicas, ATimeoutExpiredByOneReplicaEndsTheCallerOnTheOtherWithTheStoresOutcome) {
  auto sink = EdgeAWithNode1OnReplica1();
  ASSERT_NE(sink, nullptr);
  Invoke(r2(), "call", "", 1000);
  ASSERT_TRUE(r1().PumpRouted(0).ok());
  clock_.Advance(1001);
  ASSERT_TRUE(r1().Heartbeat("edgeA", "e1").ok());
  r1().Tick();  // replica 1 expires it; its cancel goes to edgeA in order
  ASSERT_TRUE(r2().PumpRouted(0).ok());
  ASSERT_TRUE(results_.count("call"));
  EXPECT_EQ(results_["call"].outcome.code, InvokeCode::kTimeout);
  EXPECT_EQ(results_["call"].outcome.message, "node did not answer in time");
  EXPECT_EQ(sink->log(), (std::vector<std::string>{"invoke c1", "cancel c1"}));
}

TEST_F(RoutedReplicas, AnEdgeIdLiveOnOneReplicaIsRefusedOnTheOtherUntilItsStreamEnds) {
  auto first = std::make_shared<RecordingEdgeSink>();
  ASSERT_TRUE(r1().AttachEdge("edgeA", "e1", first).ok());
  ASSERT_TRUE(r1().Register(RegistryHarness::Spec("c1", "n1", "edgeA", "e1")).ok());
  auto second = std::make_shared<RecordingEdgeSink>();
  absl::Status refused = r2().AttachEdge("edgeA", "e2", second);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_NE(refused.message().find("edge id in use"), std::string::npos) << refused;
  EXPECT_TRUE(r2().store().GetNode("n1")->connected);  // nothing changed

  r1().DetachEdge("edgeA", first.get());  // the first process's stream ended
  EXPECT_TRUE(r2().AttachEdge("edgeA", "e2", second).ok());
  EXPECT_FALSE(r2().store().GetNode("n1")->connected);  // the old process's sockets are gone
}

TEST_F(RoutedReplicas, AnInvokeForAnEdgeNoReplicaHoldsFailsAtOnce) {
  auto sink = EdgeAWithNode1OnReplica1();
  ASSERT_NE(sink, nullptr);
  r1().DetachEdge("edgeA", sink.get());
  Invoke(r2(), "call");
  ASSERT_TRUE(results_.count("call"));
  EXPECT_EQ(results_["call"].outcome.code, InvokeCode::kDisconnected);
  EXPECT_EQ(results_["call"].outcome.message, "edge link down");
}

// A lost edge's lease is expired by whichever replica ticks first, once: one DISCONNECTED per
// connection however many replicas tick, and the expiry goes on when the replica that held the
// edge is gone (here: never ticks again).
TEST_F(RoutedReplicas, ALostEdgesLeaseIsExpiredOnceByWhicheverReplicaTicks) {
  auto sink = std::make_shared<RecordingEdgeSink>();
  ASSERT_TRUE(r1().AttachEdge("edgeA", "e1", sink).ok());
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(r1().Register(RegistryHarness::Spec("c" + std::to_string(i),
                                                    "n" + std::to_string(i), "edgeA", "e1"))
                    .ok());
  }
  std::vector<PresenceEvent> seen;
  ASSERT_TRUE(r2().Watch(0, [&](const PresenceEvent& e) { seen.push_back(e); }).ok());
  clock_.Advance(RegistryOptions{}.lease_ttl_ms + 1000);  // edgeA went silent
  r2().Tick();  // replica 1 (which held the stream) is dead: replica 2 expires the lease
  r2().Tick();
  int disconnected = 0;
  for (const PresenceEvent& e : seen) {
    disconnected += e.kind == PresenceKind::kDisconnected && e.reason == kReasonEdgeLost;
  }
  EXPECT_EQ(disconnected, 3);
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(stores_[0]->GetNode("n" + std::to_string(i))->connected);
  // Replica 1 comes back and ticks: nothing is expired twice.
  r1().Tick();
  r2().Tick();
  auto history = stores_[1]->ReadPresence(0, 100);
  ASSERT_TRUE(history.ok());
  int total = 0;
  for (const PresenceEvent& e : *history) total += e.kind == PresenceKind::kDisconnected;
  EXPECT_EQ(total, 3);
}

// A replica that takes an edge over (same process, same epoch, after the first replica lost
// its stream) continues after what the first one delivered and recorded; the first replica,
// whose stale stream is still attached, stops delivering once it learns it lost the edge.
TEST_F(RoutedReplicas, AReplicaTakingAnEdgeOverContinuesAfterWhatWasDelivered) {
  auto on1 = std::make_shared<RecordingEdgeSink>();
  ASSERT_TRUE(r1().AttachEdge("edgeA", "e1", on1).ok());
  ASSERT_TRUE(r1().Register(RegistryHarness::Spec("c1", "n1", "edgeA", "e1")).ok());
  Invoke(r1(), "before");
  ASSERT_EQ(on1->invokes().size(), 1u);
  r1().Tick();  // records the position

  auto on2 = std::make_shared<RecordingEdgeSink>();
  ASSERT_TRUE(r2().AttachEdge("edgeA", "e1", on2).ok());  // same epoch: a takeover
  ASSERT_TRUE(r2().PumpRouted(0).ok());
  EXPECT_TRUE(on2->invokes().empty());  // not delivered again
  Invoke(r2(), "after");
  ASSERT_TRUE(r2().PumpRouted(0).ok());
  ASSERT_EQ(on2->invokes().size(), 1u);
  r1().Tick();  // replica 1 learns edgeA is held elsewhere
  ASSERT_TRUE(r1().PumpRouted(0).ok());
  EXPECT_EQ(on1->invokes().size(), 1u);
  Invoke(r1(), "third");
  ASSERT_TRUE(r1().PumpRouted(0).ok());
  ASSERT_TRUE(r2().PumpRouted(0).ok());
  EXPECT_EQ(on1->invokes().size(), 1u);
  EXPECT_EQ(on2->invokes().size(), 2u);
}

}  // namespace
}  // namespace tether::registry
