// What only the Redis store has: durability across store instances, fail-fast when Redis is
// unreachable or silent, reconnects, the generation counter repaired after a FLUSHALL, tokens
// stored hashed, script reloads, and the store URL.
#include "registry_service/store/redis_store.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "registry_service/store/redis_client.h"
#include "tests/testing/pki.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/status_matchers.h"

namespace tether::registry {
namespace {

using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::HasSubstr;
using ::tether::testing::IsOk;
using ::tether::testing::RedisServer;
using ::tether::testing::StatusIs;

constexpr int64_t kNow = 1'700'000'000'000;

ConnectionSpec Spec(const std::string& conn, const std::string& node,
                    const std::string& epoch = "e1") {
  ConnectionSpec s;
  s.conn_id = conn;
  s.node_id = node;
  s.edge_id = "A";
  s.edge_epoch = epoch;
  s.public_key = "pk-" + node;
  s.shared_token_ok = true;
  s.client.commands = {"system.which"};
  return s;
}

class RedisStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = RedisServer::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
  }

  // `command_timeout` zero: the test server's default.
  std::unique_ptr<RedisStore> NewStore(const StoreOptions& options,
                                       absl::Duration command_timeout = absl::ZeroDuration(),
                                       int connections = 8) {
    RedisStoreOptions r;
    r.client = server_->ClientOptions();
    r.connections = connections;
    if (command_timeout > absl::ZeroDuration()) r.client.command_timeout = command_timeout;
    r.key_prefix = "t:";
    auto store = std::make_unique<RedisStore>(options, r);
    EXPECT_THAT(store->Connect(), IsOk());
    return store;
  }

  // Pairs `node` through a pairing request and its approval.
  void Pair(Store& store, const std::string& node) {
    Effects fx;
    auto r = store.Register(Spec("pair-" + node, node), kNow, &fx);
    ASSERT_THAT(r, IsOk());
    ASSERT_EQ(r->error_code, "NOT_PAIRED");
    ASSERT_THAT(store.ApprovePairing(r->pairing_request_id, "op", kNow), IsOk());
  }

  std::unique_ptr<RedisServer> server_;
};

TEST_F(RedisStoreTest, DevicesTokensRevocationsAndCountersSurviveANewStore) {
  StoreOptions o;  // no auto-approval: pairing is explicit
  std::string token;
  uint64_t generation = 0;
  uint64_t head = 0;
  {
    auto store = NewStore(o);
    Effects fx;
    ASSERT_THAT(store->AttachEdge("A", "e1", kNow, &fx), IsOk());
    Pair(*store, "n1");
    Pair(*store, "n2");
    auto r = store->Register(Spec("c1", "n1"), kNow, &fx);
    ASSERT_THAT(r, IsOk());
    ASSERT_TRUE(r->granted);
    token = r->device_token;
    generation = r->generation;
    ASSERT_THAT(store->RevokeDevice("n2", kNow, &fx), IsOk());
    head = store->HeadRevision();
    EXPECT_GT(head, 0u);
  }
  auto store = NewStore(o);
  EXPECT_THAT(store->ListDevices(), ElementsAre(Field(&Device::node_id, "n1")));
  EXPECT_EQ(store->HeadRevision(), head);
  EXPECT_TRUE(store->GetNode("n1")->connected);  // ownership is in Redis too

  Effects fx;
  ConnectionSpec s = Spec("c2", "n1");
  s.shared_token_ok = false;
  s.device_token = token;
  auto r = store->Register(s, kNow, &fx);
  ASSERT_THAT(r, IsOk());
  EXPECT_TRUE(r->granted) << r->details_code;
  EXPECT_GT(r->generation, generation);
  EXPECT_GT(store->HeadRevision(), head);

  // The revocation held: an edge's report does not bring n2 back, and it must pair again.
  LiveConnection live;
  live.spec = Spec("c9", "n2");
  live.generation = 3;
  auto resync = store->Resync("A", "e1", {live}, kNow, &fx);
  ASSERT_THAT(resync, IsOk());
  EXPECT_EQ(resync->closed, 3);  // c9 (revoked); c1 and c2 (held but not reported)
  auto again = store->Register(Spec("c10", "n2"), kNow, &fx);
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(again->error_code, "NOT_PAIRED");
}

