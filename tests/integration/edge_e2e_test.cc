// End to end over real sockets: registry and edge processes on 127.0.0.1 and node clients
// speaking the OpenClaw node protocol.
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <fstream>
#include <future>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/cluster.h"
#include "ws_edge/client/connect_request.h"

namespace tether {
namespace {

using edge::client::DeviceCredentials;
using edge::client::InvokeReply;
using edge::client::NodeClient;
using nlohmann::json;
using testing::Cluster;
using testing::Eventually;
using testing::PresenceWatcher;

class EdgeE2ETest : public ::testing::Test {
 protected:
  void SetUp() override {
    c_.StartRegistry({"--auto_approve", "--superseded_grace_ms=1000", "--lease_ttl_ms=2000"});
    c_.StartEdge("edgeA", {"--max_send_buffer_bytes=262144", "--tick_interval_ms=1000"});
  }

  // A node whose invokes are never answered (they stay in flight on its connection).
  std::unique_ptr<NodeClient> SilentNode(DeviceCredentials& creds) {
    auto node = c_.Node(creds, "edgeA", [](edge::client::NodeClientOptions& o) {
      o.on_invoke = [](const edge::protocol::InvokeRequest&) { return InvokeReply::Deferred(); };
    });
    EXPECT_TRUE(node->Connect(absl::Seconds(10)).ok());
    return node;
  }

