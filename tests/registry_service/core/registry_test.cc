// Registry (the core's delivery side) with threads: what one edge is sent arrives in the order
// it was decided, whatever thread made each decision and however slow the stream is.
#include "registry_service/core/registry.h"

#include <atomic>
#include <chrono>
#include <functional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "tests/testing/registry_harness.h"
#include "tests/testing/stalling_store.h"

namespace tether::registry {
namespace {

using ::tether::testing::RegistryHarness;

InvokeParams Params(const std::string& node_id) {
  InvokeParams p;
  p.node_id = node_id;
  p.command = "system.which";
  p.timeout_ms = 5000;
  return p;
}

// Sends an invoke to `node_id` whose write to the edge stalls (a stream write under way), runs
// `meanwhile` (another decision, on its own thread, to completion), then lets the write go on.
// Returns what the edge received, in order.
std::vector<std::string> WhileAnInvokeIsBeingSent(RegistryHarness& h, const std::string& node_id,
                                                  const std::function<void()>& meanwhile) {
  auto& sink = h.Sink("edgeA");
  absl::Notification in_send, release;
  sink.before_invoke = [&] {
    in_send.Notify();
    release.WaitForNotification();
  };
  std::thread caller([&] { h.registry().Invoke(Params(node_id), [](const InvokeResult&) {}); });
  in_send.WaitForNotification();
  std::thread other(meanwhile);
  other.join();  // its decision is made; its message must wait for the invoke's
  release.Notify();
  caller.join();
  return sink.log();
}

// An invoke is dispatched to the owner; while its send is still under way (a stalled stream
// write), the node reconnects and the old owner is superseded. Sent straight from each deciding
// thread, Superseded overtook the invoke: the edge closed the "idle" old socket and the invoke
// failed DISCONNECTED while the node was online.
TEST(RegistryOutbox, SupersededCannotOvertakeAnInvokeDecidedBeforeIt) {
  RegistryHarness h;
  h.Attach("edgeA");
  ASSERT_GT(h.Register("old", "n1"), 0u);
  const auto log = WhileAnInvokeIsBeingSent(h, "n1", [&] { h.Register("new", "n1"); });
  ASSERT_GE(log.size(), 2u);
  EXPECT_EQ(log[0], "invoke old");
  EXPECT_EQ(log[1], "superseded old");
}

// The expiry's cancel for an invoke must not reach the edge before the invoke itself.
TEST(RegistryOutbox, TimeoutCancelCannotOvertakeItsInvoke) {
  RegistryHarness h;
  h.Attach("edgeA");
  ASSERT_GT(h.Register("c1", "n1"), 0u);
  const auto log = WhileAnInvokeIsBeingSent(h, "n1", [&] {
    h.clock().Advance(6000);  // past the invoke's deadline
    h.registry().Tick();
  });
  ASSERT_EQ(log.size(), 2u);
  EXPECT_EQ(log[0], "invoke c1");
  EXPECT_EQ(log[1], "cancel c1");
}

// Many threads deciding at once: every invoke reaches the edge before the command that
// retires its connection.
TEST(RegistryOutbox, ConcurrentDecisionsKeepPerConnectionOrder) {
  RegistryHarness h;
  auto& sink = h.Attach("edgeA");
  ASSERT_GT(h.Register("c0", "n1"), 0u);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) h.registry().Invoke(Params("n1"), [](const InvokeResult&) {});
    });
  }
  std::thread reconnects([&] {
    for (int i = 1; i <= 50; ++i) h.Register("c" + std::to_string(i), "n1");
  });
  for (auto& t : threads) t.join();
  reconnects.join();
  std::set<std::string> retired;
  for (const std::string& entry : sink.log()) {
    const std::string conn = entry.substr(entry.find(' ') + 1);
    if (entry.rfind("superseded ", 0) == 0 || entry.rfind("close ", 0) == 0) retired.insert(conn);
    if (entry.rfind("invoke ", 0) == 0) {
      EXPECT_EQ(retired.count(conn), 0u) << "invoke to " << conn << " after its retirement";
    }
  }
}

