// End to end with --store=redis://...: a registry process killed and restarted on the same Redis
// keeps ownership, presence history, pairings and device tokens; the edges' sockets never notice.
#include <csignal>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/cluster.h"
#include "tests/testing/redis_server.h"

namespace tether {
namespace {

using edge::client::DeviceCredentials;
using edge::client::NodeClient;
using testing::Cluster;
using testing::Eventually;
using testing::PresenceWatcher;
using testing::RedisServer;

TEST(RedisE2ETest, RegistryRestartOnTheSameRedisKeepsEverything) {
  auto redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  const std::string store = "--store=" + (*redis)->url();
  Cluster c;
  c.StartRegistry({"--auto_approve", store});
  c.StartEdge("edgeA");
  DeviceCredentials creds;
  auto node = c.ReadyNode(creds, "edgeA");
  ASSERT_TRUE(creds.device_token().has_value());
  const int port = std::stoi(c.registry().Log().substr(c.registry().Log().find("port ") + 5));
  auto before = c.GetNode(creds.node_id());
  ASSERT_TRUE(before.has_value());
  const uint64_t old_revision = c.Revision();
  ASSERT_GT(old_revision, 0u);

  c.StopRegistry(SIGKILL);
  // No --auto_approve this time: the device must be known from Redis.
  c.StartRegistry({store}, port);
  // Ownership was never lost (it is in Redis); invokes work again once the edge re-attached.
  EXPECT_TRUE(c.Connected(creds.node_id()));
  ASSERT_TRUE(Eventually([&] { return c.Invoke(creds.node_id()).status.ok(); }, absl::Seconds(15)));
  EXPECT_NE(c.registry().Log().find("(store: redis://"), std::string::npos) << c.registry().Log();
  auto after = c.GetNode(creds.node_id());
  EXPECT_EQ(after->conn_id(), before->conn_id());
  EXPECT_EQ(after->generation(), before->generation());
  EXPECT_TRUE(after->paired());
  EXPECT_GE(c.Revision(), old_revision);                // the presence history went on, not back
  EXPECT_EQ(node->state(), NodeClient::State::kReady);  // its socket never noticed

  // The device token from before the restart still lets the node in without the shared token.
  PresenceWatcher watch(c.api(), old_revision);
  auto again =
      c.Node(creds, "edgeA", [](edge::client::NodeClientOptions& o) { o.shared_token.reset(); });
  ASSERT_TRUE(again->Connect(absl::Seconds(10)).ok());
  EXPECT_EQ((*again->hello())["auth"]["method"], "device-token");
  ASSERT_TRUE(
      Eventually([&] { return c.GetNode(creds.node_id())->conn_id() == again->conn_id(); }));
  EXPECT_GT(c.GetNode(creds.node_id())->generation(), before->generation());
  // A watcher resuming from the first registry's revision is served, not told to re-list.
  ASSERT_TRUE(watch.WaitFor(creds.node_id(), v1::PresenceEvent::REPLACED, 1, absl::Seconds(5)));
  EXPECT_TRUE(watch.status().ok()) << watch.status().error_message();
}

}  // namespace
}  // namespace tether
