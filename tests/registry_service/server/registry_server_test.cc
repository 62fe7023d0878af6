// The registry server over a real loopback gRPC channel: a fake edge drives EdgeLink, a
// client drives the public API.
#include "registry_service/server/registry_server.h"

#include <grpcpp/grpcpp.h>

#include <future>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "proto/tether/v1/registry.grpc.pb.h"
#include "tests/testing/fake_edge.h"

namespace tether::registry {
namespace {

using ::tether::testing::FakeEdge;

class RegistryServerTest : public ::testing::Test {
 protected:
  void StartServer(bool auto_approve = true) {
    ServerOptions o;
    o.listen = "127.0.0.1:0";
    o.store.auto_approve_all = auto_approve;
    o.store.superseded_grace_ms = 500;
    o.dev_mode = true;
    server_ = std::make_unique<RegistryServer>(o);
    auto port = server_->Start();
    ASSERT_TRUE(port.ok()) << port.status();
    target_ = "127.0.0.1:" + std::to_string(*port);
    api_ = v1::Registry::NewStub(grpc::CreateChannel(target_, grpc::InsecureChannelCredentials()));
  }

  void SetUp() override { StartServer(); }

  // Calls InvokeNode on another thread.
  std::future<std::pair<grpc::Status, v1::InvokeNodeResponse>> InvokeAsync(
      const std::string& node_id, int64_t timeout_ms = 5000, int64_t deadline_ms = 10000,
      std::string* error_code = nullptr) {
    return std::async(std::launch::async, [=]() {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(deadline_ms));
      v1::InvokeNodeRequest req;
      req.set_node_id(node_id);
      req.set_command("system.which");
      req.set_params_json(R"({"bins":["sh"]})");
      req.set_timeout_ms(timeout_ms);
      v1::InvokeNodeResponse resp;
      grpc::Status s = api_->InvokeNode(&ctx, req, &resp);
      if (error_code != nullptr) {
        auto md = ctx.GetServerTrailingMetadata();
        auto it = md.find("tether-error-code");
        if (it != md.end()) *error_code = std::string(it->second.data(), it->second.size());
      }
      return std::make_pair(s, resp);
    });
  }

  v1::Node GetNode(const std::string& node_id) {
    grpc::ClientContext ctx;
    v1::GetNodeRequest req;
    req.set_node_id(node_id);
    v1::Node node;
    EXPECT_TRUE(api_->GetNode(&ctx, req, &node).ok());
    return node;
  }