// The waiter expiry (the server's deadline thread: a caller still waiting a second past its
// deadline gets TIMEOUT) can run between an invoke's decision and the moment Invoke answers its own
// caller (a store slow enough that the deadline passed meanwhile: Redis under a storm). `done` must
// still run exactly once: twice is two Finish calls on one gRPC reactor, which aborts the registry
// (seen in the storm benchmark on Redis).
TEST(RegistryWaiters, EveryCallerIsAnsweredExactlyOnceWhileTicksExpireWaiters) {
  RegistryHarness h;
  h.Attach("edgeA");
  constexpr int kCalls = 20000;
  std::vector<std::atomic<int>> answered(kCalls);
  std::atomic<bool> stop{false};
  std::thread timer([&] {
    while (!stop.load()) {
      h.clock().Advance(5000);  // every waiter is past its deadline + slack at once
      h.registry().Tick();
      h.registry().ExpireWaiters();
    }
  });
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  int calls = 0;
  for (; calls < kCalls && std::chrono::steady_clock::now() < give_up; ++calls) {
    InvokeParams p = Params("nobody-" + std::to_string(calls % 7));  // not connected: kFailed
    p.timeout_ms = 1;
    h.registry().Invoke(p, [&answered, calls](const InvokeResult&) { answered[calls]++; });
  }
  stop = true;
  timer.join();
  for (int i = 0; i < calls; ++i) ASSERT_EQ(answered[i].load(), 1) << "call " << i;
}

// Admit and Start, the two halves of Invoke (transition table of one admitted call):
//   admitted, deadline passes before Start     ExpireWaiters: TIMEOUT at the deadline; Start
//                                              then starts nothing
//   admitted, cancelled before Start           CANCELLED; Start starts nothing, no store call
//   Start with < kMinStartMs left              TIMEOUT at once, nothing sent
//   started, no outcome by deadline            ExpireWaiters: TIMEOUT kWaiterSlackMs after it
// A call waiting for a worker behind an overloaded store (Redis in a reconnect storm) must still
// be answered by its deadline: before, nothing could answer it until a worker reached it, and
// callers saw gRPC's DEADLINE_EXCEEDED instead of a typed outcome (22,030 of 32,079 invokes in
// the Redis storm benchmark on a slow machine).
class RegistryAdmit : public ::testing::Test {
 protected:
  RegistryAdmit() : sink_(h_.Attach("edgeA")) { EXPECT_GT(h_.Register("c1", "n1"), 0u); }

  // Admits an invoke to n1 whose answers land in got_.
  InvokeTicket Admit(const InvokeParams& p) {
    return h_.registry().Admit(p, [this](const InvokeResult& r) { got_.push_back(r); });
  }

  RegistryHarness h_;
  ::tether::testing::RecordingEdgeSink& sink_;
  std::vector<InvokeResult> got_;
};

TEST_F(RegistryAdmit, AnInvokeNotStartedByItsDeadlineIsAnsweredThenAndNeverStarts) {
  const InvokeParams p = Params("n1");  // 5 s
  const InvokeTicket admitted = Admit(p);
  h_.clock().Advance(4999);
  h_.registry().ExpireWaiters();
  EXPECT_TRUE(got_.empty());
  h_.clock().Advance(1);  // its deadline: no slack, no store holds it
  h_.registry().ExpireWaiters();
  ASSERT_EQ(got_.size(), 1u);
  EXPECT_EQ(got_[0].outcome.code, InvokeCode::kTimeout);
  EXPECT_NE(got_[0].outcome.message.find("could not start"), std::string::npos);
  EXPECT_TRUE(h_.registry().Start(admitted, p).invoke_id.empty());
  h_.registry().Tick();
  EXPECT_EQ(got_.size(), 1u);
  EXPECT_TRUE(sink_.invokes().empty());
}

TEST_F(RegistryAdmit, AnInvokeCancelledBeforeItStartsNeverStarts) {
  const InvokeParams p = Params("n1");
  const InvokeTicket admitted = Admit(p);
  h_.registry().CancelInvoke(admitted);
  ASSERT_EQ(got_.size(), 1u);
  EXPECT_EQ(got_[0].outcome.code, InvokeCode::kCancelled);
  EXPECT_TRUE(h_.registry().Start(admitted, p).invoke_id.empty());
  EXPECT_EQ(got_.size(), 1u);
  EXPECT_TRUE(sink_.invokes().empty());
}