TEST_F(RedisStoreTest, DeviceTokensAreStoredOnlyAsHashes) {
  StoreOptions o;
  o.auto_approve_all = true;
  auto store = NewStore(o);
  Effects fx;
  ASSERT_THAT(store->AttachEdge("A", "e1", kNow, &fx), IsOk());
  auto r = store->Register(Spec("c1", "n1"), kNow, &fx);
  ASSERT_THAT(r, IsOk());
  ASSERT_FALSE(r->device_token.empty());
  auto device = server_->Command({"HGETALL", "t:{n1}:device"});
  ASSERT_THAT(device, IsOk());
  std::string hash;
  for (size_t i = 0; i + 1 < device->elements.size(); i += 2) {
    EXPECT_THAT(device->elements[i + 1].str, ::testing::Not(HasSubstr(r->device_token)));
    if (device->elements[i].str == "token_hash") hash = device->elements[i + 1].str;
  }
  EXPECT_EQ(hash.size(), 64u);
  EXPECT_EQ(hash.find_first_not_of("0123456789abcdef"), std::string::npos);
}

TEST_F(RedisStoreTest, UnreachableRedisIsUnavailableWithinASecond) {
  StoreOptions o;
  o.auto_approve_all = true;
  auto store = NewStore(o);
  Effects fx;
  ASSERT_THAT(store->AttachEdge("A", "e1", kNow, &fx), IsOk());
  server_->Kill();
  for (int attempt = 0; attempt < 2; ++attempt) {  // the dead connection, then a reconnect
    const absl::Time start = absl::Now();
    EXPECT_THAT(store->Register(Spec("c1", "n1"), kNow, &fx),
                StatusIs(absl::StatusCode::kUnavailable));
    EXPECT_LT(absl::Now() - start, absl::Milliseconds(1500));
  }
  const absl::Time start = absl::Now();
  EXPECT_FALSE(store->Close("A", "c1", kNow, &fx).known);  // logged, nothing changed
  EXPECT_THAT(store->RenewLease("A", "e1", kNow), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(store->ReadPresence(0, 10), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(1500));
}

TEST_F(RedisStoreTest, SilentServerTimesOutWithUnavailableAndCallersDoNotQueueUp) {
  // Accepts connections (the kernel does) and never answers.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 16), 0);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  RedisStoreOptions r;
  r.client.address.host = "127.0.0.1";
  r.client.address.port = ntohs(addr.sin_port);
  RedisStore store(StoreOptions{}, r);
  const absl::Time start = absl::Now();
  EXPECT_THAT(store.Connect(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(1500));
  // Four callers at once, after the backoff: one waits for the timeout, the others at most
  // for that one, not for four timeouts in a row.
  absl::SleepFor(absl::Milliseconds(600));
  std::vector<std::thread> threads;
  std::vector<absl::Duration> took(4);
  std::vector<absl::StatusCode> codes(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const absl::Time begin = absl::Now();
      codes[t] = store.RenewLease("A", "e1", kNow).code();
      took[t] = absl::Now() - begin;
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) {
    EXPECT_EQ(codes[t], absl::StatusCode::kUnavailable);
    EXPECT_LT(took[t], absl::Milliseconds(1600)) << t;
  }
  close(fd);
}

TEST_F(RedisStoreTest, NoServerAtAllIsUnavailableAtConnect) {
  RedisStoreOptions r;
  r.client.address.host = "127.0.0.1";
  r.client.address.port = server_->port();
  server_->Kill();
  RedisStore store(StoreOptions{}, r);
  EXPECT_THAT(store.Connect(), StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(RedisStoreTest, ReconnectsAfterTheConnectionWasDropped) {
  StoreOptions o;
  o.auto_approve_all = true;
  auto store = NewStore(o);
  Effects fx;
  ASSERT_THAT(store->AttachEdge("A", "e1", kNow, &fx), IsOk());
  ASSERT_THAT(server_->Command({"CLIENT", "KILL", "TYPE", "normal"}), IsOk());
  // The first call may find the dead connection; a later one reconnects.
  (void)store->RenewLease("A", "e1", kNow);
  EXPECT_THAT(store->RenewLease("A", "e1", kNow), IsOk());
}

// A script whose work grows with the fleet (an edge's resync) gets a timeout of its own: the
// fail-fast one would fail it every time and the edge would resync again and again.
TEST_F(RedisStoreTest, AScriptMayBeGivenItsOwnTimeout) {
  RedisClientOptions o = server_->ClientOptions();
  o.command_timeout = absl::Milliseconds(300);
  o.reconnect_backoff = absl::ZeroDuration();
  RedisClient client(o);
  // Busy for about 600 ms of the server's own clock.
  const int slow = client.AddScript(R"lua(
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat
  t = redis.call('TIME')
until t[1] * 1000000 + t[2] - start > 600000
return 1
)lua");
  ASSERT_THAT(client.Connect(), IsOk());
  EXPECT_FALSE(client.Eval(slow, {}).ok());  // over the 300 ms fail-fast timeout
  absl::SleepFor(absl::Milliseconds(700));   // let the first run end inside Redis
  auto r = client.Eval(slow, {}, absl::Seconds(10));
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->AsInt(), 1);
  // And the fail-fast timeout applies again afterwards.
  EXPECT_FALSE(client.Eval(slow, {}).ok());
}

TEST_F(RedisStoreTest, ScriptsAreReloadedAfterTheServerForgotThem) {
  StoreOptions o;
  o.auto_approve_all = true;
  auto store = NewStore(o);
  ASSERT_THAT(server_->Command({"SCRIPT", "FLUSH"}), IsOk());
  Effects fx;
  EXPECT_THAT(store->AttachEdge("A", "e1", kNow, &fx), IsOk());
  auto r = store->Register(Spec("c1", "n1"), kNow, &fx);
  ASSERT_THAT(r, IsOk());
  EXPECT_TRUE(r->granted);
}

TEST_F(RedisStoreTest, EdgesResyncRaisesTheGenerationAfterDataLoss) {
  StoreOptions o;
  o.auto_approve_all = true;
  auto store = NewStore(o);
  Effects fx;
  ASSERT_THAT(store->AttachEdge("A", "e1", kNow, &fx), IsOk());
  uint64_t last = 0;
  for (int i = 0; i < 5; ++i) {
    auto r = store->Register(Spec("c" + std::to_string(i), "n1"), kNow, &fx);
    ASSERT_THAT(r, IsOk());
    last = r->generation;
  }
  EXPECT_EQ(last, 5u);  // the counter starts at 1 in an empty database
  ASSERT_THAT(server_->Command({"FLUSHALL"}), IsOk());
  EXPECT_EQ(store->HeadRevision(), 0u);
  ASSERT_THAT(store->AttachEdge("A", "e1", kNow, &fx), IsOk());
  LiveConnection live;
  live.spec = Spec("c4", "n1");
  live.generation = last;
  auto resync = store->Resync("A", "e1", {live}, kNow, &fx);
  ASSERT_THAT(resync, IsOk());
  EXPECT_EQ(resync->kept, 1);
  EXPECT_EQ(store->GetNode("n1")->generation, last);
  auto r = store->Register(Spec("c9", "n2"), kNow, &fx);
  ASSERT_THAT(r, IsOk());
  EXPECT_GT(r->generation, last);
}

TEST_F(RedisStoreTest, CountersLostWithARedisRestartAreRaisedAtReconnect) {
  StoreOptions o;
  o.auto_approve_all = true;
  // One connection: the test steers which call finds it dead and which one reconnects.
  auto store = NewStore(o, absl::ZeroDuration(), 1);
  Effects fx;
  ASSERT_THAT(store->AttachEdge("A", "e1", kNow, &fx), IsOk());
  uint64_t last = 0;
  for (int i = 0; i < 5; ++i) {
    auto r = store->Register(Spec("c" + std::to_string(i), "n" + std::to_string(i)), kNow, &fx);
    ASSERT_THAT(r, IsOk());
    last = r->generation;
  }
  const uint64_t head = store->HeadRevision();
  ASSERT_EQ(head, 5u);
  // As if Redis restarted having lost everything (or the AOF's last second): the data is gone
  // and the store's connection with it.
  ASSERT_THAT(server_->Command({"FLUSHALL"}), IsOk());
  ASSERT_THAT(server_->Command({"CLIENT", "KILL", "TYPE", "normal"}), IsOk());
  (void)store->HeadRevision();             // finds the dead connection
  EXPECT_EQ(store->HeadRevision(), head);  // reconnected, counters raised
  ASSERT_THAT(store->AttachEdge("A", "e1", kNow, &fx), IsOk());
  auto r = store->Register(Spec("c9", "n9"), kNow, &fx);
  ASSERT_THAT(r, IsOk());
  EXPECT_GT(r->generation, last);
  ASSERT_THAT(fx.presence, ::testing::Not(::testing::IsEmpty()));
  EXPECT_EQ(fx.presence.back().revision, head + 1);
  // The history before the loss is gone: a watcher behind it must re-list.
  EXPECT_THAT(store->ReadPresence(head - 1, 10), StatusIs(absl::StatusCode::kOutOfRange));
  auto tail = store->ReadPresence(head, 10);
  ASSERT_THAT(tail, IsOk());
  EXPECT_EQ(tail->size(), 1u);
}

TEST_F(RedisStoreTest, ManyThreadsShareOneStore) {
  StoreOptions o;
  o.auto_approve_all = true;
  auto store = NewStore(o);
  Effects attach;
  ASSERT_THAT(store->AttachEdge("A", "e1", kNow, &attach), IsOk());
  constexpr int kThreads = 4;
  constexpr int kPerThread = 100;
  std::vector<std::vector<uint64_t>> granted(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        Effects fx;
        const std::string id = std::to_string(t) + "-" + std::to_string(i);
        auto r = store->Register(Spec("c" + id, "n" + std::to_string(i % 10)), kNow, &fx);
        if (r.ok() && r->granted) granted[t].push_back(r->generation);
        store->Close("A", "c" + id, kNow, &fx);
      }
    });
  }
  for (auto& th : threads) th.join();
  std::set<uint64_t> all;
  for (const auto& g : granted) all.insert(g.begin(), g.end());
  EXPECT_EQ(all.size(), static_cast<size_t>(kThreads * kPerThread));  // every grant unique
  for (int n = 0; n < 10; ++n) EXPECT_FALSE(store->GetNode("n" + std::to_string(n))->connected);
}

