// The Store contract: every implementation makes the same decisions with the same effects.
// Each case runs against the MemoryStore and against a RedisStore on a redis-server this test
// starts (one per test binary, a fresh key prefix per case).
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "registry_service/core/store.h"
#include "registry_service/store/memory_store.h"
#include "registry_service/store/redis_store.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/status_matchers.h"

namespace tether::registry {
namespace {

using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::IsEmpty;
using ::testing::SizeIs;
using ::tether::testing::IsOk;
using ::tether::testing::RedisServer;
using ::tether::testing::StatusIs;

constexpr int64_t kStart = 1'700'000'000'000;  // wall-clock-like ms, as the server passes

class StoreContract : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    auto server = RedisServer::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    redis_ = std::move(*server);
  }
  static void TearDownTestSuite() { redis_.reset(); }

  void SetUp() override { Reset(DefaultOptions()); }

  static StoreOptions DefaultOptions() {
    StoreOptions o;
    o.auto_approve_all = true;
    o.lease_ttl_ms = 10'000;
    o.superseded_grace_ms = 5'000;
    return o;
  }

  // A fresh, empty store with `options`.
  void Reset(const StoreOptions& options) {
    store_.reset();
    if (GetParam() == "memory") {
      store_ = std::make_unique<MemoryStore>(options, kStart);
      return;
    }
    RedisStoreOptions r;
    r.client = redis_->ClientOptions();
    static int counter = 0;
    r.key_prefix = "contract" + std::to_string(++counter) + ":";
    auto store = std::make_unique<RedisStore>(options, r);
    ASSERT_THAT(store->Connect(), IsOk());
    store_ = std::move(store);
  }

  static ConnectionSpec Spec(const std::string& conn, const std::string& node,
                             const std::string& edge = "A", const std::string& epoch = "e1") {
    ConnectionSpec s;
    s.conn_id = conn;
    s.node_id = node;
    s.edge_id = edge;
    s.edge_epoch = epoch;
    s.public_key = "pk-" + node;
    s.remote_addr = "10.0.0.1:5000";
    s.shared_token_ok = true;
    s.client.client_id = "node-host";
    s.client.display_name = "Node " + node;
    s.client.platform = "linux";
    s.client.caps = {"system"};
    s.client.commands = {"system.which", "system.run"};
    return s;
  }

  void Attach(const std::string& edge, const std::string& epoch = "e1") {
    Effects fx;
    ASSERT_THAT(store_->AttachEdge(edge, epoch, now_, &fx), IsOk());
  }

  // Registers and expects a grant; returns the generation.
  uint64_t Grant(const std::string& conn, const std::string& node, const std::string& edge = "A",
                 Effects* fx = nullptr) {
    Effects local;
    auto r = store_->Register(Spec(conn, node, edge), now_, fx != nullptr ? fx : &local);
    EXPECT_THAT(r, IsOk());
    if (!r.ok()) return 0;
    EXPECT_TRUE(r->granted) << r->details_code;
    return r->generation;
  }

  InvokeStartResult Start(const std::string& invoke_id, const std::string& node,
                          int64_t timeout_ms = 1000, const std::string& key = "",
                          bool remember = false) {
    InvokeStart s;
    s.invoke_id = invoke_id;
    s.node_id = node;
    s.command = "system.which";
    s.params_json = R"({"bins":["ls"]})";
    s.idempotency_key = key.empty() ? "key-" + invoke_id : key;
    s.remember_outcome = remember;
    s.timeout_ms = timeout_ms;
    s.deadline_ms = now_ + timeout_ms;
    Effects fx;
    return store_->StartInvoke(s, now_, &fx);
  }

  static InvokeOutcome Ok(const std::string& payload = R"({"ok":1})") {
    InvokeOutcome o;
    o.code = InvokeCode::kOk;
    o.payload_json = payload;
    return o;
  }

  // Starts a remembered invoke under `key` on n1 (conn c1, edge A) and settles it OK.
  void SettleRemembered(const std::string& invoke, const std::string& key,
                        const std::string& payload) {
    InvokeStartResult s = Start(invoke, "n1", 1000, key, /*remember=*/true);
    ASSERT_EQ(s.kind, InvokeStartResult::Kind::kDispatched) << invoke;
    Effects fx;
    ASSERT_TRUE(
        store_->SettleInvoke(s.dispatch.invoke_id, "n1", "c1", "A", Ok(payload), now_, &fx));
  }

  NodeView Node(const std::string& node) {
    auto v = store_->GetNode(node);
    EXPECT_THAT(v, IsOk());
    return v.ok() ? *v : NodeView{};
  }

  static std::unique_ptr<RedisServer> redis_;
  std::unique_ptr<Store> store_;
  int64_t now_ = kStart;
};

std::unique_ptr<RedisServer> StoreContract::redis_;