TEST_F(RegistryAdmit, StartWithTooLittleOfTheDeadlineLeftAnswersTimeoutAndSendsNothing) {
  InvokeParams p = Params("n1");
  p.caller_remaining_ms = 100;  // the caller's gRPC deadline, nearer than the timeout
  const InvokeTicket admitted = Admit(p);
  h_.clock().Advance(75 - kMinStartMs + 1);  // waited for a worker (deadline: 100 less 100/4)
  EXPECT_TRUE(h_.registry().Start(admitted, p).invoke_id.empty());
  ASSERT_EQ(got_.size(), 1u);
  EXPECT_EQ(got_[0].outcome.code, InvokeCode::kTimeout);
  EXPECT_TRUE(sink_.invokes().empty());
}

// The caller's own deadline binds: the invoke ends answer_margin_ms (at most a quarter of the
// caller's time) before it, so that the expiry's TIMEOUT reaches a caller still listening.
TEST_F(RegistryAdmit, AnInvokeEndsAMarginBeforeTheCallersOwnDeadline) {
  InvokeParams p = Params("n1");
  p.timeout_ms = 5000;
  p.caller_remaining_ms = 1000;
  EXPECT_EQ(h_.registry().Start(Admit(p), p).invoke_id.empty(), false);
  p.caller_remaining_ms = 200;  // a quarter of it: 50 ms
  EXPECT_EQ(h_.registry().Start(Admit(p), p).invoke_id.empty(), false);
  p.caller_remaining_ms = 5080;  // the timeout ends first, but within the margin of the caller's
  EXPECT_EQ(h_.registry().Start(Admit(p), p).invoke_id.empty(), false);
  ASSERT_EQ(sink_.invokes().size(), 3u);
  EXPECT_EQ(sink_.remaining()[0], 1000 - RegistryOptions{}.answer_margin_ms);
  EXPECT_EQ(sink_.remaining()[1], 150);
  EXPECT_EQ(sink_.remaining()[2], 5080 - RegistryOptions{}.answer_margin_ms);
}

TEST_F(RegistryAdmit, AStartedInvokeIsAnsweredBySlackAfterItsDeadlineWithoutTheStore) {
  const InvokeParams p = Params("n1");
  const InvokeTicket admitted = Admit(p);
  EXPECT_EQ(h_.registry().Start(admitted, p).invoke_id, admitted.invoke_id);
  ASSERT_EQ(sink_.invokes().size(), 1u);
  // No Tick (the store's expiry held up): ExpireWaiters alone answers, after the slack.
  h_.clock().Advance(5000 + kWaiterSlackMs - 1);
  h_.registry().ExpireWaiters();
  EXPECT_TRUE(got_.empty()) << "the store's own expiry gets the first word";
  h_.clock().Advance(1);
  h_.registry().ExpireWaiters();
  ASSERT_EQ(got_.size(), 1u);
  EXPECT_EQ(got_[0].outcome.code, InvokeCode::kTimeout);
  h_.registry().Tick();  // the store's expiry, late: no second answer
  EXPECT_EQ(got_.size(), 1u);
}

// A RegistryHarness store factory making a StallingStore, left in `*store`.
::tether::testing::StoreFactory StallingStoreFactory(::tether::testing::StallingStore** store) {
  return [store](const StoreOptions& o, int64_t start_ms) -> std::unique_ptr<Store> {
    auto s = std::make_unique<::tether::testing::StallingStore>(o, start_ms);
    *store = s.get();
    return s;
  };
}