TEST_F(RedisStoreTest, LargeAnswersAreReturnedWhole) {
  // More items than Lua's unpack() can spread: the scripts must not use it for lists.
  StoreOptions o;
  o.auto_approve_all = true;
  // What is checked is that the answers are whole, not how fast they come: one script over
  // 9,000 records can take over a second on a loaded 2-core machine (seen in CI).
  auto store = NewStore(o, absl::Seconds(20));
  Effects fx;
  ASSERT_THAT(store->AttachEdge("A", "e1", kNow, &fx), IsOk());
  constexpr int kNodes = 9000;
  for (int i = 0; i < kNodes; ++i) {
    Effects one;
    auto r = store->Register(Spec("c" + std::to_string(i), "n" + std::to_string(i)), kNow, &one);
    ASSERT_THAT(r, IsOk());
  }
  EXPECT_EQ(store->GetPresence()->nodes.size(), static_cast<size_t>(kNodes));
  EXPECT_EQ(store->ListDevices().size(), static_cast<size_t>(kNodes));
  auto events = store->ReadPresence(0, kNodes);
  ASSERT_THAT(events, IsOk());
  EXPECT_EQ(events->size(), static_cast<size_t>(kNodes));
  EXPECT_EQ(store->ListNodes(NodeFilter{}, "", 1000)->nodes.size(), 1000u);
}