  Cluster c_;
};

// OpenClaw PR #78351, live: the node reconnects while its old socket is open; the old socket's
// close arrives late. The new session must survive it.
TEST_F(EdgeE2ETest, LateCloseOfTheOldSocketDoesNotUnregisterTheNewSession) {
  DeviceCredentials creds;
  PresenceWatcher watch(c_.api(), c_.Revision());
  auto old_socket = SilentNode(creds);
  auto pending = std::async(std::launch::async, [&] { return c_.Invoke(creds.node_id(), 20000); });
  ASSERT_TRUE(old_socket->WaitForInvokeCount(1, absl::Seconds(5)).ok());

  auto new_socket = c_.ReadyNode(creds, "edgeA");
  ASSERT_TRUE(
      Eventually([&] { return c_.GetNode(creds.node_id())->conn_id() == new_socket->conn_id(); }));
  ASSERT_TRUE(old_socket->Close(1000, "late").ok());  // the late close
  auto failed = pending.get();
  EXPECT_EQ(failed.status.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_EQ(failed.error_code, "DISCONNECTED");

  auto ok = c_.Invoke(creds.node_id());
  ASSERT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.response.conn_id(), new_socket->conn_id());
  EXPECT_EQ(ok.response.payload_json(), R"({"ok":true})");
  EXPECT_EQ(old_socket->invoke_requests_received(), 1);  // nothing after the reconnect
  EXPECT_EQ(new_socket->invoke_requests_received(), 1);
  EXPECT_TRUE(c_.Connected(creds.node_id()));
  ASSERT_TRUE(watch.WaitFor(creds.node_id(), v1::PresenceEvent::REPLACED));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(watch.Count(creds.node_id(), v1::PresenceEvent::DISCONNECTED), 0);
  // The operator sees it too: one stale close ignored, no disconnect counted.
  const std::string reg = testing::HttpGet(testing::MetricsPort(c_.registry()), "/metrics");
  EXPECT_EQ(testing::MetricValue(reg, "tether_registry_closes_total{kind=\"stale_ignored\"}"), 1)
      << reg;
  EXPECT_EQ(testing::MetricValue(reg, "tether_registry_disconnects_total{reason=\"disconnect\"}"),
            0);
  EXPECT_EQ(testing::MetricValue(reg, "tether_registry_connected_nodes"), 1);
  EXPECT_EQ(testing::MetricValue(reg, "tether_registry_invokes_total{outcome=\"DISCONNECTED\"}"),
            1);
  EXPECT_NE(reg.find("tether_registry_invoke_latency_ms_bucket{le=\"+Inf\"} 2"), std::string::npos);
  const std::string edge = testing::HttpGet(testing::MetricsPort(c_.edge("edgeA")), "/metrics");
  EXPECT_EQ(testing::MetricValue(edge, "tether_edge_live_connections"), 1) << edge;
  EXPECT_EQ(testing::MetricValue(edge, "tether_edge_handshakes_total{outcome=\"ok\"}"), 2);
  EXPECT_NE(testing::HttpGet(testing::MetricsPort(c_.edge("edgeA")), "/readyz").find("200"),
            std::string::npos);
}

TEST_F(EdgeE2ETest, HalfOpenOldSocketIsRetiredAsReplaced) {
  DeviceCredentials creds;
  PresenceWatcher watch(c_.api(), c_.Revision());
  auto old_socket = SilentNode(creds);
  auto pending = std::async(std::launch::async, [&] { return c_.Invoke(creds.node_id(), 20000); });
  ASSERT_TRUE(old_socket->WaitForInvokeCount(1, absl::Seconds(5)).ok());
  auto new_socket = c_.ReadyNode(creds, "edgeA");
  // The old socket never closes by itself: after the grace (1 s) the edge closes it.
  auto closed = old_socket->WaitForClose(absl::Seconds(10));
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_EQ(closed->code, 4001);
  EXPECT_EQ(closed->reason, "replaced");
  EXPECT_EQ(pending.get().error_code, "DISCONNECTED");
  EXPECT_TRUE(c_.Connected(creds.node_id()));
  EXPECT_EQ(c_.GetNode(creds.node_id())->conn_id(), new_socket->conn_id());
  EXPECT_EQ(watch.Count(creds.node_id(), v1::PresenceEvent::DISCONNECTED), 0);

  // An idle replaced socket is retired at once.
  auto third = c_.ReadyNode(creds, "edgeA");
  auto closed2 = new_socket->WaitForClose(absl::Seconds(5));
  ASSERT_TRUE(closed2.ok());
  EXPECT_EQ(closed2->code, 4001);
  EXPECT_TRUE(c_.Connected(creds.node_id()));
}

// Opens a raw socket and returns it with its challenge.
std::pair<std::unique_ptr<NodeClient>, edge::client::Challenge> RawSocket(
    Cluster& c, DeviceCredentials& creds) {
  auto node =
      c.Node(creds, "edgeA", [](edge::client::NodeClientOptions& o) { o.auto_connect = false; });
  auto ch = node->WaitForChallenge(absl::Seconds(5));
  EXPECT_TRUE(ch.ok()) << ch.status();
  return {std::move(node), ch.ok() ? *ch : edge::client::Challenge{}};
}

// Sends `params` as connect and returns (error details code, close code).
std::pair<std::string, int> Refusal(NodeClient& node, const json& params) {
  auto id = node.SendConnect(params);
  EXPECT_TRUE(id.ok());
  auto res = node.WaitForResponse(*id, absl::Seconds(5));
  std::string code;
  if (res.ok() && res->error.has_value()) {
    const json& d = res->error->details;
    code = d.is_object() && d.contains("code") ? d["code"].get<std::string>() : res->error->code;
  }
  auto closed = node.WaitForClose(absl::Seconds(5));
  return {code, closed.ok() ? closed->code : 0};
}

TEST_F(EdgeE2ETest, HostileHandshakesGetTheDocumentedErrorsAndHarmNoOne) {
  DeviceCredentials honest_creds;
  auto honest = c_.ReadyNode(honest_creds, "edgeA");
  const std::optional<std::string> token = std::string(testing::kTestToken);
  DeviceCredentials mallory;
  edge::client::ConnectRequestOptions opts;

  {  // Spoofed device id: the honest node's id with mallory's key.
    auto [s, ch] = RawSocket(c_, mallory);
    json p = edge::client::BuildConnectParams(opts, mallory.identity(), ch, token, std::nullopt);
    p["device"]["id"] = honest_creds.node_id();
    EXPECT_EQ(Refusal(*s, p), std::make_pair(std::string("DEVICE_AUTH_DEVICE_ID_MISMATCH"), 1008));
  }
  {  // Bad signature.
    auto [s, ch] = RawSocket(c_, mallory);
    json p = edge::client::BuildConnectParams(opts, mallory.identity(), ch, token, std::nullopt);
    std::string sig = p["device"]["signature"];
    sig[5] = sig[5] == 'A' ? 'B' : 'A';
    p["device"]["signature"] = sig;
    EXPECT_EQ(Refusal(*s, p), std::make_pair(std::string("DEVICE_AUTH_SIGNATURE_INVALID"), 1008));
  }
  {  // Replayed nonce: a proof made for another socket's challenge.
    auto [s1, ch1] = RawSocket(c_, mallory);
    auto [s2, ch2] = RawSocket(c_, mallory);
    json p = edge::client::BuildConnectParams(opts, mallory.identity(), ch1, token, std::nullopt);
    EXPECT_EQ(Refusal(*s2, p), std::make_pair(std::string("DEVICE_AUTH_NONCE_MISMATCH"), 1008));
  }
  {  // Stale signedAt (10 minutes old, correctly signed).
    auto [s, ch] = RawSocket(c_, mallory);
    edge::client::Challenge old = ch;
    old.ts_ms -= 600'000;
    json p = edge::client::BuildConnectParams(opts, mallory.identity(), old, token, std::nullopt);
    EXPECT_EQ(Refusal(*s, p), std::make_pair(std::string("DEVICE_AUTH_SIGNATURE_EXPIRED"), 1008));
  }
  {  // No token at all.
    auto [s, ch] = RawSocket(c_, mallory);
    json p =
        edge::client::BuildConnectParams(opts, mallory.identity(), ch, std::nullopt, std::nullopt);
    EXPECT_EQ(Refusal(*s, p), std::make_pair(std::string("AUTH_TOKEN_MISSING"), 1008));
  }
  {  // An operator is pointed at the gRPC API.
    auto [s, ch] = RawSocket(c_, mallory);
    edge::client::ConnectRequestOptions op = opts;
    op.role = "operator";
    op.client_mode = "cli";
    op.client_id = "cli";
    json p = edge::client::BuildConnectParams(op, mallory.identity(), ch, token, std::nullopt);
    auto id = s->SendConnect(p);
    auto res = s->WaitForResponse(*id, absl::Seconds(5));
    ASSERT_TRUE(res.ok());
    EXPECT_NE(res->error->message.find("gRPC"), std::string::npos) << res->error->message;
  }
  for (int i = 0; i < 8; ++i) {  // 100 KiB to 6.4 MiB before the handshake: told why (1009)
    const size_t size = size_t{100 * 1024} << (i % 4 * 2);
    auto [s, ch] = RawSocket(c_, mallory);
    ASSERT_TRUE(s->SendText(std::string(size, 'x')).ok());
    auto closed = s->WaitForClose(absl::Seconds(5));
    ASSERT_TRUE(closed.ok());
    EXPECT_EQ(closed->code, 1009) << size;
  }
  {  // Garbage bytes.
    auto [s, ch] = RawSocket(c_, mallory);
    ASSERT_TRUE(s->SendText("\x01\x02 not json").ok());
    auto closed = s->WaitForClose(absl::Seconds(5));
    ASSERT_TRUE(closed.ok());
    EXPECT_TRUE(s->error_responses().empty());
  }
  // None of it reached the registry, and the honest node is still served.
  v1::ListNodesResponse list;
  ASSERT_TRUE(c_.api().ListNodes(testing::AuthedContext().get(), {}, &list).ok());
  ASSERT_EQ(list.nodes_size(), 1);
  EXPECT_EQ(list.nodes(0).node_id(), honest_creds.node_id());
  auto ok = c_.Invoke(honest_creds.node_id());
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
}

TEST_F(EdgeE2ETest, AResultForAnotherNodesInvokeChangesNothing) {
  DeviceCredentials victim_creds, mallory_creds;
  auto victim = SilentNode(victim_creds);
  auto mallory = c_.ReadyNode(mallory_creds, "edgeA");
  auto pending =
      std::async(std::launch::async, [&] { return c_.Invoke(victim_creds.node_id(), 3000); });
  ASSERT_TRUE(victim->WaitForInvokeCount(1, absl::Seconds(5)).ok());
  edge::protocol::InvokeRequest stolen = victim->invoke_requests()[0];
  // Claiming the victim's node id is refused outright.
  auto id = mallory->SendRequest("node.invoke.result", json{{"id", stolen.id},
                                                            {"nodeId", victim_creds.node_id()},
                                                            {"ok", true},
                                                            {"payloadJSON", "\"pwned\""}});
  auto res = mallory->WaitForResponse(*id, absl::Seconds(5));
  ASSERT_TRUE(res.ok());
  EXPECT_EQ(res->error->message, "nodeId mismatch");
  // With its own id it is answered "ignored" (wrong node and connection for that invoke).
  auto id2 = mallory->SendRequest("node.invoke.result", json{{"id", stolen.id},
                                                             {"nodeId", mallory_creds.node_id()},
                                                             {"ok", true},
                                                             {"payloadJSON", "\"pwned\""}});
  auto res2 = mallory->WaitForResponse(*id2, absl::Seconds(5));
  ASSERT_TRUE(res2.ok());
  EXPECT_EQ(res2->payload, json({{"ok", true}, {"ignored", true}}));
  EXPECT_EQ(mallory->state(), NodeClient::State::kReady);
  // The victim's own answer is the one that counts.
  auto id3 = victim->SendInvokeResult(stolen, InvokeReply::Ok(std::string("\"real\"")));
  auto res3 = victim->WaitForResponse(*id3, absl::Seconds(5));
  ASSERT_TRUE(res3.ok());
  EXPECT_EQ(res3->payload, json({{"ok", true}}));
  auto outcome = pending.get();
  ASSERT_TRUE(outcome.status.ok());
  EXPECT_EQ(outcome.response.payload_json(), "\"real\"");
}

TEST_F(EdgeE2ETest, AClientThatNeverReadsIsClosedAndItsInvokesFail) {
  DeviceCredentials slow_creds, other_creds;
  auto slow = c_.ReadyNode(slow_creds, "edgeA");
  auto other = c_.ReadyNode(other_creds, "edgeA");
  PresenceWatcher watch(c_.api(), c_.Revision());
  slow->PauseReading();
  const std::string big = "\"" + std::string(200 * 1024, 'p') + "\"";
  std::vector<std::future<testing::InvokeOutcome>> calls;
  for (int i = 0; i < 40 && c_.Connected(slow_creds.node_id()); ++i) {
    calls.push_back(std::async(std::launch::async, [&, big] {
      return c_.Invoke(slow_creds.node_id(), 20000, "system.which", big);
    }));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(Eventually([&] { return !c_.Connected(slow_creds.node_id()); }, absl::Seconds(20)));
  for (auto& f : calls) {
    auto r = f.get();
    EXPECT_FALSE(r.status.ok());
    EXPECT_TRUE(r.error_code == "DISCONNECTED" || r.error_code == "NOT_CONNECTED") << r.error_code;
  }
  // Everyone else is fine.
  auto fine = c_.Invoke(other_creds.node_id());
  EXPECT_TRUE(fine.status.ok()) << fine.error_code << " " << fine.status.error_message();
  // Only the slow node went away, as an ordinary disconnect (not edge_lost).
  for (const auto& e : watch.events()) {
    EXPECT_EQ(e.node_id(), slow_creds.node_id());
    EXPECT_EQ(e.reason(), "disconnect");
  }
}

TEST_F(EdgeE2ETest, DeviceTokenReconnectAndRevocation) {
  DeviceCredentials creds;
  {
    auto first = c_.ReadyNode(creds, "edgeA");
    ASSERT_TRUE(creds.device_token().has_value());
  }
  // Without the shared token, the device token from hello-ok lets it back in.
  auto again =
      c_.Node(creds, "edgeA", [](edge::client::NodeClientOptions& o) { o.shared_token.reset(); });
  ASSERT_TRUE(again->Connect(absl::Seconds(10)).ok());
  EXPECT_EQ((*again->hello())["auth"]["method"], "device-token");
  // Revoke: the live socket is closed and the token stops working.
  v1::RevokeDeviceRequest req;
  req.set_node_id(creds.node_id());
  v1::RevokeDeviceResponse resp;
  ASSERT_TRUE(c_.api().RevokeDevice(testing::AuthedContext().get(), req, &resp).ok());
  auto closed = again->WaitForClose(absl::Seconds(5));
  ASSERT_TRUE(closed.ok());
  EXPECT_EQ(closed->code, 1008);
  auto third =
      c_.Node(creds, "edgeA", [](edge::client::NodeClientOptions& o) { o.shared_token.reset(); });
  EXPECT_FALSE(third->Connect(absl::Seconds(10)).ok());
  ASSERT_TRUE(third->connect_error().has_value());
  EXPECT_EQ(third->connect_error()->details["code"], "AUTH_DEVICE_TOKEN_MISMATCH");
  // The revocation is remembered, well inside its bound (--max_revocations): nothing dropped.
  const std::string reg = testing::HttpGet(testing::MetricsPort(c_.registry()), "/metrics");
  EXPECT_EQ(testing::MetricValue(
                reg, "tether_registry_store_dropped_total{what=\"revocation_forgotten\"}"),
            0)
      << reg;
}

TEST_F(EdgeE2ETest, RegistryRestartWithMemoryStoreIsHealedByResync) {
  DeviceCredentials creds;
  auto node = c_.ReadyNode(creds, "edgeA");
  const int port = std::stoi(c_.registry().Log().substr(c_.registry().Log().find("port ") + 5));
  auto before = c_.GetNode(creds.node_id());
  ASSERT_TRUE(before.has_value());
  const uint64_t old_revision = c_.Revision();
  c_.StopRegistry(SIGKILL);
  c_.StartRegistry({"--auto_approve", "--lease_ttl_ms=2000"}, port);
  // The edge re-attaches and resyncs; the node never left.
  ASSERT_TRUE(Eventually([&] { return c_.Connected(creds.node_id()); }, absl::Seconds(15)));
  auto after = c_.GetNode(creds.node_id());
  EXPECT_EQ(after->conn_id(), before->conn_id());
  EXPECT_EQ(after->generation(), before->generation());
  PresenceWatcher watch(c_.api(), c_.Revision());
  auto ok = c_.Invoke(creds.node_id());
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(node->state(), NodeClient::State::kReady);           // its socket never noticed
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // past a lease TTL
  EXPECT_EQ(watch.Count(creds.node_id(), v1::PresenceEvent::DISCONNECTED), 0);
  EXPECT_TRUE(c_.Connected(creds.node_id()));
  // A watcher resuming from the old registry's revision is told to re-list.
  PresenceWatcher stale(c_.api(), old_revision);
  ASSERT_TRUE(
      Eventually([&] { return stale.status().error_code() == grpc::StatusCode::OUT_OF_RANGE; }));
}

// The same restart with a recovery phase: until the grace passed the new registry is not
// ready and answers reads and invokes UNAVAILABLE with a retry hint (instead of NOT_CONNECTED
// for a node that never left); the edge's resync during recovery rebuilds ownership; nothing
// is ever announced disconnected.
TEST_F(EdgeE2ETest, RegistryRestartWithMemoryStoreRecoversBeforeServing) {
  DeviceCredentials creds;
  auto node = c_.ReadyNode(creds, "edgeA");
  const int port = std::stoi(c_.registry().Log().substr(c_.registry().Log().find("port ") + 5));
  auto before = c_.GetNode(creds.node_id());
  ASSERT_TRUE(before.has_value());
  c_.StopRegistry(SIGKILL);
  c_.StartRegistry({"--auto_approve", "--lease_ttl_ms=2000", "--recovery_grace_ms=4000"}, port);
  const int metrics = testing::MetricsPort(c_.registry());
  {
    auto ctx = testing::AuthedContext();
    v1::ListNodesResponse resp;
    grpc::Status s = c_.api().ListNodes(ctx.get(), v1::ListNodesRequest(), &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
    EXPECT_NE(s.error_message().find("recovering"), std::string::npos) << s.error_message();
    EXPECT_EQ(ctx->GetServerTrailingMetadata().count("retry-after-ms"), 1u);
  }
  auto refused = c_.Invoke(creds.node_id());
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(refused.error_code.empty()) << refused.error_code;  // not NOT_CONNECTED
  // The status line only: the 503 body names the retry hint ("retry after 200 ms").
  auto readyz_status = [&] {
    const std::string r = testing::HttpGet(metrics, "/readyz");
    return r.substr(0, r.find('\r'));
  };
  EXPECT_NE(readyz_status().find(" 503"), std::string::npos) << readyz_status();

  ASSERT_TRUE(Eventually([&] { return readyz_status().find(" 200") != std::string::npos; },
                         absl::Seconds(15)));
  const std::string log = c_.registry().Log();
  ASSERT_NE(log.find("edge_resynced"), std::string::npos);
  EXPECT_LT(log.find("edge_resynced"), log.find("recovery_ended"));  // resynced while recovering
  auto after = c_.GetNode(creds.node_id());
  ASSERT_TRUE(after.has_value()) << log << c_.edge("edgeA").Log();
  EXPECT_TRUE(after->connected());
  EXPECT_EQ(after->conn_id(), before->conn_id());
  EXPECT_EQ(after->generation(), before->generation());
  auto ok = c_.Invoke(creds.node_id());
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(node->state(), NodeClient::State::kReady);
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // past a lease TTL
  const std::string scrape = testing::HttpGet(metrics, "/metrics");
  for (const char* reason : {"disconnect", "edge_lost", "edge_drain", "revoked"}) {
    EXPECT_EQ(
        testing::MetricValue(
            scrape, std::string("tether_registry_disconnects_total{reason=\"") + reason + "\"}"),
        0)
        << reason;
  }
}

// Two edge processes configured with the same edge id: the second is refused with a clear
// error (and keeps retrying quietly in the background); the first is never fenced out, its
// node never flaps.
TEST_F(EdgeE2ETest, SecondEdgeWithTheSameEdgeIdIsRefusedNotAFight) {
  DeviceCredentials creds;
  auto node = c_.ReadyNode(creds, "edgeA");
  PresenceWatcher watch(c_.api(), c_.Revision());
  c_.StartEdge("intruder", {"--edge_id=edgeA"}, /*wait_attached=*/false);
  ASSERT_TRUE(Eventually(
      [&] { return c_.edge("intruder").Log().find("edge id in use") != std::string::npos; },
      absl::Seconds(10)))
      << c_.edge("intruder").Log();
  EXPECT_NE(c_.registry().Log().find("edge_id_in_use"), std::string::npos);
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // several retries, a lease TTL
  auto ok = c_.Invoke(creds.node_id());
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(node->state(), NodeClient::State::kReady);
  EXPECT_EQ(watch.Count(creds.node_id(), v1::PresenceEvent::DISCONNECTED), 0);
  EXPECT_EQ(watch.Count(creds.node_id(), v1::PresenceEvent::REPLACED), 0);
  // The first edge attached once and never lost its stream.
  const std::string log = c_.registry().Log();
  size_t attaches = 0;
  for (size_t at = log.find("edge_attached"); at != std::string::npos;
       at = log.find("edge_attached", at + 1)) {
    ++attaches;
  }
  EXPECT_EQ(attaches, 1u);
  EXPECT_EQ(log.find("edge_link_lost"), std::string::npos);
  c_.StopEdge("intruder", SIGKILL);
}

TEST_F(EdgeE2ETest, KilledEdgeLosesItsNodesWithinTheLeaseAndInvokesFailFast) {
  DeviceCredentials creds;
  auto node = c_.ReadyNode(creds, "edgeA");
  PresenceWatcher watch(c_.api(), c_.Revision());
  const auto start = std::chrono::steady_clock::now();
  c_.StopEdge("edgeA", SIGKILL);
  auto r = c_.Invoke(creds.node_id(), 20000);
  EXPECT_FALSE(r.status.ok());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  ASSERT_TRUE(watch.WaitFor(creds.node_id(), v1::PresenceEvent::DISCONNECTED, 1, absl::Seconds(6)));
  EXPECT_EQ(watch.events().back().reason(), "edge_lost");
}

class PairingE2ETest : public ::testing::Test {
 protected:
  void SetUp() override {
    c_.StartRegistry({});
    c_.StartEdge("edgeA");
  }
  Cluster c_;
};

TEST_F(PairingE2ETest, UnknownDeviceWaitsForApprovalThroughTheApi) {
  DeviceCredentials creds;
  auto first = c_.Node(creds, "edgeA");
  EXPECT_FALSE(first->Connect(absl::Seconds(10)).ok());
  ASSERT_TRUE(first->connect_error().has_value());
  EXPECT_EQ(first->connect_error()->code, "NOT_PAIRED");
  EXPECT_EQ(first->connect_error()->details["code"], "PAIRING_REQUIRED");
  const std::string request_id = first->connect_error()->details["requestId"];
  v1::ApprovePairingRequest req;
  req.set_request_id(request_id);
  v1::ApprovePairingResponse resp;
  ASSERT_TRUE(c_.api()
                  .ApprovePairing(testing::AuthedContext(testing::kPairingToken).get(), req, &resp)
                  .ok());
  auto second = c_.ReadyNode(creds, "edgeA");
  EXPECT_TRUE(c_.Connected(creds.node_id()));
  EXPECT_TRUE(c_.GetNode(creds.node_id())->paired());
}

TEST(EdgeE2ELimitsTest, ALargeNodeEventDoesNotBreakTheLinkForOtherNodes) {
  Cluster c;
  c.StartRegistry({"--auto_approve", "--lease_ttl_ms=2000"});
  c.StartEdge("edgeA");
  DeviceCredentials victim_creds, big_creds;
  auto victim = c.Node(victim_creds, "edgeA", [](edge::client::NodeClientOptions& o) {
    o.on_invoke = [](const edge::protocol::InvokeRequest&) { return InvokeReply::Deferred(); };
  });
  ASSERT_TRUE(victim->Connect(absl::Seconds(10)).ok());
  auto big = c.ReadyNode(big_creds, "edgeA");
  auto pending =
      std::async(std::launch::async, [&] { return c.Invoke(victim_creds.node_id(), 15000); });
  ASSERT_TRUE(victim->WaitForInvokeCount(1, absl::Seconds(5)).ok());

  // 5 MiB of payloadJSON: a fifth of the maxPayload the edge advertises in hello-ok.
  const std::string payload = "\"" + std::string(5 << 20, 'x') + "\"";
  auto id =
      big->SendRequest("node.event", json{{"event", "node.host.stats"}, {"payloadJSON", payload}});
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(big->WaitForResponse(*id, absl::Seconds(10)).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));

  const std::string scrape = testing::HttpGet(testing::MetricsPort(c.edge("edgeA")), "/metrics");
  EXPECT_EQ(testing::MetricValue(scrape, "tether_edge_link_reconnects_total"), 0) << scrape;

  // The victim answers its invoke now; it must still count.
  auto res_id = victim->SendInvokeResult(victim->invoke_requests()[0],
                                         InvokeReply::Ok(std::string("\"fine\"")));
  ASSERT_TRUE(res_id.ok());
  auto outcome = pending.get();
  EXPECT_TRUE(outcome.status.ok()) << outcome.error_code << " " << outcome.status.error_message();
}

// Resident memory (KiB) of the process whose command line contains `needle`, or -1.
long RssKiBOf(const std::string& needle) {
  DIR* d = opendir("/proc");
  if (d == nullptr) return -1;
  long rss = -1;
  while (dirent* e = readdir(d)) {
    const std::string pid = e->d_name;
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream cmd("/proc/" + pid + "/cmdline");
    std::string args((std::istreambuf_iterator<char>(cmd)), std::istreambuf_iterator<char>());
    if (args.find(needle) == std::string::npos || args.find("ws_edge") == std::string::npos) {
      continue;
    }
    std::ifstream status("/proc/" + pid + "/status");
    for (std::string line; std::getline(status, line);) {
      if (line.rfind("VmRSS:", 0) == 0) rss = std::stol(line.substr(6));
    }
  }
  closedir(d);
  return rss;
}

// Before any handshake, a client that never reads sends empty WebSocket pings. websocketpp
// answers each with a queued pong that get_buffered_amount() counts as 0 bytes (payload only),
// and the core never writes to the socket again before hello, so no bound applies: edge memory
// grows with every 6-byte frame until the handshake timeout.
TEST(EdgeE2ELimitsTest, PingFloodFromAClientThatNeverReadsIsBounded) {
  Cluster c;
  c.StartRegistry({"--auto_approve"});
  const std::string edge_id = "edge-pingflood-" + std::to_string(getpid());
  const int port = c.StartEdge(edge_id);
  const long before = RssKiBOf("--edge_id=" + edge_id);
  ASSERT_GT(before, 0);

  int fd = socket(AF_INET, SOCK_STREAM, 0);
  int small = 4096;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  const std::string upgrade =
      "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
  ASSERT_EQ(write(fd, upgrade.data(), upgrade.size()), static_cast<ssize_t>(upgrade.size()));
  std::string head;
  char ch;
  while (head.find("\r\n\r\n") == std::string::npos && read(fd, &ch, 1) == 1) head += ch;
  ASSERT_NE(head.find(" 101 "), std::string::npos) << head;
  // From here on the client never reads. A masked, empty ping is 6 bytes.
  std::string pings;
  for (int i = 0; i < 10000; ++i) pings.append("\x89\x80\x00\x00\x00\x00", 6);
  const auto stop = std::chrono::steady_clock::now() + std::chrono::seconds(7);
  size_t sent = 0;
  while (std::chrono::steady_clock::now() < stop) {
    ssize_t n = send(fd, pings.data(), pings.size(), MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  const long after = RssKiBOf("--edge_id=" + edge_id);
  close(fd);
  std::printf("sent %zu bytes of pings; edge RSS %ld KiB -> %ld KiB\n", sent, before, after);
  // 64 MiB is more than the 50 MiB per-socket send bound the edge advertises.
  EXPECT_LT(after - before, 64 * 1024) << "edge grew by " << (after - before) / 1024 << " MiB";
}

}  // namespace
}  // namespace tether

namespace tether {
namespace {

// CPU seconds (user + system) the process has used, from /proc/<pid>/stat.
double CpuSeconds(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(f, line);
  // Fields after the command name (in parentheses, may hold spaces): utime is the 12th, stime
  // the 13th of what follows ")".
  std::istringstream rest(line.substr(line.rfind(')') + 2));
  std::string field;
  double ticks = 0;
  for (int i = 1; i <= 13 && rest >> field; ++i) {
    if (i == 12 || i == 13) ticks += std::stod(field);
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Issue 11 #7: an edge out of file descriptors (EMFILE) backs off its accept loop instead of
// retrying at once on the pending connection (websocketpp's loop spun one core and flooded the
// log), and accepts again once descriptors are free.
TEST(EdgeOutOfDescriptors, TheAcceptLoopBacksOffAndRecovers) {
  Cluster c;
  c.StartRegistry();
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
  rlimit low = old;
  low.rlim_cur = 96;  // the edge inherits it; its own flag must not refuse before the kernel does
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  const int port = c.StartEdge("edgeA", {"--max_connections=100000"});
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
  ASSERT_GT(port, 0);

  std::vector<int> flood;  // plain TCP connections, more than the edge has descriptors for
  for (int i = 0; i < 150; ++i) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    (void)connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    flood.push_back(fd);
  }
  const pid_t pid = c.edge("edgeA").pid();
  auto open_files = [pid] {
    int n = 0;
    if (DIR* d = opendir(("/proc/" + std::to_string(pid) + "/fd").c_str())) {
      while (readdir(d) != nullptr) ++n;
      closedir(d);
    }
    return n - 2;  // . and ..
  };
  ASSERT_TRUE(Eventually([&] { return open_files() >= static_cast<int>(low.rlim_cur) - 1; }))
      << "the edge never ran out of descriptors: " << open_files() << " open";
  const double before = CpuSeconds(pid);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const double used = CpuSeconds(pid) - before;
  // A spinning accept loop uses the whole 2 s; backing off, next to nothing.
  EXPECT_LT(used, 0.5) << "CPU seconds in 2 s out of descriptors";
  EXPECT_NE(c.edge("edgeA").Log().find("event=accept_failed"), std::string::npos);

  for (int fd : flood) close(fd);
  DeviceCredentials creds;
  auto node = c.Node(creds, "edgeA");
  EXPECT_TRUE(node->Connect(absl::Seconds(15)).ok()) << c.edge("edgeA").Log().substr(0, 2000);
}

}  // namespace
}  // namespace tether