TEST_P(StoreContract, RegisterSupersedesWithAHigherGeneration) {
  Attach("A");
  Effects fx1;
  const uint64_t g1 = Grant("c1", "n1", "A", &fx1);
  ASSERT_THAT(fx1.presence, SizeIs(1));
  EXPECT_EQ(fx1.presence[0].kind, PresenceKind::kConnected);
  EXPECT_EQ(fx1.presence[0].conn_id, "c1");
  EXPECT_EQ(fx1.presence[0].generation, g1);
  EXPECT_EQ(fx1.presence[0].time_ms, now_);
  EXPECT_THAT(fx1.to_edges, IsEmpty());

  now_ += 10;
  Effects fx2;
  const uint64_t g2 = Grant("c2", "n1", "A", &fx2);
  EXPECT_GT(g2, g1);
  ASSERT_THAT(fx2.presence, SizeIs(1));
  EXPECT_EQ(fx2.presence[0].kind, PresenceKind::kReplaced);
  EXPECT_EQ(fx2.presence[0].revision, fx1.presence[0].revision + 1);
  // The replaced connection had no invoke in flight: it is closed at once.
  ASSERT_THAT(fx2.to_edges, SizeIs(1));
  EXPECT_EQ(fx2.to_edges[0].kind, EdgeCommand::Kind::kClose);
  EXPECT_EQ(fx2.to_edges[0].conn_id, "c1");
  EXPECT_EQ(fx2.to_edges[0].reason, kReasonSuperseded);

  const NodeView v = Node("n1");
  EXPECT_TRUE(v.connected);
  EXPECT_EQ(v.conn_id, "c2");
  EXPECT_EQ(v.generation, g2);
  EXPECT_EQ(v.connected_at_ms, now_);
  EXPECT_EQ(v.client.display_name, "Node n1");
  EXPECT_THAT(v.client.caps, ElementsAre("system"));
  EXPECT_THAT(v.client.commands, ElementsAre("system.which", "system.run"));
  EXPECT_EQ(v.public_key, "pk-n1");
  EXPECT_EQ(v.remote_addr, "10.0.0.1:5000");
  EXPECT_TRUE(v.paired);

  // Refusals that are errors.
  Effects fx;
  EXPECT_THAT(store_->Register(Spec("c2", "n1"), now_, &fx),
              StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(store_->Register(Spec("c3", "n1", "A", "other-epoch"), now_, &fx),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(store_->Register(Spec("c3", "n1", "B"), now_, &fx),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(store_->Register(Spec("", "n1"), now_, &fx),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(fx.presence, IsEmpty());
}

// What a node declared is its current owner's declaration, node by node (the memory store
// shares equal lists between nodes: one node's change must not show on another).
TEST_P(StoreContract, AReconnectWithOtherCommandsReplacesThatNodesDeclarationOnly) {
  Attach("A");
  Grant("c1", "n1");
  Grant("c2", "n2");
  ConnectionSpec other = Spec("c3", "n1");
  other.client.caps = {};
  other.client.commands = {"system.run"};
  Effects fx;
  ASSERT_THAT(store_->Register(other, now_, &fx), IsOk());
  EXPECT_THAT(Node("n1").client.commands, ElementsAre("system.run"));
  EXPECT_THAT(Node("n1").client.caps, IsEmpty());
  EXPECT_THAT(Node("n2").client.commands, ElementsAre("system.which", "system.run"));
  EXPECT_THAT(Node("n2").client.caps, ElementsAre("system"));
  EXPECT_EQ(Start("i1", "n1").outcome.code, InvokeCode::kCommandNotAllowed);  // system.which
  EXPECT_EQ(Start("i2", "n2").kind, InvokeStartResult::Kind::kDispatched);
}

TEST_P(StoreContract, StaleCloseChangesNothingAndOwnerCloseDisconnects) {
  Attach("A");
  Grant("c1", "n1");
  const uint64_t g2 = Grant("c2", "n1");
  const uint64_t head = store_->HeadRevision();

  Effects stale;
  CloseResult r = store_->Close("A", "c1", now_, &stale);
  EXPECT_TRUE(r.known);
  EXPECT_FALSE(r.was_owner);
  EXPECT_EQ(r.node_id, "n1");
  EXPECT_THAT(stale.presence, IsEmpty());
  EXPECT_THAT(stale.settled, IsEmpty());
  EXPECT_EQ(store_->HeadRevision(), head);
  EXPECT_EQ(Node("n1").conn_id, "c2");

  // From the wrong edge, or twice: unknown.
  Effects none;
  EXPECT_FALSE(store_->Close("B", "c2", now_, &none).known);
  EXPECT_FALSE(store_->Close("A", "c1", now_, &none).known);
  EXPECT_THAT(none.presence, IsEmpty());

  now_ += 5;
  Effects fx;
  r = store_->Close("A", "c2", now_, &fx);
  EXPECT_TRUE(r.known);
  EXPECT_TRUE(r.was_owner);
  ASSERT_THAT(fx.presence, SizeIs(1));
  EXPECT_EQ(fx.presence[0].kind, PresenceKind::kDisconnected);
  EXPECT_EQ(fx.presence[0].reason, kReasonDisconnect);
  EXPECT_EQ(fx.presence[0].generation, g2);
  EXPECT_EQ(fx.presence[0].revision, head + 1);
  const NodeView v = Node("n1");
  EXPECT_FALSE(v.connected);
  EXPECT_EQ(v.last_seen_ms, now_);
  EXPECT_EQ(v.generation, g2);
}

// Issue 11 #6: a pending invoke does not keep its params (up to --max_params_bytes each) for its
// life: they go out with the dispatch; a join and the settlement carry none.
TEST_P(StoreContract, APendingInvokeKeepsNoParams) {
  Attach("A");
  Grant("c1", "n1");
  InvokeStartResult s = Start("i1", "n1", 1000, "k1");
  ASSERT_EQ(s.kind, InvokeStartResult::Kind::kDispatched);
  EXPECT_EQ(s.dispatch.params_json, R"({"bins":["ls"]})");
  InvokeStartResult joined = Start("i2", "n1", 1000, "k1");
  ASSERT_EQ(joined.kind, InvokeStartResult::Kind::kJoined);
  EXPECT_EQ(joined.dispatch.invoke_id, "i1");
  EXPECT_EQ(joined.dispatch.params_json, "");
  Effects fx;
  ASSERT_TRUE(store_->SettleInvoke("i1", "n1", "c1", "A", Ok(), now_, &fx));
  ASSERT_EQ(fx.settled.size(), 1u);
  EXPECT_EQ(fx.settled[0].dispatch.params_json, "");
  EXPECT_EQ(fx.settled[0].dispatch.command, "system.which");
}

// Issue 11 #6: the table does not keep every node that ever connected. A node disconnected for
// longer than node_retention_ms is forgotten (GetNode NOT_FOUND, not listed); its pairing is
// kept, so it registers again with its token; one that reconnects in time is never pruned.
TEST_P(StoreContract, NodesDisconnectedLongerThanTheRetentionAreForgottenButStayPaired) {
  Attach("A");
  Grant("c1", "n1");
  Grant("c2", "n2");
  const int64_t retention = StoreOptions{}.node_retention_ms;
  Effects fx;
  EXPECT_TRUE(store_->Close("A", "c1", now_, &fx).was_owner);
  EXPECT_TRUE(store_->Close("A", "c2", now_, &fx).was_owner);
  now_ += retention / 2;
  Grant("c3", "n2");  // n2 comes back in time
  EXPECT_TRUE(store_->RenewLease("A", "e1", now_).ok());
  now_ += retention / 2 + 1;
  EXPECT_TRUE(store_->RenewLease("A", "e1", now_).ok());
  store_->Expire(now_, &fx);
  EXPECT_EQ(store_->GetNode("n1").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store_->GetNode("n2")->connected);
  auto page = store_->ListNodes(NodeFilter{}, "", 100);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->nodes.size(), 1u);
  EXPECT_EQ(page->nodes[0].node_id, "n2");
  bool paired = false;
  for (const Device& d : store_->ListDevices()) paired |= d.node_id == "n1";
  EXPECT_TRUE(paired);
  Grant("c4", "n1");  // and it connects again
  EXPECT_TRUE(store_->GetNode("n1")->connected);
  EXPECT_EQ(store_->Dropped().nodes_pruned, 1);
}

// Issue 11 #6: remembered outcomes are bounded by bytes as well as by time: past
// idempotency_max_bytes the oldest are forgotten (a retry of one runs again), the newer replay.
TEST_P(StoreContract, RememberedOutcomesAreBoundedByBytes) {
  StoreOptions o = DefaultOptions();
  o.idempotency_max_bytes = 2500;
  Reset(o);
  Attach("A");
  Grant("c1", "n1");
  const std::string payload = "\"" + std::string(998, 'x') + "\"";  // 1,000 bytes
  for (const char* key : {"k1", "k2", "k3"})
    SettleRemembered(std::string("i-") + key, key, payload);
  EXPECT_EQ(Start("again-k1", "n1", 1000, "k1", true).kind,
            InvokeStartResult::Kind::kDispatched);  // forgotten: runs again
  for (const char* key : {"k2", "k3"}) {
    InvokeStartResult r = Start(std::string("again-") + key, "n1", 1000, key, true);
    EXPECT_EQ(r.kind, InvokeStartResult::Kind::kReplayed) << key;
    EXPECT_EQ(r.outcome.payload_json, payload);
  }
  EXPECT_EQ(store_->Dropped().outcomes_forgotten, 1);  // k1
}

// A key finished again (its first outcome forgotten, the call run again) is remembered anew:
// the byte bound forgets outcomes in the order they were remembered.
TEST_P(StoreContract, AnOutcomeRememberedAgainIsNotForgottenForItsEarlierCopy) {
  StoreOptions o = DefaultOptions();
  o.idempotency_max_bytes = 2500;
  Reset(o);
  Attach("A");
  Grant("c1", "n1");
  const std::string payload = "\"" + std::string(998, 'x') + "\"";  // 1,000 bytes
  // One millisecond apart: within one, the order of forgetting is not defined (Redis orders
  // equal expiries by key).
  for (auto [invoke, key] : std::vector<std::pair<std::string, std::string>>{
           {"i1", "k1"},
           {"i2", "k2"},
           {"i3", "k3"},     // k1 forgotten
           {"i4", "k1"},     // runs again, remembered anew; k2 forgotten
           {"i5", "k4"}}) {  // k3 forgotten: k1 (newer) stays
    SettleRemembered(invoke, key, payload);
    now_ += 1;
  }
  EXPECT_EQ(Start("again-k1", "n1", 1000, "k1", true).kind, InvokeStartResult::Kind::kReplayed);
  EXPECT_EQ(Start("again-k4", "n1", 1000, "k4", true).kind, InvokeStartResult::Kind::kReplayed);
  EXPECT_EQ(store_->Dropped().outcomes_forgotten, 3);
}

TEST_P(StoreContract, SettleOnlyFromTheDispatchingConnectionAndEdge) {
  Attach("A");
  Attach("B");
  const uint64_t g = Grant("c1", "n1");
  Grant("c9", "n2", "B");
  InvokeStartResult s = Start("i1", "n1");
  ASSERT_EQ(s.kind, InvokeStartResult::Kind::kDispatched);
  EXPECT_EQ(s.dispatch.conn_id, "c1");
  EXPECT_EQ(s.dispatch.edge_id, "A");
  EXPECT_EQ(s.dispatch.generation, g);
  EXPECT_EQ(s.dispatch.params_json, R"({"bins":["ls"]})");
  EXPECT_EQ(s.dispatch.deadline_ms, now_ + 1000);

  Effects fx;
  EXPECT_FALSE(store_->SettleInvoke("i1", "n1", "c9", "B", Ok(), now_, &fx));  // other conn
  EXPECT_FALSE(store_->SettleInvoke("i1", "n1", "c1", "B", Ok(), now_, &fx));  // other edge
  EXPECT_FALSE(store_->SettleInvoke("i1", "n2", "c1", "A", Ok(), now_, &fx));  // other node
  EXPECT_FALSE(store_->SettleInvoke("i2", "n1", "c1", "A", Ok(), now_, &fx));  // unknown id
  EXPECT_THAT(fx.settled, IsEmpty());

  now_ += 7;
  EXPECT_TRUE(store_->SettleInvoke("i1", "n1", "c1", "A", Ok(R"({"x":2})"), now_, &fx));
  ASSERT_THAT(fx.settled, SizeIs(1));
  EXPECT_EQ(fx.settled[0].dispatch.invoke_id, "i1");
  EXPECT_EQ(fx.settled[0].dispatch.command, "system.which");
  EXPECT_EQ(fx.settled[0].outcome.code, InvokeCode::kOk);
  EXPECT_EQ(fx.settled[0].outcome.payload_json, R"({"x":2})");
  EXPECT_EQ(fx.settled[0].outcome.conn_id, "c1");
  EXPECT_EQ(fx.settled[0].outcome.generation, g);
  EXPECT_EQ(Node("n1").last_seen_ms, now_);
  // Duplicate: ignored.
  EXPECT_FALSE(store_->SettleInvoke("i1", "n1", "c1", "A", Ok(), now_, &fx));
  EXPECT_THAT(fx.settled, SizeIs(1));
}

TEST_P(StoreContract, InvokeStartRefusalsJoinsAndReplays) {
  Attach("A");
  EXPECT_EQ(Start("i0", "n1").outcome.code, InvokeCode::kNotConnected);
  Grant("c1", "n1");
  InvokeStart bad;
  bad.invoke_id = "i9";
  bad.node_id = "n1";
  bad.command = "system.reboot";
  bad.idempotency_key = "k9";
  Effects fx;
  InvokeStartResult r = store_->StartInvoke(bad, now_, &fx);
  EXPECT_EQ(r.kind, InvokeStartResult::Kind::kFailed);
  EXPECT_EQ(r.outcome.code, InvokeCode::kCommandNotAllowed);

  ASSERT_EQ(Start("i1", "n1", 1000, "k", true).kind, InvokeStartResult::Kind::kDispatched);
  InvokeStartResult joined = Start("i2", "n1", 1000, "k", true);
  EXPECT_EQ(joined.kind, InvokeStartResult::Kind::kJoined);
  EXPECT_EQ(joined.dispatch.invoke_id, "i1");
  EXPECT_EQ(joined.dispatch.timeout_ms, 1000);
  ASSERT_TRUE(store_->SettleInvoke("i1", "n1", "c1", "A", Ok("{}"), now_, &fx));
  InvokeStartResult replay = Start("i3", "n1", 1000, "k", true);
  EXPECT_EQ(replay.kind, InvokeStartResult::Kind::kReplayed);
  EXPECT_EQ(replay.dispatch.invoke_id, "i1");
  EXPECT_EQ(replay.outcome.payload_json, "{}");
  EXPECT_EQ(replay.outcome.conn_id, "c1");
  // After the idempotency window the key starts afresh.
  now_ += DefaultOptions().idempotency_window_ms;
  Attach("A");  // keep the lease
  store_->Expire(now_, &fx);
  EXPECT_EQ(Start("i4", "n1", 1000, "k", true).kind, InvokeStartResult::Kind::kDispatched);
}

TEST_P(StoreContract, FailAndCancelTellTheEdge) {
  Attach("A");
  Grant("c1", "n1");
  ASSERT_EQ(Start("i1", "n1").kind, InvokeStartResult::Kind::kDispatched);
  ASSERT_EQ(Start("i2", "n1").kind, InvokeStartResult::Kind::kDispatched);
  Effects fx;
  EXPECT_FALSE(store_->FailInvoke("i1", "c2", "", Failure(InvokeCode::kCancelled, "x"), now_, &fx));
  EXPECT_TRUE(store_->FailInvoke("i1", "", "", Failure(InvokeCode::kCancelled, "x"), now_, &fx));
  ASSERT_THAT(fx.to_edges, SizeIs(1));
  EXPECT_EQ(fx.to_edges[0].kind, EdgeCommand::Kind::kCancel);
  EXPECT_EQ(fx.to_edges[0].invoke_id, "i1");
  EXPECT_TRUE(
      store_->FailInvoke("i2", "c1", "A", Failure(InvokeCode::kDisconnected, "y"), now_, &fx));
  EXPECT_THAT(fx.to_edges, SizeIs(1));  // only a cancel is told
  ASSERT_THAT(fx.settled, SizeIs(2));
  EXPECT_EQ(fx.settled[1].outcome.code, InvokeCode::kDisconnected);
  EXPECT_FALSE(store_->FailInvoke("i2", "", "", Failure(InvokeCode::kCancelled, "x"), now_, &fx));
}

TEST_P(StoreContract, InvokeTimesOutThroughExpire) {
  Attach("A");
  Grant("c1", "n1");
  ASSERT_EQ(Start("i1", "n1", 100).kind, InvokeStartResult::Kind::kDispatched);
  Effects fx;
  store_->Expire(now_ + 99, &fx);
  EXPECT_THAT(fx.settled, IsEmpty());
  store_->Expire(now_ + 100, &fx);
  ASSERT_THAT(fx.settled, SizeIs(1));
  EXPECT_EQ(fx.settled[0].outcome.code, InvokeCode::kTimeout);
  ASSERT_THAT(fx.to_edges, SizeIs(1));
  EXPECT_EQ(fx.to_edges[0].kind, EdgeCommand::Kind::kCancel);
  EXPECT_EQ(fx.to_edges[0].conn_id, "c1");
  EXPECT_FALSE(store_->SettleInvoke("i1", "n1", "c1", "A", Ok(), now_, &fx));  // late
}

TEST_P(StoreContract, SupersededConnectionFinishesItsInvokesThenRetires) {
  Attach("A");
  Grant("c1", "n1");
  ASSERT_EQ(Start("i1", "n1", 60'000).kind, InvokeStartResult::Kind::kDispatched);
  Effects fx;
  Grant("c2", "n1", "A", &fx);
  ASSERT_THAT(fx.to_edges, SizeIs(1));
  EXPECT_EQ(fx.to_edges[0].kind, EdgeCommand::Kind::kSuperseded);
  EXPECT_EQ(fx.to_edges[0].grace_ms, DefaultOptions().superseded_grace_ms);
  // Its own invoke still settles from it; then it is told to close.
  Effects settle;
  EXPECT_TRUE(store_->SettleInvoke("i1", "n1", "c1", "A", Ok(), now_, &settle));
  ASSERT_THAT(settle.to_edges, SizeIs(1));
  EXPECT_EQ(settle.to_edges[0].kind, EdgeCommand::Kind::kClose);
  EXPECT_EQ(settle.to_edges[0].reason, kReasonSuperseded);

  // Grace runs out with an invoke still pending: closed by Expire.
  ASSERT_EQ(Start("i2", "n1", 60'000).kind, InvokeStartResult::Kind::kDispatched);  // on c2
  Effects fx3;
  Grant("c3", "n1", "A", &fx3);
  Effects expire;
  store_->Expire(now_ + DefaultOptions().superseded_grace_ms, &expire);
  ASSERT_THAT(expire.to_edges, SizeIs(1));
  EXPECT_EQ(expire.to_edges[0].conn_id, "c2");
  EXPECT_EQ(expire.to_edges[0].reason, kReasonSuperseded);
  EXPECT_THAT(expire.presence, IsEmpty());
}

TEST_P(StoreContract, LeaseExpiryClosesWithEdgeLostUnlessANewerOwnerExists) {
  Attach("A");
  Attach("B");
  Grant("c1", "n1", "A");
  Grant("c3", "n2", "A");
  ASSERT_EQ(Start("i1", "n2", 60'000).kind, InvokeStartResult::Kind::kDispatched);
  Grant("c2", "n1", "B");  // n1 moved to B
  now_ += 9'000;
  ASSERT_THAT(store_->RenewLease("B", "e1", now_), IsOk());
  Effects fx;
  store_->Expire(now_ + 1'000, &fx);  // A's lease (10 s from kStart) lapsed
  ASSERT_THAT(fx.presence, SizeIs(1));
  EXPECT_EQ(fx.presence[0].node_id, "n2");
  EXPECT_EQ(fx.presence[0].reason, kReasonEdgeLost);
  ASSERT_THAT(fx.settled, SizeIs(1));
  EXPECT_EQ(fx.settled[0].outcome.code, InvokeCode::kDisconnected);
  int edge_lost = 0;
  for (const auto& c : fx.to_edges) {
    edge_lost += c.kind == EdgeCommand::Kind::kClose && c.reason == kReasonEdgeLost;
  }
  EXPECT_EQ(edge_lost, 2);  // c3, and c1 (superseded, but its socket may still be open)
  EXPECT_EQ(Node("n1").conn_id, "c2");
  EXPECT_FALSE(Node("n2").connected);
  EXPECT_THAT(store_->RenewLease("A", "e1", now_), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST_P(StoreContract, NewEpochClosesTheOldProcessesConnections) {
  Attach("A", "e1");
  Grant("c1", "n1");
  Effects fx;
  ASSERT_THAT(store_->AttachEdge("A", "e2", now_, &fx), IsOk());
  ASSERT_THAT(fx.presence, SizeIs(1));
  EXPECT_EQ(fx.presence[0].kind, PresenceKind::kDisconnected);
  EXPECT_EQ(fx.presence[0].reason, kReasonEdgeLost);
  EXPECT_THAT(store_->RenewLease("A", "e1", now_), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(store_->RenewLease("A", "e2", now_), IsOk());
  EXPECT_THAT(store_->Register(Spec("c2", "n1", "A", "e1"), now_, &fx),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(store_->AttachEdge("", "e2", now_, &fx),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // Same epoch again: a renewal, nothing closes.
  auto granted = store_->Register(Spec("c3", "n1", "A", "e2"), now_, &fx);
  ASSERT_THAT(granted, IsOk());
  EXPECT_TRUE(granted->granted);
  Effects again;
  ASSERT_THAT(store_->AttachEdge("A", "e2", now_, &again), IsOk());
  EXPECT_THAT(again.presence, IsEmpty());
}

TEST_P(StoreContract, DrainClosesWithEdgeDrainAndDropsTheLease) {
  Attach("A");
  Grant("c1", "n1");
  Effects fx;
  EXPECT_THAT(store_->DrainEdge("A", "wrong", now_, &fx),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_THAT(store_->DrainEdge("A", "e1", now_, &fx), IsOk());
  ASSERT_THAT(fx.presence, SizeIs(1));
  EXPECT_EQ(fx.presence[0].reason, kReasonEdgeDrain);
  EXPECT_THAT(store_->RenewLease("A", "e1", now_), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST_P(StoreContract, ResyncKeepsClosesAndRaisesTheGenerationCounter) {
  Attach("A");
  const uint64_t g1 = Grant("c1", "n1");
  Grant("c2", "n2");
  Grant("c3", "n3");
  Grant("c4", "n3");  // c3 superseded (and told to close)

  auto live = [](const std::string& conn, const std::string& node, uint64_t gen,
                 bool superseded = false) {
    LiveConnection l;
    l.spec = Spec(conn, node);
    l.generation = gen;
    l.superseded = superseded;
    return l;
  };
  const uint64_t reported = g1 + 1'000'000;
  Effects fx;
  // c1 kept; c2 not reported: closed; c3 known and superseded: told again; c4 kept;
  // c7 unknown with a high generation: installed; c8 reported superseded: closed;
  // c9 unknown with generation 0 on an unpaired node: closed (revoked).
  auto r =
      store_->Resync("A", "e1",
                     {live("c1", "n1", g1), live("c3", "n3", 0), live("c4", "n3", 0),
                      live("c7", "n7", reported), live("c8", "n8", 5, true), live("c9", "n9", 0)},
                     now_, &fx);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->kept, 4);    // c1, c3, c4, c7
  EXPECT_EQ(r->closed, 3);  // c2, c8, c9
  EXPECT_FALSE(Node("n2").connected);
  EXPECT_EQ(Node("n7").conn_id, "c7");
  EXPECT_EQ(Node("n7").generation, reported);
  EXPECT_TRUE(Node("n7").paired);
  int superseded_closes = 0, revoked_closes = 0;
  for (const auto& c : fx.to_edges) {
    superseded_closes += c.reason == kReasonSuperseded && c.kind == EdgeCommand::Kind::kClose;
    revoked_closes += c.reason == kReasonRevoked;
  }
  EXPECT_EQ(superseded_closes, 2);  // c3 again, c8
  EXPECT_EQ(revoked_closes, 1);     // c9

  // A connection older than the owner is closed, not installed.
  Effects older;
  auto r2 = store_->Resync("A", "e1",
                           {live("c1", "n1", g1), live("c4", "n3", 0), live("c7", "n7", reported),
                            live("c5", "n7", reported - 1)},
                           now_, &older);
  ASSERT_THAT(r2, IsOk());
  EXPECT_EQ(r2->kept, 3);    // c1, c4, c7
  EXPECT_EQ(r2->closed, 2);  // c3 (not reported), c5 (older than n7's owner)
  EXPECT_EQ(Node("n7").conn_id, "c7");

  EXPECT_GT(Grant("c10", "n10"), reported);
  EXPECT_THAT(store_->Resync("A", "e2", {}, now_, &fx),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST_P(StoreContract, PairingRequestApproveRejectRevoke) {
  StoreOptions o = DefaultOptions();
  o.auto_approve_all = false;
  Reset(o);
  Attach("A");
  Effects fx;
  auto r = store_->Register(Spec("c1", "n1"), now_, &fx);
  ASSERT_THAT(r, IsOk());
  EXPECT_FALSE(r->granted);
  EXPECT_EQ(r->error_code, "NOT_PAIRED");
  EXPECT_EQ(r->details_code, "PAIRING_REQUIRED");
  ASSERT_FALSE(r->pairing_request_id.empty());
  auto again = store_->Register(Spec("c1b", "n1"), now_ + 1, &fx);
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(again->pairing_request_id, r->pairing_request_id);
  auto other = store_->Register(Spec("c2", "n2"), now_, &fx);
  ASSERT_THAT(other, IsOk());
  EXPECT_THAT(fx.presence, IsEmpty());

  auto pending = store_->ListPairingRequests();
  ASSERT_THAT(pending, SizeIs(2));
  for (const PairingRequest& p : pending) {
    if (p.node_id != "n1") continue;
    EXPECT_EQ(p.request_id, r->pairing_request_id);
    EXPECT_EQ(p.public_key, "pk-n1");
    EXPECT_EQ(p.display_name, "Node n1");
    EXPECT_EQ(p.platform, "linux");
    EXPECT_THAT(p.commands, ElementsAre("system.which", "system.run"));
    EXPECT_EQ(p.created_at_ms, now_);
  }
  EXPECT_LT(pending[0].request_id, pending[1].request_id);

  EXPECT_THAT(store_->ApprovePairing("nope", "op", now_), StatusIs(absl::StatusCode::kNotFound));
  auto device = store_->ApprovePairing(r->pairing_request_id, "op", now_);
  ASSERT_THAT(device, IsOk());
  EXPECT_EQ(device->node_id, "n1");
  EXPECT_EQ(device->public_key, "pk-n1");
  EXPECT_EQ(device->approved_by, "op");
  EXPECT_THAT(store_->RejectPairing(other->pairing_request_id), IsOk());
  EXPECT_THAT(store_->RejectPairing(other->pairing_request_id),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store_->ListPairingRequests(), IsEmpty());
  ASSERT_THAT(store_->ListDevices(), SizeIs(1));
  EXPECT_EQ(store_->ListDevices()[0].approved_at_ms, now_);

  const uint64_t g = Grant("c3", "n1");
  EXPECT_GT(g, 0u);
  Effects revoke;
  auto n = store_->RevokeDevice("n1", now_, &revoke);
  ASSERT_THAT(n, IsOk());
  EXPECT_EQ(*n, 1);
  ASSERT_THAT(revoke.presence, SizeIs(1));
  EXPECT_EQ(revoke.presence[0].reason, kReasonRevoked);
  ASSERT_THAT(revoke.to_edges, SizeIs(1));
  EXPECT_EQ(revoke.to_edges[0].reason, kReasonRevoked);
  EXPECT_THAT(store_->ListDevices(), IsEmpty());
  EXPECT_THAT(store_->RevokeDevice("n1", now_, &revoke), StatusIs(absl::StatusCode::kNotFound));
  // A revoked device is not resurrected by an edge's report.
  Effects resync;
  LiveConnection l;
  l.spec = Spec("c3", "n1");
  l.generation = g;
  auto rr = store_->Resync("A", "e1", {l}, now_, &resync);
  ASSERT_THAT(rr, IsOk());
  EXPECT_EQ(rr->closed, 1);
  EXPECT_FALSE(Node("n1").connected);
}

// Issue 11 #6: revocations are remembered (a resync must not pair a revoked key again) but
// bounded. A forgotten revocation still blocks: no connection granted before it is re-paired
// by a resync, while one granted after it (another node's, in a later life) still is.
TEST_P(StoreContract, RevocationsAreBoundedAndAForgottenOneStillBlocksRepairing) {
  StoreOptions o = DefaultOptions();
  o.max_revocations = 2;
  Reset(o);
  Attach("A");
  const uint64_t g1 = Grant("c1", "n1");
  const uint64_t g2 = Grant("c2", "n2");
  const uint64_t g3 = Grant("c3", "n3");
  Effects fx;
  for (const char* n : {"n1", "n2", "n3"}) ASSERT_THAT(store_->RevokeDevice(n, now_, &fx), IsOk());
  EXPECT_EQ(store_->Dropped().revocations_forgotten, 1);  // n1's
  auto live = [](const std::string& conn, const std::string& node, uint64_t gen) {
    LiveConnection l;
    l.spec = Spec(conn, node);
    l.generation = gen;
    return l;
  };
  Effects resync;
  auto r = store_->Resync("A", "e1",
                          {live("c1", "n1", g1), live("c2", "n2", g2), live("c3", "n3", g3),
                           live("c9", "n9", g3 + 1'000)},
                          now_, &resync);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->closed, 3);  // n1 (forgotten, below the floor), n2 and n3 (remembered)
  EXPECT_EQ(r->kept, 1);    // n9: unknown, granted later: paired from the report
  for (const char* n : {"n1", "n2", "n3"}) EXPECT_FALSE(Node(n).connected) << n;
  EXPECT_TRUE(Node("n9").connected);
}

TEST_P(StoreContract, PairingRequestsAreBoundedAndExpire) {
  StoreOptions o = DefaultOptions();
  o.auto_approve_all = false;
  o.max_pairing_requests = 2;
  o.pairing_request_ttl_ms = 1'000;
  Reset(o);
  Attach("A");
  Effects fx;
  ASSERT_THAT(store_->Register(Spec("c1", "n1"), now_, &fx), IsOk());
  ASSERT_THAT(store_->Register(Spec("c2", "n2"), now_, &fx), IsOk());
  auto full = store_->Register(Spec("c3", "n3"), now_, &fx);
  ASSERT_THAT(full, IsOk());
  EXPECT_EQ(full->error_code, "UNAVAILABLE");
  EXPECT_EQ(store_->Dropped().pairing_refused, 1);
  store_->Expire(now_ + 1'000, &fx);
  EXPECT_THAT(store_->ListPairingRequests(), IsEmpty());
}

TEST_P(StoreContract, DeviceTokenAcceptedOnReconnectAndRefusedWhenWrong) {
  Attach("A");
  Effects fx;
  auto first = store_->Register(Spec("c1", "n1"), now_, &fx);  // shared token, auto-approved
  ASSERT_THAT(first, IsOk());
  ASSERT_TRUE(first->granted);
  const std::string token = first->device_token;
  ASSERT_FALSE(token.empty());

  ConnectionSpec s = Spec("c2", "n1");
  s.shared_token_ok = false;
  s.device_token = token;
  auto ok = store_->Register(s, now_, &fx);
  ASSERT_THAT(ok, IsOk());
  EXPECT_TRUE(ok->granted);
  EXPECT_EQ(ok->device_token, token);

  for (const std::string& wrong : {std::string("not-the-token"), std::string()}) {
    ConnectionSpec bad = Spec("c3", "n1");
    bad.shared_token_ok = false;
    bad.device_token = wrong;
    auto refused = store_->Register(bad, now_, &fx);
    ASSERT_THAT(refused, IsOk());
    EXPECT_FALSE(refused->granted);
    EXPECT_EQ(refused->error_code, "INVALID_REQUEST");
    EXPECT_EQ(refused->details_code, "AUTH_DEVICE_TOKEN_MISMATCH");
  }
  // An unknown device with a token: refused too.
  ConnectionSpec stranger = Spec("c4", "n9");
  stranger.shared_token_ok = false;
  stranger.device_token = token;
  auto refused = store_->Register(stranger, now_, &fx);
  ASSERT_THAT(refused, IsOk());
  EXPECT_EQ(refused->details_code, "AUTH_DEVICE_TOKEN_MISMATCH");
  EXPECT_EQ(Node("n1").conn_id, "c2");
}

TEST_P(StoreContract, PresenceReadsAndOutOfRange) {
  StoreOptions o = DefaultOptions();
  o.presence_history = 16;
  Reset(o);
  Attach("A");
  const uint64_t head = store_->HeadRevision();
  Grant("c1", "n1");
  Grant("c2", "n1");
  Effects fx;
  store_->Close("A", "c2", now_, &fx);
  EXPECT_EQ(store_->HeadRevision(), head + 3);

  auto events = store_->ReadPresence(head, 10);
  ASSERT_THAT(events, IsOk());
  ASSERT_THAT(*events, SizeIs(3));
  EXPECT_EQ((*events)[0].revision, head + 1);
  EXPECT_EQ((*events)[0].kind, PresenceKind::kConnected);
  EXPECT_EQ((*events)[1].kind, PresenceKind::kReplaced);
  EXPECT_EQ((*events)[2].kind, PresenceKind::kDisconnected);
  EXPECT_EQ((*events)[2].reason, kReasonDisconnect);
  EXPECT_EQ((*events)[2].conn_id, "c2");
  EXPECT_EQ((*events)[2].edge_id, "A");
  EXPECT_THAT(*store_->ReadPresence(head + 1, 1),
              ElementsAre(Field(&PresenceEvent::revision, head + 2)));
  EXPECT_THAT(*store_->ReadPresence(head + 3, 10), IsEmpty());
  EXPECT_THAT(store_->ReadPresence(head + 4, 10), StatusIs(absl::StatusCode::kOutOfRange));

  PresenceSnapshot snap = *store_->GetPresence();
  EXPECT_THAT(snap.nodes, IsEmpty());
  EXPECT_EQ(snap.revision, head + 3);
  Grant("c3", "n2");
  snap = *store_->GetPresence();
  ASSERT_THAT(snap.nodes, SizeIs(1));
  EXPECT_EQ(snap.nodes[0].node_id, "n2");

  // More events than the history keeps: the oldest are gone.
  for (int i = 0; i < 20; ++i) Grant("x" + std::to_string(i), "n3");
  EXPECT_THAT(store_->ReadPresence(head, 10), StatusIs(absl::StatusCode::kOutOfRange));
  const uint64_t now_head = store_->HeadRevision();
  auto tail = store_->ReadPresence(now_head - 16, 100);
  ASSERT_THAT(tail, IsOk());
  EXPECT_THAT(*tail, SizeIs(16));
  EXPECT_THAT(store_->ReadPresence(now_head - 17, 100), StatusIs(absl::StatusCode::kOutOfRange));
}

TEST_P(StoreContract, ListNodesPagesAndFilters) {
  StoreOptions o = DefaultOptions();
  o.auto_approve_all = false;
  Reset(o);
  Attach("A");
  Effects fx;
  for (int i = 1; i <= 5; ++i) {
    const std::string n = "n" + std::to_string(i);
    auto req = store_->Register(Spec("p" + std::to_string(i), n), now_, &fx);
    ASSERT_THAT(req, IsOk());
    ASSERT_THAT(store_->ApprovePairing(req->pairing_request_id, "op", now_), IsOk());
    Grant("c" + std::to_string(i), n);
  }
  store_->Close("A", "c2", now_, &fx);
  store_->Close("A", "c4", now_, &fx);
  ASSERT_THAT(store_->RevokeDevice("n5", now_, &fx), IsOk());  // disconnected and unpaired

  NodeFilter all;
  NodePage p1 = *store_->ListNodes(all, "", 2);
  ASSERT_THAT(p1.nodes, SizeIs(2));
  EXPECT_EQ(p1.nodes[0].node_id, "n1");
  EXPECT_EQ(p1.next_page_token, "n2");
  NodePage p2 = *store_->ListNodes(all, p1.next_page_token, 2);
  ASSERT_THAT(p2.nodes, SizeIs(2));
  EXPECT_EQ(p2.nodes[0].node_id, "n3");
  NodePage p3 = *store_->ListNodes(all, p2.next_page_token, 2);
  ASSERT_THAT(p3.nodes, SizeIs(1));
  EXPECT_EQ(p3.next_page_token, "");
  EXPECT_THAT(store_->ListNodes(all, "", 5)->next_page_token, "");

  NodeFilter connected;
  connected.connected = NodeFilter::Connected::kOnly;
  NodePage c = *store_->ListNodes(connected, "", 10);
  ASSERT_THAT(c.nodes, SizeIs(2));
  EXPECT_EQ(c.nodes[0].node_id, "n1");
  EXPECT_EQ(c.nodes[1].node_id, "n3");
  NodePage c1 = *store_->ListNodes(connected, "", 1);
  EXPECT_EQ(c1.next_page_token, "n1");
  EXPECT_THAT(store_->ListNodes(connected, c1.next_page_token, 1)->nodes,
              ElementsAre(Field(&NodeView::node_id, "n3")));

  NodeFilter gone;
  gone.connected = NodeFilter::Connected::kNot;
  gone.paired = NodeFilter::Paired::kOnly;
  NodePage g = *store_->ListNodes(gone, "", 10);
  ASSERT_THAT(g.nodes, SizeIs(2));  // n2, n4
  NodeFilter unpaired;
  unpaired.paired = NodeFilter::Paired::kNot;
  EXPECT_THAT(store_->ListNodes(unpaired, "", 10)->nodes,
              ElementsAre(Field(&NodeView::node_id, "n5")));
  EXPECT_THAT(store_->GetNode("nobody"), StatusIs(absl::StatusCode::kNotFound));
}

TEST_P(StoreContract, TouchMovesLastSeenOfTheOwnerOnly) {
  Attach("A");
  Grant("c1", "n1");
  Grant("c2", "n1");
  store_->Touch("c1", now_ + 50);  // superseded: no effect
  EXPECT_EQ(Node("n1").last_seen_ms, now_);
  store_->Touch("c2", now_ + 60);
  EXPECT_EQ(Node("n1").last_seen_ms, now_ + 60);
}

INSTANTIATE_TEST_SUITE_P(Stores, StoreContract, ::testing::Values("memory", "redis"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace tether::registry
