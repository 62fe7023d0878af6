// Two registry replicas on one redis-server, with real processes.
// - An edge given both addresses (active/passive: every client uses the first that answers);
//   the first replica is killed with -9 while an invoke is in flight through it: the caller
//   gets a typed error at once (not a hang), the edge re-attaches to the second replica within
//   seconds without dropping the node's socket, the node never receives the invoke twice, and
//   nobody is announced disconnected.
// - WatchPresence on either replica yields the same events with the same revisions.
// - A node moving from an edge on replica 1 to an edge on replica 2, the old socket's close
//   arriving late: ownership stays with the new connection on both replicas.
#include <csignal>
#include <future>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/cluster.h"
#include "tests/testing/redis_server.h"

namespace tether {
namespace {

using edge::client::DeviceCredentials;
using edge::client::InvokeReply;
using edge::client::NodeClient;
using testing::Cluster;
using testing::Eventually;
using testing::PresenceWatcher;
using testing::RedisServer;

int Count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(ReplicasE2ETest, KillMinus9OfTheActiveReplicaMidInvoke) {
  auto redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  const std::string store = "--store=" + (*redis)->url();
  Cluster c;
  const int p1 = c.StartRegistry({"--auto_approve", store});
  const int p2 = c.StartExtraRegistry("r2", {"--auto_approve", store});
  c.StartEdge("edgeA",
              {"--registry=127.0.0.1:" + std::to_string(p1) + ",127.0.0.1:" + std::to_string(p2)});
  EXPECT_NE(c.registry().Log().find("edge_attached"), std::string::npos);  // the first one
  DeviceCredentials creds;
  auto node = c.Node(creds, "edgeA", [](edge::client::NodeClientOptions& o) {
    o.on_invoke = [](const edge::protocol::InvokeRequest&) { return InvokeReply::Deferred(); };
  });
  ASSERT_TRUE(node->Connect(absl::Seconds(10)).ok());
  auto before = c.GetNode(creds.node_id());
  ASSERT_TRUE(before.has_value());

  auto pending = std::async(std::launch::async, [&] { return c.Invoke(creds.node_id(), 20000); });
  ASSERT_TRUE(node->WaitForInvokeCount(1, absl::Seconds(5)).ok());
  const auto killed_at = std::chrono::steady_clock::now();
  c.StopRegistry(SIGKILL);
  auto failed = pending.get();
  EXPECT_EQ(failed.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << failed.status.error_message();
  EXPECT_LT(std::chrono::steady_clock::now() - killed_at, std::chrono::seconds(3));

  // The edge moves to the second replica (same epoch: it resyncs, nothing is fenced).
  c.PointApiAt(p2);
  ASSERT_TRUE(Eventually(
      [&] { return c.extra_registry("r2").Log().find("edge_resynced") != std::string::npos; },
      absl::Seconds(10)))
      << c.edge("edgeA").Log();
  EXPECT_LT(std::chrono::steady_clock::now() - killed_at, std::chrono::seconds(10));
  auto after = c.GetNode(creds.node_id());
  ASSERT_TRUE(after.has_value());
  EXPECT_TRUE(after->connected());
  EXPECT_EQ(after->conn_id(), before->conn_id());
  EXPECT_EQ(after->generation(), before->generation());
  EXPECT_EQ(node->state(), NodeClient::State::kReady);  // its socket never noticed

  // Through the second replica an invoke reaches the same socket; the first one was never
  // delivered again.
  auto second = c.Invoke(creds.node_id(), 1000);
  EXPECT_EQ(second.error_code, "TIMEOUT") << second.status.error_message();
  EXPECT_TRUE(node->WaitForInvokeCount(2, absl::Seconds(1)).ok());
  EXPECT_FALSE(node->WaitForInvokeCount(3, absl::Seconds(1)).ok());
  const std::string r2_log = c.extra_registry("r2").Log();
  EXPECT_EQ(Count(r2_log, "event=node_disconnected"), 0) << r2_log;
  EXPECT_EQ(Count(r2_log, "edge_id_in_use"), 0) << r2_log;
}

// Waits until `registry` serves `n` WatchPresence streams: a watcher from revision 0 means
// "from now", so events decided before it subscribed would not be its to see.
bool WatchersSubscribed(testing::ChildProcess& registry, int n) {
  const int port = testing::MetricsPort(registry);
  return Eventually([&] {
    return testing::MetricValue(testing::HttpGet(port, "/metrics"),
                                "tether_registry_presence_watchers") == n;
  });
}

std::unique_ptr<v1::Registry::Stub> Api(int port) {
  return v1::Registry::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
}

TEST(ReplicasE2ETest, WatchPresenceOnEitherReplicaYieldsTheSameEvents) {
  auto redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  const std::string store = "--store=" + (*redis)->url();
  Cluster c;
  c.StartRegistry({"--auto_approve", store});
  const int p2 = c.StartExtraRegistry("r2", {"--auto_approve", store});
  c.StartEdge("edgeA");  // attached to replica 1 only: every decision runs there
  auto api2 = Api(p2);
  const uint64_t from = c.Revision();
  PresenceWatcher w1(c.api(), from);
  PresenceWatcher w2(*api2, from);
  ASSERT_TRUE(WatchersSubscribed(c.registry(), 1));
  ASSERT_TRUE(WatchersSubscribed(c.extra_registry("r2"), 1));
  DeviceCredentials creds;
  auto first = c.ReadyNode(creds, "edgeA");
  auto second = c.ReadyNode(creds, "edgeA");  // replaces the first
  ASSERT_TRUE(second->Close(1000, "bye").ok());
  ASSERT_TRUE(w1.WaitFor(creds.node_id(), v1::PresenceEvent::DISCONNECTED));
  ASSERT_TRUE(w2.WaitFor(creds.node_id(), v1::PresenceEvent::DISCONNECTED));
  const auto e1 = w1.events();
  const auto e2 = w2.events();
  ASSERT_EQ(e1.size(), e2.size());
  ASSERT_GE(e1.size(), 3u);  // connected, replaced, disconnected
  for (size_t i = 0; i < e1.size(); ++i) {
    EXPECT_EQ(e1[i].revision(), e2[i].revision()) << i;
    EXPECT_EQ(e1[i].kind(), e2[i].kind()) << i;
    EXPECT_EQ(e1[i].conn_id(), e2[i].conn_id()) << i;
  }
}

TEST(ReplicasE2ETest, NodeMovesToAnEdgeOnTheOtherReplicaTheOldSocketIsRetiredAndItsCloseIgnored) {
  auto redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  const std::string store = "--store=" + (*redis)->url();
  Cluster c;
  const int p1 = c.StartRegistry({"--auto_approve", store});
  const int p2 = c.StartExtraRegistry("r2", {"--auto_approve", store});
  c.StartEdge("edgeA");                                                  // on replica 1
  c.StartEdge("edgeB", {"--registry=127.0.0.1:" + std::to_string(p2)});  // on replica 2
  auto api2 = Api(p2);
  const uint64_t from = c.Revision();
  PresenceWatcher w1(c.api(), from);
  PresenceWatcher w2(*api2, from);
  ASSERT_TRUE(WatchersSubscribed(c.registry(), 1));
  ASSERT_TRUE(WatchersSubscribed(c.extra_registry("r2"), 1));
  DeviceCredentials creds;
  auto old_socket = c.ReadyNode(creds, "edgeA");
  auto new_socket = c.ReadyNode(creds, "edgeB");
  ASSERT_TRUE(
      Eventually([&] { return c.GetNode(creds.node_id())->conn_id() == new_socket->conn_id(); }));
  // Replica 2 decided the supersede; replica 1 holds edgeA's stream and delivers the
  // retirement from edgeA's outbox in Redis: the old socket is closed with 4001 (replaced), and
  // its close, late and through replica 1, is ignored as stale.
  auto closed = old_socket->WaitForClose(absl::Seconds(10));
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_EQ(closed->code, 4001) << closed->reason;
  const int m1 = testing::MetricsPort(c.registry());
  ASSERT_TRUE(Eventually([&] {
    return testing::MetricValue(testing::HttpGet(m1, "/metrics"),
                                "tether_registry_closes_total{kind=\"stale_ignored\"}") == 1;
  }));
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  for (int port : {p1, p2}) {
    c.PointApiAt(port);
    auto n = c.GetNode(creds.node_id());
    ASSERT_TRUE(n.has_value());
    EXPECT_TRUE(n->connected()) << port;
    EXPECT_EQ(n->conn_id(), new_socket->conn_id()) << port;
  }
  // Replica 2 holds edgeB's stream: an invoke through it reaches the new socket.
  c.PointApiAt(p2);
  auto ok = c.Invoke(creds.node_id());
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(new_socket->state(), NodeClient::State::kReady);
  EXPECT_EQ(w1.Count(creds.node_id(), v1::PresenceEvent::DISCONNECTED), 0);
  EXPECT_EQ(w2.Count(creds.node_id(), v1::PresenceEvent::DISCONNECTED), 0);
  EXPECT_EQ(w2.Count(creds.node_id(), v1::PresenceEvent::REPLACED), 1);
}

// One InvokeNode call on the replica at `port`.
testing::InvokeOutcome InvokeOn(int port, const std::string& node_id, const std::string& key,
                                int64_t timeout_ms = 10000) {
  auto stub = Api(port);
  return testing::InvokeVia(*stub, node_id, timeout_ms, "system.which", R"({"bins":["sh"]})", key);
}

// The node's edge is attached to replica 1; callers on replica 2 reach it through edgeA's
// outbox in Redis and get the node's result through replica 2's inbox. Two callers with the
// same idempotency key on different replicas share one invoke: the node runs it once and
// both get its result.
TEST(ReplicasE2ETest, InvokesReachTheNodeWhicheverReplicaTheCallerIsOn) {
  auto redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  const std::string store = "--store=" + (*redis)->url();
  Cluster c;
  const int p1 = c.StartRegistry({"--auto_approve", store});
  const int p2 = c.StartExtraRegistry("r2", {"--auto_approve", store});
  c.StartEdge("edgeA");  // on replica 1 only
  DeviceCredentials creds;
  auto node = c.Node(creds, "edgeA", [](edge::client::NodeClientOptions& o) {
    o.on_invoke = [](const edge::protocol::InvokeRequest&) { return InvokeReply::Deferred(); };
  });
  ASSERT_TRUE(node->Connect(absl::Seconds(10)).ok());

  // Plain cross-replica invoke: decided on replica 2, delivered by replica 1, answered back.
  auto plain = std::async(std::launch::async, [&] { return InvokeOn(p2, creds.node_id(), ""); });
  ASSERT_TRUE(node->WaitForInvokeCount(1, absl::Seconds(5)).ok());
  ASSERT_TRUE(
      node->SendInvokeResult(node->invoke_requests()[0], InvokeReply::Ok(R"({"from":"node"})"))
          .ok());
  auto first = plain.get();
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  EXPECT_EQ(first.response.payload_json(), R"({"from":"node"})");

  // One key, callers on both replicas: one invoke at the node, one result for both.
  auto on2 = std::async(std::launch::async, [&] { return InvokeOn(p2, creds.node_id(), "k1"); });
  ASSERT_TRUE(node->WaitForInvokeCount(2, absl::Seconds(5)).ok());
  auto on1 = std::async(std::launch::async, [&] { return InvokeOn(p1, creds.node_id(), "k1"); });
  // The second caller joins (it must not start a second invoke at the node).
  EXPECT_FALSE(node->WaitForInvokeCount(3, absl::Milliseconds(500)).ok());
  ASSERT_TRUE(
      node->SendInvokeResult(node->invoke_requests()[1], InvokeReply::Ok(R"({"n":2})")).ok());
  auto r2 = on2.get();
  auto r1 = on1.get();
  ASSERT_TRUE(r2.status.ok()) << r2.status.error_message();
  ASSERT_TRUE(r1.status.ok()) << r1.status.error_message();
  EXPECT_EQ(r2.response.payload_json(), R"({"n":2})");
  EXPECT_EQ(r1.response.payload_json(), R"({"n":2})");
  EXPECT_EQ(r1.response.invoke_id(), r2.response.invoke_id());
  EXPECT_EQ(node->invoke_requests_received(), 2);

  // A timeout decided by whichever replica ticks first reaches the caller on replica 2 as the
  // store's outcome, not as replica 2's own fallback for outcomes that never arrived.
  auto late = InvokeOn(p2, creds.node_id(), "", 500);
  EXPECT_EQ(late.error_code, "TIMEOUT") << late.status.error_message();
  EXPECT_EQ(late.status.error_message().find("no outcome reached"), std::string::npos)
      << late.status.error_message();
}

// The deployment shape: redis-server, two replicas, two edges (one on each replica) behind
// nginx. Nodes land on either edge; callers on either replica reach every node, and a node
// that reconnects through the balancer (its new socket on whichever edge) keeps one owner on
// both replicas with no DISCONNECTED, its old socket retired across replicas.
TEST(ReplicasE2ETest, TwoReplicasTwoEdgesBehindNginx) {
  auto redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  const std::string store = "--store=" + (*redis)->url();
  Cluster c;
  const int p1 = c.StartRegistry({"--auto_approve", store});
  const int p2 = c.StartExtraRegistry("r2", {"--auto_approve", store});
  c.StartEdge("edgeA", {"--trust_x_forwarded_for"});  // on replica 1
  c.StartEdge("edgeB", {"--trust_x_forwarded_for",
                        "--registry=127.0.0.1:" + std::to_string(p2)});  // on replica 2
  const int lb = c.StartBalancer({"edgeA", "edgeB"});
  auto api2 = Api(p2);
  const uint64_t from = c.Revision();
  PresenceWatcher w2(*api2, from);
  ASSERT_TRUE(WatchersSubscribed(c.extra_registry("r2"), 1));

  // Nodes through the balancer until both edges hold one (nginx's least_conn usually
  // alternates, but its workers do not share counts: a few more nodes settle it).
  std::vector<std::unique_ptr<DeviceCredentials>> creds;
  std::vector<std::unique_ptr<edge::client::NodeClient>> nodes;
  std::map<std::string, size_t> first_on;  // edge id -> index of a node on it
  for (size_t i = 0; i < 8 && first_on.size() < 2; ++i) {
    creds.push_back(std::make_unique<DeviceCredentials>());
    nodes.push_back(c.ReadyNodeAt(*creds.back(), lb));
    auto n = c.GetNode(creds.back()->node_id());
    ASSERT_TRUE(n.has_value());
    first_on.emplace(n->edge_id(), i);
  }
  ASSERT_EQ(first_on.size(), 2u) << "8 nodes through nginx and all on one edge";
  for (const auto& [edge_id, i] : first_on) {
    auto n = c.GetNode(creds[i]->node_id());
    for (int port : {p1, p2}) {
      auto r = InvokeOn(port, creds[i]->node_id(), "");
      ASSERT_TRUE(r.status.ok()) << edge_id << " via " << port << ": " << r.status.error_message();
      EXPECT_EQ(r.response.conn_id(), n->conn_id()) << port;  // answered by its socket
    }
  }
  DeviceCredentials& a = *creds[0];
  auto& na = nodes[0];

  // Node a reconnects through the balancer while its old socket stays open.
  auto again = c.ReadyNodeAt(a, lb);
  ASSERT_TRUE(Eventually([&] {
    for (int port : {p1, p2}) {
      c.PointApiAt(port);
      auto n = c.GetNode(a.node_id());
      if (!n.has_value() || !n->connected() || n->conn_id() != again->conn_id()) return false;
    }
    return true;
  }));
  auto closed = na->WaitForClose(absl::Seconds(10));  // retired by its edge (4001)
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_EQ(closed->code, 4001) << closed->reason;
  auto r = InvokeOn(p2, a.node_id(), "");
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.response.conn_id(), again->conn_id());
  absl::SleepFor(absl::Milliseconds(500));
  for (const auto& d : creds) {
    EXPECT_EQ(w2.Count(d->node_id(), v1::PresenceEvent::DISCONNECTED), 0);
  }
}

}  // namespace
}  // namespace tether