  std::unique_ptr<RegistryServer> server_;
  std::string target_;
  std::unique_ptr<v1::Registry::Stub> api_;
};

TEST_F(RegistryServerTest, InvokeRoundTripThroughTheEdgeLink) {
  FakeEdge edge(target_, "edgeA");
  ASSERT_TRUE(edge.Attach().has_value());
  auto granted = edge.Open("c1", "n1");
  ASSERT_TRUE(granted.has_value());
  EXPECT_TRUE(granted->granted());
  EXPECT_GT(granted->generation(), 0u);
  EXPECT_FALSE(granted->device_token().empty());
  EXPECT_TRUE(GetNode("n1").connected());
  EXPECT_EQ(GetNode("n1").edge_id(), "edgeA");

  auto call = InvokeAsync("n1");
  auto inv = edge.Next([](const v1::RegistryMessage& m) { return m.has_invoke(); });
  ASSERT_TRUE(inv.has_value());
  EXPECT_EQ(inv->invoke().conn_id(), "c1");
  EXPECT_EQ(inv->invoke().command(), "system.which");
  EXPECT_EQ(inv->invoke().params_json(), R"({"bins":["sh"]})");
  EXPECT_GT(inv->invoke().timeout_ms(), 4000);
  EXPECT_LE(inv->invoke().timeout_ms(), 5000);
  // A result claiming the right invoke but from another connection is ignored.
  EXPECT_EQ(edge.Result("c-other", inv->invoke(), "{}"), std::optional<bool>(true));
  EXPECT_EQ(edge.Result("c1", inv->invoke(), R"({"sh":"/bin/sh"})"), std::optional<bool>(false));
  auto [status, resp] = call.get();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(resp.payload_json(), R"({"sh":"/bin/sh"})");
  EXPECT_EQ(resp.conn_id(), "c1");
  EXPECT_EQ(resp.effective_timeout_ms(), 5000);
  // A duplicate result is ignored too.
  EXPECT_EQ(edge.Result("c1", inv->invoke(), "{}"), std::optional<bool>(true));
}

TEST_F(RegistryServerTest, TypedErrorsAndCallerDeadline) {
  std::string code;
  auto [status, resp] = InvokeAsync("nobody", 5000, 10000, &code).get();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(code, "NOT_CONNECTED");

  FakeEdge edge(target_, "edgeA");
  ASSERT_TRUE(edge.Attach().has_value());
  ASSERT_TRUE(edge.Open("c1", "n1")->granted());
  const auto start = std::chrono::steady_clock::now();
  auto [s2, r2] = InvokeAsync("n1", 30000, /*deadline_ms=*/300).get();
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(s2.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_LT(took, std::chrono::seconds(3));
  auto inv = edge.Next([](const v1::RegistryMessage& m) { return m.has_invoke(); });
  ASSERT_TRUE(inv.has_value());
  EXPECT_LE(inv->invoke().timeout_ms(), 310);  // the caller's deadline (gRPC rounds it up)
  // The node is told to stop.
  auto cancel = edge.Next([](const v1::RegistryMessage& m) { return m.has_cancel(); });
  ASSERT_TRUE(cancel.has_value());

  std::string code3;
  auto [s3, r3] = InvokeAsync("n1", 200, 10000, &code3).get();
  EXPECT_EQ(s3.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(code3, "TIMEOUT");
}

TEST_F(RegistryServerTest, LateCloseOfReplacedConnectionAndPresenceWatchWithResume) {
  grpc::ClientContext pctx;
  v1::GetPresenceResponse snap;
  ASSERT_TRUE(api_->GetPresence(&pctx, v1::GetPresenceRequest(), &snap).ok());

  FakeEdge edge(target_, "edgeA");
  ASSERT_TRUE(edge.Attach().has_value());
  ASSERT_TRUE(edge.Open("old", "n1")->granted());
  ASSERT_TRUE(edge.Open("new", "n1")->granted());
  // The old connection is retired by the registry; its late close changes nothing.
  auto retire = edge.Next(
      [](const v1::RegistryMessage& m) { return m.has_close() && m.close().conn_id() == "old"; });
  ASSERT_TRUE(retire.has_value());
  EXPECT_EQ(retire->close().reason(), "superseded");
  edge.Close("old");
  auto call = InvokeAsync("n1");
  auto inv = edge.Next([](const v1::RegistryMessage& m) { return m.has_invoke(); });
  ASSERT_TRUE(inv.has_value());
  EXPECT_EQ(inv->invoke().conn_id(), "new");
  EXPECT_EQ(edge.Result("new", inv->invoke(), "1"), std::optional<bool>(false));
  EXPECT_TRUE(call.get().first.ok());
  EXPECT_TRUE(GetNode("n1").connected());
  edge.Close("new");

  // Watch from the snapshot: connected, replaced, disconnected — no false disconnect.
  grpc::ClientContext wctx;
  v1::WatchPresenceRequest wreq;
  wreq.set_from_revision(snap.revision());
  auto reader = api_->WatchPresence(&wctx, wreq);
  std::vector<v1::PresenceEvent> got;
  v1::PresenceEvent e;
  while (got.size() < 3 && reader->Read(&e)) got.push_back(e);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].kind(), v1::PresenceEvent::CONNECTED);
  EXPECT_EQ(got[1].kind(), v1::PresenceEvent::REPLACED);
  EXPECT_EQ(got[2].kind(), v1::PresenceEvent::DISCONNECTED);
  EXPECT_EQ(got[2].conn_id(), "new");
  EXPECT_EQ(got[2].revision(), snap.revision() + 3);
  wctx.TryCancel();

  // Resume from the middle: exactly the remaining event, then live ones.
  grpc::ClientContext w2;
  wreq.set_from_revision(got[1].revision());
  auto r2 = api_->WatchPresence(&w2, wreq);
  ASSERT_TRUE(r2->Read(&e));
  EXPECT_EQ(e.revision(), got[2].revision());
  ASSERT_TRUE(edge.Open("again", "n1")->granted());
  ASSERT_TRUE(r2->Read(&e));
  EXPECT_EQ(e.kind(), v1::PresenceEvent::CONNECTED);
  EXPECT_EQ(e.revision(), got[2].revision() + 1);
  w2.TryCancel();

  // A revision from the future (e.g. before a registry restart) is refused clearly.
  grpc::ClientContext w3;
  wreq.set_from_revision(snap.revision() + 1'000'000);
  auto r3 = api_->WatchPresence(&w3, wreq);
  EXPECT_FALSE(r3->Read(&e));
  EXPECT_EQ(r3->Finish().error_code(), grpc::StatusCode::OUT_OF_RANGE);
}

TEST_F(RegistryServerTest, EdgeStreamLossFailsInvokesFastAndLeaseCarriesConnections) {
  auto edge = std::make_unique<FakeEdge>(target_, "edgeA");
  ASSERT_TRUE(edge->Attach().has_value());
  ASSERT_TRUE(edge->Open("c1", "n1")->granted());
  std::string code;
  auto call = InvokeAsync("n1", 30000, 30000, &code);
  ASSERT_TRUE(edge->Next([](const v1::RegistryMessage& m) { return m.has_invoke(); }));
  const auto start = std::chrono::steady_clock::now();
  edge.reset();  // the stream drops
  auto [status, resp] = call.get();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_EQ(code, "DISCONNECTED");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  // Until the lease lapses the node is still listed (the edge may be back with a resync).
  EXPECT_TRUE(GetNode("n1").connected());
}

class PairingServerTest : public RegistryServerTest {
 protected:
  void SetUp() override { StartServer(/*auto_approve=*/false); }
};

TEST_F(PairingServerTest, UnpairedDeviceIsRefusedThenApprovedThroughTheApi) {
  FakeEdge edge(target_, "edgeA");
  ASSERT_TRUE(edge.Attach().has_value());
  auto refused = edge.Open("c1", "n1");
  ASSERT_TRUE(refused.has_value());
  EXPECT_FALSE(refused->granted());
  EXPECT_EQ(refused->error_code(), "NOT_PAIRED");
  EXPECT_EQ(refused->details_code(), "PAIRING_REQUIRED");

  grpc::ClientContext lctx;
  v1::ListPairingRequestsResponse pending;
  ASSERT_TRUE(api_->ListPairingRequests(&lctx, {}, &pending).ok());
  ASSERT_EQ(pending.requests_size(), 1);
  EXPECT_EQ(pending.requests(0).node_id(), "n1");
  EXPECT_EQ(pending.requests(0).request_id(), refused->pairing_request_id());

  grpc::ClientContext actx;
  v1::ApprovePairingRequest approve;
  approve.set_request_id(refused->pairing_request_id());
  approve.set_approved_by("ops");
  v1::ApprovePairingResponse approved;
  ASSERT_TRUE(api_->ApprovePairing(&actx, approve, &approved).ok());
  EXPECT_EQ(approved.device().approved_by(), "ops");

  auto granted = edge.Open("c2", "n1");
  EXPECT_TRUE(granted->granted());
  grpc::ClientContext rctx;
  v1::RevokeDeviceRequest revoke;
  revoke.set_node_id("n1");
  v1::RevokeDeviceResponse revoked;
  ASSERT_TRUE(api_->RevokeDevice(&rctx, revoke, &revoked).ok());
  EXPECT_EQ(revoked.closed_connections(), 1);
  auto close = edge.Next([](const v1::RegistryMessage& m) { return m.has_close(); });
  ASSERT_TRUE(close.has_value());
  EXPECT_EQ(close->close().reason(), "revoked");
  EXPECT_FALSE(GetNode("n1").connected());
}

}  // namespace
}  // namespace tether::registry