// Found in review: the caller can be answered (its deadline passed, or it cancelled) while
// its invoke is still being decided in the store (seconds on Redis under overload). The
// decision then dispatched it anyway and nobody told the node to stop: it ran a command no
// one waited for (twice, if the caller retried without an idempotency key). It must be
// cancelled at the node instead.
TEST(RegistryAdmitRace, AnInvokeWhoseCallerWasAnsweredDuringTheDecisionIsCancelledAtTheNode) {
  ::tether::testing::StallingStore* store = nullptr;
  RegistryHarness h(RegistryHarness::DefaultOptions(), StallingStoreFactory(&store));
  auto& sink = h.Attach("edgeA");
  ASSERT_GT(h.Register("c1", "n1"), 0u);
  std::vector<InvokeResult> got;
  // While the decision is in the store, the caller's deadline and the slack pass and the
  // server's expiry thread answers it (no store call, so it does not wait for the decision).
  store->before_start_invoke = [&] {
    h.clock().Advance(5000 + kWaiterSlackMs);
    h.registry().ExpireWaiters();
  };
  h.registry().Invoke(Params("n1"), [&](const InvokeResult& r) { got.push_back(r); });
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].outcome.code, InvokeCode::kTimeout);
  const auto log = sink.log();
  ASSERT_FALSE(log.empty());
  EXPECT_EQ(log.front(), "invoke c1");
  EXPECT_EQ(log.back(), "cancel c1") << "the node runs an invoke nobody waits for";
}

// Found in review: a replica cut off from a shared store kept answering the edge's heartbeats
// with "try again" and kept its stream, while another replica lapsed the lease and closed the
// edge's connections (edge_lost): the edge never learnt it and its sockets stayed unowned. Past
// the lease's TTL without a renewal the heartbeat now says "attach again".
TEST(RegistryLease, HeartbeatsTheStoreCannotRenewForLongerThanTheTtlAskTheEdgeToReattach) {
  ::tether::testing::StallingStore* store = nullptr;
  RegistryHarness h(RegistryHarness::DefaultOptions(), StallingStoreFactory(&store));
  h.Attach("edgeA");
  const int64_t ttl = RegistryOptions{}.lease_ttl_ms;
  h.clock().Advance(1000);
  ASSERT_TRUE(h.registry().Heartbeat("edgeA", "e1").ok());
  store->fail_renewals = true;
  h.clock().Advance(ttl);
  EXPECT_TRUE(absl::IsUnavailable(h.registry().Heartbeat("edgeA", "e1")));  // try again
  h.clock().Advance(1);
  EXPECT_TRUE(absl::IsFailedPrecondition(h.registry().Heartbeat("edgeA", "e1")));
  store->fail_renewals = false;
  EXPECT_TRUE(h.registry().Heartbeat("edgeA", "e1").ok());  // (the store answers again)
}