TEST_F(RedisStoreTest, PasswordIsSentWithAuth) {
  ASSERT_THAT(server_->Command({"CONFIG", "SET", "requirepass", "s3cret"}), IsOk());
  RedisStoreOptions r;
  r.client = server_->ClientOptions();
  RedisStore without(StoreOptions{}, r);
  EXPECT_THAT(without.Connect(), StatusIs(absl::StatusCode::kUnavailable));
  r.client.password = "wrong";
  RedisStore wrong(StoreOptions{}, r);
  absl::Status s = wrong.Connect();
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(std::string(s.message()), HasSubstr("AUTH failed"));
  r.client.password = "s3cret";
  RedisStore right(StoreOptions{}, r);
  EXPECT_THAT(right.Connect(), IsOk());
  Effects fx;
  EXPECT_THAT(right.AttachEdge("A", "e1", kNow, &fx), IsOk());
}

TEST(RedisUrlTest, ParsesHostPortAndDatabase) {
  auto a = ParseRedisUrl("redis://127.0.0.1:6380/3");
  ASSERT_THAT(a, IsOk());
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 6380);
  EXPECT_EQ(a->db, 3);
  auto b = ParseRedisUrl("redis://redis.internal");
  ASSERT_THAT(b, IsOk());
  EXPECT_EQ(b->port, 6379);
  EXPECT_EQ(b->db, 0);
  for (const char* bad :
       {"http://h:1", "redis://", "redis://:6379", "redis://h:0", "redis://h:99999", "redis://h:x",
        "redis://h:1/x", "redis://h:1/-1", "redis://user:pw@h:1", "memory"}) {
    EXPECT_THAT(ParseRedisUrl(bad), StatusIs(absl::StatusCode::kInvalidArgument)) << bad;
  }
}

