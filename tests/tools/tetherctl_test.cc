// tetherctl against a real registry and edge: the exit codes its help promises.
#include <sys/wait.h>

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/cluster.h"

namespace tether {
namespace {

using edge::client::DeviceCredentials;
using testing::ChildProcess;
using testing::Cluster;

class TetherctlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    c_.StartRegistry({"--auto_approve"});
    c_.StartEdge("edgeA");
  }

  // Runs tetherctl with `token` in TETHER_TOKEN; returns its exit code and log.
  int Run(const std::string& token, std::vector<std::string> args, std::string* log = nullptr) {
    args.insert(args.begin(), "--registry=127.0.0.1:" + std::to_string(c_.registry_port()));
    ChildProcess ctl("tools/tetherctl", args, {"TETHER_TOKEN=" + token},
                     /*port_file_flag=*/false);
    const int status = ctl.Wait(absl::Seconds(30));
    if (log != nullptr) *log = ctl.Log();
    if (status < 0 || !WIFEXITED(status)) return -1;
    return WEXITSTATUS(status);
  }

  Cluster c_;
};

TEST_F(TetherctlTest, InvokeWithoutTheWriteScopeExitsTen) {
  DeviceCredentials creds;
  auto node = c_.ReadyNode(creds, "edgeA");
  std::string log;
  EXPECT_EQ(Run(testing::kReadToken, {"invoke", creds.node_id(), "system.which", "{}"}, &log), 10)
      << log;
  EXPECT_NE(log.find("write"), std::string::npos) << log;  // names the missing scope
  EXPECT_EQ(Run("not-a-token", {"invoke", creds.node_id(), "system.which", "{}"}), 10);
  EXPECT_EQ(Run("not-a-token", {"nodes"}), 10);
}

TEST_F(TetherctlTest, InvokeOutcomesMapToTheirExitCodes) {
  DeviceCredentials creds;
  auto node = c_.ReadyNode(creds, "edgeA");
  std::string log;
  EXPECT_EQ(Run(testing::kWriteToken, {"invoke", creds.node_id(), "system.which", "{}"}, &log), 0)
      << log;
  EXPECT_EQ(Run(testing::kWriteToken, {"invoke", std::string(64, 'f'), "system.which", "{}"}), 3);
  // Bad caller input is refused with a message naming the problem (exit 1: an error).
  EXPECT_EQ(Run(testing::kWriteToken, {"invoke", creds.node_id(), "system.which", "{oops"}, &log),
            1);
  EXPECT_NE(log.find("not valid JSON"), std::string::npos) << log;
}

// `nodes` prints ids cut to 16 characters; `invoke` (and `get`, `revoke`) take such a prefix
// and find the node it names, as the README's walk-through does.
TEST_F(TetherctlTest, ANodeIdPrefixAsPrintedByNodesIsEnough) {
  DeviceCredentials creds;
  auto node = c_.ReadyNode(creds, "edgeA");
  std::string log;
  EXPECT_EQ(Run(testing::kAdminToken, {"nodes"}, &log), 0) << log;
  const std::string prefix = creds.node_id().substr(0, 16);
  EXPECT_NE(log.find(prefix), std::string::npos) << log;
  EXPECT_EQ(Run(testing::kAdminToken, {"invoke", prefix, "system.which", "{}"}, &log), 0) << log;
  EXPECT_EQ(Run(testing::kAdminToken, {"get", prefix}, &log), 0) << log;
  EXPECT_NE(log.find(creds.node_id()), std::string::npos) << log;
  // A prefix two nodes share is refused with both names.
  DeviceCredentials other;
  auto second = c_.ReadyNode(other, "edgeA");
  EXPECT_EQ(Run(testing::kAdminToken, {"invoke", "", "system.which", "{}"}, &log), 2) << log;
  EXPECT_NE(log.find("matches 2 nodes"), std::string::npos) << log;
}

}  // namespace
}  // namespace tether
