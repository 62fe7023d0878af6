// Redis faults under a live fleet, with real processes (redis-server, a registry on it, an edge,
// node clients): Redis unreachable, then back empty (restart without persistence); and a
// FLUSHALL. RPCs fail fast, new handshakes are refused as retryable, live sockets stay open, and
// the edge's resync restores ownership (same connection, same generation) with no disconnect.
#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "tests/testing/cluster.h"
#include "tests/testing/redis_server.h"

namespace tether {
namespace {

using edge::client::DeviceCredentials;
using edge::client::NodeClient;
using testing::Cluster;
using testing::Eventually;
using testing::RedisServer;

class RedisFaultE2ETest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto redis = RedisServer::Start();
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = std::move(*redis);
    c_.StartRegistry({"--auto_approve", "--store=" + redis_->url(), "--lease_ttl_ms=4000"});
    c_.StartEdge("edgeA");
  }

  // The node is owned by the same connection as before and answers invokes.
  void ExpectRestored(const std::string& node_id, const v1::Node& before) {
    ASSERT_TRUE(Eventually(
        [&] {
          auto n = c_.GetNode(node_id);
          return n.has_value() && n->connected() && n->conn_id() == before.conn_id();
        },
        absl::Seconds(15)))
        << c_.registry().Log();
    EXPECT_EQ(c_.GetNode(node_id)->generation(), before.generation());
    auto ok = c_.Invoke(node_id);
    EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
    EXPECT_EQ(c_.registry().Log().find("event=node_disconnected"), std::string::npos)
        << c_.registry().Log();
  }

  std::unique_ptr<RedisServer> redis_;
  Cluster c_;
};

TEST_F(RedisFaultE2ETest, RedisDownThenBackEmpty) {
  DeviceCredentials creds;
  auto node = c_.ReadyNode(creds, "edgeA");
  auto before = c_.GetNode(creds.node_id());
  ASSERT_TRUE(before.has_value());
  redis_->Kill();

  auto start = std::chrono::steady_clock::now();
  v1::ListNodesResponse list;
  grpc::Status s = c_.api().ListNodes(testing::AuthedContext().get(), {}, &list);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(1500));
  start = std::chrono::steady_clock::now();
  auto invoke = c_.Invoke(creds.node_id());
  EXPECT_EQ(invoke.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(1500));

  // A new node is refused with a retryable error; the live one keeps its socket.
  DeviceCredentials other;
  auto refused = c_.Node(other, "edgeA");
  EXPECT_FALSE(refused->Connect(absl::Seconds(5)).ok());
  ASSERT_TRUE(refused->connect_error().has_value());
  EXPECT_EQ(refused->connect_error()->code, "UNAVAILABLE");
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_EQ(node->state(), NodeClient::State::kReady);

  ASSERT_TRUE(redis_->Restart().ok());  // same port, no data
  ExpectRestored(creds.node_id(), *before);
  EXPECT_EQ(node->state(), NodeClient::State::kReady);
}

TEST_F(RedisFaultE2ETest, FlushallThenResync) {
  DeviceCredentials creds;
  auto node = c_.ReadyNode(creds, "edgeA");
  auto before = c_.GetNode(creds.node_id());
  ASSERT_TRUE(before.has_value());
  ASSERT_TRUE(redis_->Command({"FLUSHALL"}).ok());
  // The next heartbeat finds no lease: the edge re-attaches and resyncs.
  ExpectRestored(creds.node_id(), *before);
  EXPECT_EQ(node->state(), NodeClient::State::kReady);
  // Grants after the resync are above the generation the edge reported.
  DeviceCredentials other;
  auto second = c_.ReadyNode(other, "edgeA");
  auto n2 = c_.GetNode(other.node_id());
  ASSERT_TRUE(n2.has_value());
  EXPECT_GT(n2->generation(), before->generation());
}

}  // namespace
}  // namespace tether