TEST(RedisListEncodingTest, RoundTrips) {
  const std::vector<std::string> items = {"", "a", "with:colon", std::string("nul\0byte", 8),
                                          "12:34"};
  EXPECT_EQ(RedisStore::DecodeList(RedisStore::EncodeList(items)), items);
  EXPECT_TRUE(RedisStore::DecodeList("").empty());
  EXPECT_EQ(RedisStore::DecodeList("3:abc9:short"), std::vector<std::string>{"abc"});
}

// A registry opening a Redis with no table marker starts in recovery: a new database and one
// that lost its data look alike. A restart on a Redis that kept its data serves at once.
TEST_F(RedisStoreTest, StartedEmptyOnANewOrFlushedDatabaseOnly) {
  StoreOptions o;
  EXPECT_TRUE(NewStore(o)->StartedEmpty());
  EXPECT_FALSE(NewStore(o)->StartedEmpty());  // the first one left the marker
  ASSERT_THAT(server_->Command({"FLUSHALL"}), IsOk());
  EXPECT_TRUE(NewStore(o)->StartedEmpty());
  EXPECT_FALSE(NewStore(o)->StartedEmpty());
}

}  // namespace
}  // namespace tether::registry

namespace tether::registry {
namespace {

// An edge's outbox holds only what was not yet delivered: marking a position trims the rest,
// a drain or a lapsed lease deletes it, and nothing is queued for an edge without a lease.
TEST_F(RedisStoreTest, EdgeOutboxesHoldOnlyWhatIsUndelivered) {
  StoreOptions o;
  o.auto_approve_all = true;
  auto store = NewStore(o);
  auto xlen = [&] { return server_->Command({"XLEN", "t:outbox:{A}"})->AsInt(); };
  Effects fx;
  ASSERT_THAT(store->AttachEdge("A", "e1", kNow, &fx), IsOk());
  for (int i = 0; i < 3; ++i) {  // each replaces the previous: a supersede per register
    ASSERT_THAT(store->Register(Spec("c" + std::to_string(i), "n1"), kNow, &fx), IsOk());
  }
  EXPECT_EQ(xlen(), 2);
  auto batch = store->ReadRouted({{"A", ""}}, "", 0);
  ASSERT_THAT(batch, IsOk());
  ASSERT_EQ(batch->to_edges.size(), 2u);
  EXPECT_EQ(batch->to_edges[0].command.conn_id, "c0");
  EXPECT_EQ(batch->to_edges[1].command.conn_id, "c1");
  auto lost = store->MarkDelivered({{"A", batch->to_edges[1].position}}, "");
  ASSERT_THAT(lost, IsOk());
  EXPECT_TRUE(lost->empty());
  EXPECT_EQ(xlen(), 1);  // the last one delivered stays as the position's anchor
  auto again = store->ReadRouted({{"A", ""}}, "", 0);  // from the recorded position
  ASSERT_THAT(again, IsOk());
  EXPECT_TRUE(again->to_edges.empty());

  ASSERT_THAT(store->DrainEdge("A", "e1", kNow, &fx), IsOk());
  EXPECT_EQ(xlen(), 0);
  ASSERT_THAT(store->Register(Spec("c9", "n2"), kNow, &fx).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  Effects revoke;
  (void)store->RevokeDevice("n1", kNow, &revoke);  // tells edge A: no lease, nothing queued
  EXPECT_EQ(xlen(), 0);
}

}  // namespace
}  // namespace tether::registry

namespace tether::registry {
namespace {

// A resync larger than one chunk (256) is reconciled whole: reported connections are kept or
// installed, the lease's unreported ones closed, across chunks and sweep pages.
TEST_F(RedisStoreTest, AResyncOfMoreConnectionsThanAChunkIsReconciledWhole) {
  StoreOptions o;
  o.auto_approve_all = true;
  auto store = NewStore(o);
  Effects fx;
  ASSERT_THAT(store->AttachEdge("A", "e1", kNow, &fx), IsOk());
  std::vector<LiveConnection> live;
  for (int i = 0; i < 700; ++i) {
    auto r = store->Register(Spec("c" + std::to_string(i), "n" + std::to_string(i)), kNow, &fx);
    ASSERT_THAT(r, IsOk());
    if (i % 2 == 0) {  // the even ones are still on the edge; the odd ones are gone
      LiveConnection l;
      l.spec = Spec("c" + std::to_string(i), "n" + std::to_string(i));
      l.generation = r->generation;
      live.push_back(l);
    }
  }
  for (int i = 0; i < 300; ++i) {  // connections the table never heard of (a lost grant)
    LiveConnection l;
    l.spec = Spec("x" + std::to_string(i), "m" + std::to_string(i));
    l.generation = 5000 + i;
    live.push_back(l);
  }
  Effects resync_fx;
  auto r = store->Resync("A", "e1", live, kNow, &resync_fx);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->kept, 650);
  EXPECT_EQ(r->closed, 350);
  EXPECT_TRUE(store->GetNode("n0")->connected);
  EXPECT_FALSE(store->GetNode("n1")->connected);
  EXPECT_TRUE(store->GetNode("m299")->connected);
  int disconnected = 0;
  for (const PresenceEvent& e : resync_fx.presence) {
    disconnected += e.kind == PresenceKind::kDisconnected;
  }
  EXPECT_EQ(disconnected, 350);
  // A second resync of the same report changes nothing.
  Effects again;
  auto r2 = store->Resync("A", "e1", live, kNow, &again);
  ASSERT_THAT(r2, IsOk());
  EXPECT_EQ(r2->kept, 650);
  EXPECT_EQ(r2->closed, 0);
  EXPECT_TRUE(again.presence.empty());
}

// A lapsed lease with more connections than one expiry may close (1000) ends at once (a late
// renewal fails: the edge must re-attach and resync) and its connections close over the next
// calls, each once.
TEST_F(RedisStoreTest, ALapsedLeaseWithManyConnectionsIsClosedOverSeveralExpiries) {
  StoreOptions o;
  o.auto_approve_all = true;
  o.lease_ttl_ms = 1000;
  auto store = NewStore(o);
  Effects fx;
  ASSERT_THAT(store->AttachEdge("A", "e1", kNow, &fx), IsOk());
  for (int i = 0; i < 1500; ++i) {
    ASSERT_THAT(store->Register(Spec("c" + std::to_string(i), "n" + std::to_string(i)), kNow, &fx),
                IsOk());
  }
  auto lost = [](const Effects& e) {
    int n = 0;
    for (const PresenceEvent& p : e.presence) n += p.reason == kReasonEdgeLost;
    return n;
  };
  Effects first, second, third;
  store->Expire(kNow + 2000, &first);
  EXPECT_EQ(lost(first), 1000);
  EXPECT_THAT(store->RenewLease("A", "e1", kNow + 2000),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  store->Expire(kNow + 2100, &second);
  EXPECT_EQ(lost(second), 500);
  store->Expire(kNow + 2200, &third);
  EXPECT_EQ(lost(third), 0);
  EXPECT_FALSE(store->GetNode("n1499")->connected);
}

}  // namespace
}  // namespace tether::registry

namespace tether::registry {
namespace {

// A Redis that serves only TLS (a managed Redis): the store speaks TLS through its tunnel,
// verifies the server, and presents a client certificate when the server requires one.
class RedisTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = std::getenv("TEST_TMPDIR");
    ASSERT_NE(tmp, nullptr);
    ASSERT_TRUE(::tether::testing::MakePki(std::string(tmp) + "/pki", &pki_));
  }
  std::unique_ptr<RedisStore> Store(const RedisClientOptions& client) {
    RedisStoreOptions r;
    r.client = client;
    r.connections = 2;
    r.key_prefix = "tls:";
    StoreOptions o;
    o.auto_approve_all = true;
    return std::make_unique<RedisStore>(o, r);
  }
  ::tether::testing::Pki pki_;
};

TEST_F(RedisTlsTest, TheStoreWorksOverTls) {
  auto server =
      RedisServer::StartTls(pki_.Path("server.pem"), pki_.Path("server.key"), pki_.Path("ca.pem"));
  ASSERT_THAT(server, IsOk());
  auto store = Store((*server)->ClientOptions());
  ASSERT_THAT(store->Connect(), IsOk());
  Effects fx;
  ASSERT_THAT(store->AttachEdge("A", "e1", kNow, &fx), IsOk());
  for (int i = 0; i < 300; ++i) {  // replies larger than one TLS record
    ASSERT_THAT(store->Register(Spec("c" + std::to_string(i), "n" + std::to_string(i)), kNow, &fx),
                IsOk());
  }
  auto page = store->ListNodes(NodeFilter{}, "", 1000);
  ASSERT_THAT(page, IsOk());
  EXPECT_EQ(page->nodes.size(), 300u);
  auto routed = store->ReadRouted({}, "", 50);  // a blocking read through the tunnel
  ASSERT_THAT(routed, IsOk());
  // The server goes away: calls fail fast; it comes back: the store reconnects.
  (*server)->Kill();
  const absl::Time start = absl::Now();
  EXPECT_THAT(store->GetNode("n1").status(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  ASSERT_THAT((*server)->Restart(), IsOk());
  absl::SleepFor(absl::Milliseconds(600));  // past the reconnect backoff
  EXPECT_THAT(store->HeadRevision(), ::testing::Ge(0u));
  EXPECT_THAT(store->GetNode("nobody").status(), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(RedisTlsTest, AServerTheStoreCannotVerifyIsRefusedWithTheReason) {
  auto server =
      RedisServer::StartTls(pki_.Path("server.pem"), pki_.Path("server.key"), pki_.Path("ca.pem"));
  ASSERT_THAT(server, IsOk());
  RedisClientOptions untrusted = (*server)->ClientOptions();
  untrusted.tls.ca_file = pki_.Path("rogue-ca.pem");
  absl::Status refused = Store(untrusted)->Connect();
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable) << refused;
  EXPECT_THAT(std::string(refused.message()), HasSubstr("certificate"));
  RedisClientOptions wrong_name = (*server)->ClientOptions();
  wrong_name.tls.server_name = "redis.example.com";
  absl::Status misnamed = Store(wrong_name)->Connect();
  EXPECT_EQ(misnamed.code(), absl::StatusCode::kUnavailable) << misnamed;
  EXPECT_THAT(std::string(misnamed.message()), HasSubstr("redis.example.com"));
  RedisClientOptions plain = (*server)->ClientOptions();
  plain.address.tls = false;  // plain text to a TLS-only port
  EXPECT_THAT(Store(plain)->Connect(), StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(RedisTlsTest, AServerThatRequiresAClientCertificateGetsOne) {
  auto server =
      RedisServer::StartTls(pki_.Path("server.pem"), pki_.Path("server.key"), pki_.Path("ca.pem"),
                            pki_.Path("edge.pem"), pki_.Path("edge.key"));
  ASSERT_THAT(server, IsOk());
  EXPECT_THAT(Store((*server)->ClientOptions())->Connect(), IsOk());
  RedisClientOptions anonymous = (*server)->ClientOptions();
  anonymous.tls.cert_file.clear();
  anonymous.tls.key_file.clear();
  EXPECT_THAT(Store(anonymous)->Connect(), StatusIs(absl::StatusCode::kUnavailable));
}

TEST(RedisUrlTlsTest, RedissMeansTls) {
  auto a = ParseRedisUrl("rediss://redis.internal:6380/2");
  ASSERT_THAT(a, IsOk());
  EXPECT_TRUE(a->tls);
  EXPECT_EQ(a->host, "redis.internal");
  EXPECT_EQ(a->port, 6380);
  EXPECT_EQ(a->db, 2);
  EXPECT_FALSE(ParseRedisUrl("redis://h:1")->tls);
  EXPECT_THAT(ParseRedisUrl("redis+tls://h:1"), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace tether::registry
