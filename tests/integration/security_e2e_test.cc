// Who may call what: API tokens and scopes, edge authentication (secret, mutual TLS), TLS.
#include <atomic>
#include <csignal>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/cluster.h"
#include "tests/testing/fake_edge.h"
#include "tests/testing/pki.h"
#include "ws_edge/client/connect_request.h"

namespace tether {
namespace {

using edge::client::DeviceCredentials;
using nlohmann::json;
using testing::AuthedContext;
using testing::Cluster;
using testing::Eventually;

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    c_.StartRegistry({"--auto_approve"});
    c_.StartEdge("edgeA");
  }
  Cluster c_;
};

// Every public RPC: no token, a token without the scope, the right token.
TEST_F(SecurityTest, EveryRpcNeedsATokenWithItsScope) {
  DeviceCredentials creds;
  auto node = c_.ReadyNode(creds, "edgeA");
  using Call = std::function<grpc::Status(grpc::ClientContext*)>;
  auto& api = c_.api();
  struct Case {
    const char* rpc;
    const char* scope;
    const char* wrong_token;
    const char* right_token;
    Call call;
  };
  const std::vector<Case> cases = {
      {"ListNodes", "read", testing::kWriteToken, testing::kReadToken,
       [&](grpc::ClientContext* c) {
         v1::ListNodesResponse r;
         return api.ListNodes(c, {}, &r);
       }},
      {"GetNode", "read", testing::kPairingToken, testing::kReadToken,
       [&](grpc::ClientContext* c) {
         v1::GetNodeRequest q;
         q.set_node_id(creds.node_id());
         v1::Node r;
         return api.GetNode(c, q, &r);
       }},
      {"GetPresence", "read", testing::kWriteToken, testing::kReadToken,
       [&](grpc::ClientContext* c) {
         v1::GetPresenceResponse r;
         return api.GetPresence(c, {}, &r);
       }},
      {"WatchPresence", "read", testing::kWriteToken, testing::kReadToken,
       [&](grpc::ClientContext* c) {
         // A refused watch ends at once; an accepted one stays open until its deadline.
         c->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
         auto stream = api.WatchPresence(c, {});
         v1::PresenceEvent e;
         while (stream->Read(&e)) {
         }
         grpc::Status s = stream->Finish();
         return s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ? grpc::Status::OK : s;
       }},
      {"InvokeNode", "write", testing::kReadToken, testing::kWriteToken,
       [&](grpc::ClientContext* c) {
         v1::InvokeNodeRequest q;
         q.set_node_id(creds.node_id());
         q.set_command("system.which");
         v1::InvokeNodeResponse r;
         return api.InvokeNode(c, q, &r);
       }},
      {"ListPairingRequests", "read", testing::kWriteToken, testing::kReadToken,
       [&](grpc::ClientContext* c) {
         v1::ListPairingRequestsResponse r;
         return api.ListPairingRequests(c, {}, &r);
       }},
      {"ListDevices", "read", testing::kWriteToken, testing::kReadToken,
       [&](grpc::ClientContext* c) {
         v1::ListDevicesResponse r;
         return api.ListDevices(c, {}, &r);
       }},
      {"RejectPairing", "pairing", testing::kReadToken, testing::kPairingToken,
       [&](grpc::ClientContext* c) {
         v1::RejectPairingRequest q;
         q.set_request_id("no-such-request");
         v1::RejectPairingResponse r;
         grpc::Status s = api.RejectPairing(c, q, &r);
         return s.error_code() == grpc::StatusCode::NOT_FOUND ? grpc::Status::OK : s;
       }},
      {"ApprovePairing", "pairing", testing::kWriteToken, testing::kPairingToken,
       [&](grpc::ClientContext* c) {
         v1::ApprovePairingRequest q;
         q.set_request_id("no-such-request");
         v1::ApprovePairingResponse r;
         grpc::Status s = api.ApprovePairing(c, q, &r);
         return s.error_code() == grpc::StatusCode::NOT_FOUND ? grpc::Status::OK : s;
       }},
      {"RevokeDevice", "pairing", testing::kReadToken, testing::kAdminToken,
       [&](grpc::ClientContext* c) {
         v1::RevokeDeviceRequest q;
         q.set_node_id(creds.node_id());
         v1::RevokeDeviceResponse r;
         return api.RevokeDevice(c, q, &r);
       }},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.rpc);
    EXPECT_EQ(k.call(AuthedContext("").get()).error_code(), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(k.call(AuthedContext("not-a-token").get()).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
    grpc::Status denied = k.call(AuthedContext(k.wrong_token).get());
    EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_NE(denied.error_message().find(k.scope), std::string::npos) << denied.error_message();
    grpc::Status ok = k.call(AuthedContext(k.right_token).get());
    EXPECT_TRUE(ok.ok()) << ok.error_message();
  }
}

TEST_F(SecurityTest, TokensAreReloadedOnSighup) {
  const std::string fresh = "a-brand-new-token";
  std::string file;
  {
    const std::string log = c_.registry().Log();
    const size_t at = log.find("path=");
    ASSERT_NE(at, std::string::npos) << log;
    file = log.substr(at + 5, log.find(' ', at) - at - 5);
  }
  std::ofstream(file) << fresh << " read new-dashboard\n";  // the old tokens are gone
  c_.registry().Signal(SIGHUP);
  auto list = [&](const std::string& token) {
    v1::ListNodesResponse r;
    return c_.api().ListNodes(AuthedContext(token).get(), {}, &r).error_code();
  };
  EXPECT_TRUE(Eventually([&] { return list(fresh) == grpc::StatusCode::OK; }));
  EXPECT_EQ(list(testing::kReadToken), grpc::StatusCode::UNAUTHENTICATED);
  // A broken file keeps the tokens that work.
  std::ofstream(file) << fresh << " superuser\n";
  c_.registry().Signal(SIGHUP);
  EXPECT_TRUE(
      Eventually([&] { return c_.registry().Log().find("unknown scope") != std::string::npos; }));
  EXPECT_EQ(list(fresh), grpc::StatusCode::OK);
  EXPECT_EQ(c_.registry().Log().find(fresh), std::string::npos);  // never logged
}

TEST_F(SecurityTest, EdgesWithoutTheSecretCannotAttach) {
  DeviceCredentials creds;
  auto node = c_.ReadyNode(creds, "edgeA");
  const std::string target = "127.0.0.1:" + std::to_string(c_.registry_port());
  for (const std::string secret : {std::string(""), std::string("wrong-secret")}) {
    testing::FakeEdge intruder(target, "edgeA", "intruder-epoch", secret);
    v1::EdgeMessage attach;
    attach.mutable_attach()->set_edge_id("edgeA");  // tries to take over a real edge's id
    attach.mutable_attach()->set_epoch("intruder-epoch");
    intruder.Send(attach);
    ASSERT_TRUE(intruder.WaitClosed(absl::Seconds(5)));
    EXPECT_EQ(intruder.Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  EXPECT_EQ(c_.registry().Log().find("wrong-secret"), std::string::npos);
  // Nothing changed: the real edge's node is still there and still answers.
  EXPECT_TRUE(c_.Connected(creds.node_id()));
  EXPECT_TRUE(c_.Invoke(creds.node_id()).status.ok());
}

// A flood of bad handshakes from one address (127.0.0.2) while real nodes connect from another
// (127.0.0.1): the flood is throttled per address, the real nodes connect in their normal time.
// Behind a trusted proxy the socket's peer is the proxy (often on loopback). A connection that
// reaches the edge without X-Forwarded-For (a misrouted one, or a path around the proxy) is not
// known to come from loopback, so --auto_approve_loopback must not pair it.
TEST(SecurityProxyTest, MissingForwardedForIsNotLoopback) {
  Cluster c;
  c.StartRegistry({"--auto_approve_loopback"});
  c.StartEdge("edgeA", {"--trust_x_forwarded_for"});
  DeviceCredentials creds;
  auto node = c.Node(creds, "edgeA");  // straight from 127.0.0.1, no X-Forwarded-For
  absl::Status s = node->Connect(absl::Seconds(10));
  ASSERT_FALSE(s.ok()) << "paired as a loopback device although the proxy named no client";
  ASSERT_TRUE(node->connect_error().has_value()) << s;
  EXPECT_EQ(node->connect_error()->details["code"], "PAIRING_REQUIRED");
}

TEST(SecurityFloodTest, BadHandshakeFloodFromOneAddressDoesNotStarveOthers) {
  Cluster c;
  c.StartRegistry({"--auto_approve"});
  c.StartEdge("edgeA",
              {"--handshake_rate_per_ip=20", "--handshake_burst=20", "--failed_handshake_cost=5"});
  std::atomic<bool> stop{false};
  std::atomic<int> attempts{0};
  std::thread flood([&] {
    DeviceCredentials mallory;
    edge::client::ConnectRequestOptions opts;
    const absl::Time end = absl::Now() + absl::Seconds(6);
    while (!stop.load() && absl::Now() < end && attempts.load() < 3000) {
      auto s = c.Node(mallory, "edgeA", [](edge::client::NodeClientOptions& o) {
        o.auto_connect = false;
        o.source_address = "127.0.0.2";
        o.record_frames = false;
      });
      ++attempts;
      auto ch = s->WaitForChallenge(absl::Milliseconds(500));
      if (ch.ok()) {
        json p = edge::client::BuildConnectParams(opts, mallory.identity(), *ch,
                                                  std::string("wrong-token"), std::nullopt);
        p["device"]["signature"] = "AAAA";  // a bad proof
        (void)s->SendConnect(p);
        (void)s->WaitForClose(absl::Milliseconds(500));
      }
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the flood is under way
  std::vector<std::unique_ptr<DeviceCredentials>> creds;
  std::vector<std::unique_ptr<edge::client::NodeClient>> nodes;
  for (int i = 0; i < 10; ++i) {
    creds.push_back(std::make_unique<DeviceCredentials>());
    auto node = c.Node(*creds.back(), "edgeA");
    const absl::Time start = absl::Now();
    absl::Status s = node->Connect(absl::Seconds(5));
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_LT(absl::Now() - start, absl::Seconds(1)) << "node " << i << " was slowed down";
    nodes.push_back(std::move(node));
  }
  stop = true;
  flood.join();
  const std::string m = testing::HttpGet(testing::MetricsPort(c.edge("edgeA")), "/metrics");
  EXPECT_GT(testing::MetricValue(m, "tether_edge_handshakes_rate_limited_total"), 0) << m;
  EXPECT_GT(attempts.load(), 20);
  for (auto& cr : creds) EXPECT_TRUE(c.Connected(cr->node_id()));
}

TEST(SecurityTlsTest, MutualTlsForEdgesAndTlsForTheApi) {
  testing::Pki pki;
  ASSERT_TRUE(testing::MakePki(testing::TempPath("pki"), &pki));
  Cluster c;
  c.StartRegistry({"--auto_approve", "--tls_cert_file=" + pki.Path("server.pem"),
                   "--tls_key_file=" + pki.Path("server.key"),
                   "--edge_client_ca_file=" + pki.Path("ca.pem"), "--edge_listen=127.0.0.1:0"});
  const std::string log = c.registry().Log();
  const size_t at = log.find("EdgeLink on port ");
  ASSERT_NE(at, std::string::npos) << log;
  const std::string edge_target = "127.0.0.1:" + std::to_string(std::atoi(log.c_str() + at + 17));
  const std::vector<std::string> tls = {"--registry=" + edge_target,
                                        "--registry_ca_file=" + pki.Path("ca.pem"),
                                        "--registry_tls_name=localhost"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), tls.begin(), tls.end());
    return extra;
  };
  c.StartEdge("good", with({"--registry_cert_file=" + pki.Path("edge.pem"),
                            "--registry_key_file=" + pki.Path("edge.key")}));

  // An edge whose certificate comes from another CA never attaches, even with the secret.
  testing::ChildProcess rogue(
      "ws_edge/ws_edge",
      with({"--listen=127.0.0.1:0", "--edge_id=rogue", "--edge_secret_file=" + c.edge_secret_file(),
            "--registry_cert_file=" + pki.Path("rogue.pem"),
            "--registry_key_file=" + pki.Path("rogue.key")}),
      {std::string("TETHER_SHARED_TOKEN=") + testing::kTestToken});
  // An edge with no certificate at all neither.
  testing::ChildProcess bare("ws_edge/ws_edge",
                             with({"--listen=127.0.0.1:0", "--edge_id=bare",
                                   "--edge_secret_file=" + c.edge_secret_file()}),
                             {std::string("TETHER_SHARED_TOKEN=") + testing::kTestToken});
  ASSERT_TRUE(rogue.WaitForPort(absl::Seconds(20)).ok());
  ASSERT_TRUE(bare.WaitForPort(absl::Seconds(20)).ok());
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_EQ(rogue.Log().find("registry_link_up"), std::string::npos) << rogue.Log();
  EXPECT_EQ(bare.Log().find("registry_link_up"), std::string::npos) << bare.Log();

  // The public API over TLS, verified against the test CA, with a token.
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = testing::ReadFile(pki.Path("ca.pem"));
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  auto api = v1::Registry::NewStub(grpc::CreateCustomChannel(
      "127.0.0.1:" + std::to_string(c.registry_port()), grpc::SslCredentials(ssl), args));
  // A node through the good edge is visible and callable.
  DeviceCredentials creds;
  auto node = c.ReadyNode(creds, "good");
  v1::GetNodeRequest q;
  q.set_node_id(creds.node_id());
  v1::Node n;
  grpc::Status s = api->GetNode(AuthedContext().get(), q, &n);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(n.connected());
  EXPECT_EQ(n.edge_id(), "good");
  // Plaintext to a TLS port fails.
  auto plain = v1::Registry::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(c.registry_port()), grpc::InsecureChannelCredentials()));
  v1::ListNodesResponse r;
  EXPECT_FALSE(plain->ListNodes(AuthedContext("", absl::Seconds(2)).get(), {}, &r).ok());
}

}  // namespace
}  // namespace tether
