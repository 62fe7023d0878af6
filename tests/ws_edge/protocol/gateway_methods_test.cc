// The Gateway's operator methods (node-protocol.md §7): what a node is refused with
// "unauthorized role: node" rather than "unknown method".
#include "ws_edge/protocol/gateway_methods.h"

#include "gtest/gtest.h"

namespace tether::edge::protocol {
namespace {

TEST(GatewayMethodsTest, OperatorMethodsAreKnownAndNodeOrUnknownOnesAreNot) {
  for (const char* m : {"node.list", "node.invoke", "node.describe", "node.pair.approve",
                        "chat.send", "sessions.list", "status", "connect", "skills.status"}) {
    EXPECT_TRUE(IsGatewayOperatorMethod(m)) << m;
  }
  // A node's own methods, `health` (the Gateway serves it to any role; Tether has none) and
  // names the Gateway does not have.
  for (const char* m : {"node.invoke.result", "node.event", "node.pluginTools.update",
                        "node.runnerInventory.update", "skills.bins", "node.pending.pull", "health",
                        "no.such.method", "", "NODE.LIST"}) {
    EXPECT_FALSE(IsGatewayOperatorMethod(m)) << m;
  }
}

}  // namespace
}  // namespace tether::edge::protocol
