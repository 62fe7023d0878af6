// Two registry replicas on one redis-server, an edge given both addresses (active/passive:
// every client uses the first that answers). The first replica is killed with -9 while an
// invoke is in flight through it: the caller gets a typed error at once (not a hang), the edge
// re-attaches to the second replica within seconds without dropping the node's socket, the
// node never receives the invoke twice, and nobody is announced disconnected.
#include <csignal>
#include <future>
#include <memory>
#include <string>

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
using testing::RedisServer;

int Count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(ReplicaFailoverE2ETest, KillMinus9OfTheActiveReplicaMidInvoke) {
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

}  // namespace
}  // namespace tether