// Found in review: a resync stops the stream's reads, heartbeats included, for as long as it
// runs; on a loaded Redis that is longer than a lease. The tick renews the lease of an edge
// whose resync is running.
TEST(RegistryLease, TheLeaseOfAnEdgeWhoseResyncRunsIsRenewedByTheTick) {
  ::tether::testing::StallingStore* store = nullptr;
  RegistryHarness h(RegistryHarness::DefaultOptions(), StallingStoreFactory(&store));
  h.Attach("edgeA");
  ASSERT_GT(h.Register("c1", "n1"), 0u);
  // The resync takes two lease TTLs with no heartbeat; the server's ticker runs meanwhile (on
  // its own thread: it renews leases first, then waits for the decision to expire).
  std::thread ticker;
  store->during_resync = [&] {
    h.clock().Advance(2 * RegistryOptions{}.lease_ttl_ms);
    const int before = store->renewals.load();
    ticker = std::thread([&] { h.registry().Tick(); });
    for (int i = 0; i < 500 && store->renewals.load() == before; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  };
  std::vector<LiveConnection> live(1);
  live[0].spec = RegistryHarness::Spec("c1", "n1", "edgeA", "e1");
  auto r = h.registry().Resync("edgeA", "e1", live);
  ticker.join();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(h.Node("n1").connected) << "the lease lapsed during the resync";
}

// Found in review: a caller joining an invoke (same idempotency key) took the joined invoke's
// deadline as its own, so a joiner with a shorter timeout waited for the longer one. Each caller
// ends by its own deadline; the invoke goes on for the caller that started it.
TEST_F(RegistryAdmit, AJoinerWithAShorterTimeoutEndsByItsOwnDeadline) {
  InvokeParams first = Params("n1");
  first.idempotency_key = "k";
  first.timeout_ms = 10'000;
  std::vector<InvokeResult> first_got;
  h_.registry().Invoke(first, [&](const InvokeResult& r) { first_got.push_back(r); });
  InvokeParams joiner = first;
  joiner.timeout_ms = 2'000;
  h_.registry().Start(Admit(joiner), joiner);
  ASSERT_EQ(sink_.invokes().size(), 1u) << "the joiner must not start a second invoke";
  // At its own deadline, without the waiter slack: nothing in the store ends the joined
  // invoke by then, and the caller's gRPC deadline may be just as near.
  h_.clock().Advance(1'999);
  h_.registry().ExpireWaiters();
  EXPECT_TRUE(got_.empty());
  h_.clock().Advance(1);
  h_.registry().ExpireWaiters();
  ASSERT_EQ(got_.size(), 1u) << "the joiner still waits past its own deadline";
  EXPECT_EQ(got_[0].outcome.code, InvokeCode::kTimeout);
  EXPECT_TRUE(first_got.empty()) << "the invoke goes on for its first caller";
  h_.clock().Advance(8'000);
  h_.registry().Tick();
  ASSERT_EQ(first_got.size(), 1u);  // (at its own 10 s)
  EXPECT_EQ(first_got[0].outcome.code, InvokeCode::kTimeout);
  EXPECT_EQ(got_.size(), 1u);
}

TEST_F(RegistryAdmit, ACallerAskingForLessThanTheStartMarginStillGetsItsTry) {
  InvokeParams p = Params("n1");
  p.timeout_ms = 1;
  h_.registry().Invoke(p, [](const InvokeResult&) {});
  EXPECT_EQ(sink_.invokes().size(), 1u);
}

}  // namespace
}  // namespace tether::registry

namespace tether::registry {
namespace {

// Issue 11 #3: the registry times leases and invokes on the steady timeline. With the real
// clock's wall source stepped an hour forward and then two hours back (NTP, an operator),
// no lease lapses and no invoke times out early; the invoke still ends at its own 5 s.
TEST(RegistryClock, WallClockStepsExpireNoLeaseAndNoInvokeEarly) {
  std::atomic<int64_t> wall{1'700'000'000'000};
  std::atomic<int64_t> steady{0};
  common::RealClock clock([&] { return wall.load(); }, [&] { return steady.load(); });
  StoreOptions o = RegistryHarness::DefaultOptions();
  MemoryStore store(o, clock.NowMs());
  Registry registry(store, clock, RegistryOptions{});
  auto sink = std::make_shared<::tether::testing::RecordingEdgeSink>();
  ASSERT_TRUE(registry.AttachEdge("edgeA", "e1", sink).ok());
  ASSERT_TRUE(registry.Register(RegistryHarness::Spec("c1", "n1", "edgeA", "e1")).ok());
  InvokeParams p;
  p.node_id = "n1";
  p.command = "system.which";
  p.timeout_ms = 5000;
  std::optional<InvokeResult> result;
  registry.Invoke(p, [&](const InvokeResult& r) { result = r; });

  wall += 3'600'000;  // an hour forward
  steady += 100;
  registry.Tick();
  EXPECT_FALSE(result.has_value()) << "the invoke ended at a wall-clock step";
  EXPECT_TRUE(store.GetNode("n1")->connected);

  wall -= 7'200'000;  // two hours back: ticks must go on
  for (int i = 0; i < 4; ++i) {
    steady += 1000;
    ASSERT_TRUE(registry.Heartbeat("edgeA", "e1").ok());
    registry.Tick();
  }
  EXPECT_FALSE(result.has_value());  // 4.1 s of steady time: not yet
  steady += 1000;
  registry.Tick();
  ASSERT_TRUE(result.has_value());  // 5.1 s: its own timeout
  EXPECT_EQ(result->outcome.code, InvokeCode::kTimeout);
  EXPECT_TRUE(store.GetNode("n1")->connected);
}

}  // namespace
}  // namespace tether::registry
