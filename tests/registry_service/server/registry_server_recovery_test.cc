// The registry server in recovery (memory store, an empty table at start), over real loopback
// gRPC and HTTP: /readyz 503, gRPC health NOT_SERVING for tether.v1.Registry, ownership reads and
// invokes UNAVAILABLE with `retry-after-ms`, registrations refused as retryable; once the expected
// edge resynced: ready, serving, and the resynced node is connected without ever having been
// disconnected.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "proto/tether/v1/registry.grpc.pb.h"
#include "registry_service/server/registry_server.h"
#include "tests/testing/cluster.h"
#include "tests/testing/fake_edge.h"

namespace tether::registry {
namespace {

using ::tether::testing::FakeEdge;
using ::tether::testing::HttpGet;

// grpc.health.v1.Health/Check for `service`; the raw response bytes (Debian ships no
// generated health stubs: field 1 varint, 1 SERVING, 2 NOT_SERVING).
std::string HealthCheck(const std::string& target, const std::string& service) {
  grpc::GenericStub stub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  // HealthCheckRequest{service}: field 1, length-delimited (names here are < 128 bytes).
  std::string req_bytes;
  if (!service.empty())
    req_bytes = std::string("\x0a") + static_cast<char>(service.size()) + service;
  grpc::Slice slice(req_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  grpc::Status status = done.get_future().get();
  if (!status.ok()) return "error " + status.error_message();
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (response.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices)
      bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return bytes;
}
const std::string kServing("\x08\x01", 2);
const std::string kNotServing("\x08\x02", 2);

// "HTTP/1.x NNN ..." (the body of a 503 names numbers too).
std::string StatusLine(const std::string& response) {
  return response.substr(0, response.find('\r'));
}

std::string Trailer(const grpc::ClientContext& ctx, const std::string& key) {
  auto md = ctx.GetServerTrailingMetadata();
  auto it = md.find(key);
  return it == md.end() ? "" : std::string(it->second.data(), it->second.size());
}

TEST(RegistryServerRecovery, NotServingUntilTheExpectedEdgeResynced) {
  ServerOptions o;
  o.listen = "127.0.0.1:0";
  o.store.auto_approve_all = true;
  o.dev_mode = true;
  o.metrics_port = 0;
  o.tick_ms = 20;
  o.registry.recovery_grace_ms = 120'000;  // longer than the test: only the resync ends it
  o.registry.recovery_edges = 1;
  RegistryServer server(o);
  auto port = server.Start();
  ASSERT_TRUE(port.ok()) << port.status();
  const std::string target = "127.0.0.1:" + std::to_string(*port);
  const uint64_t head_at_start = server.store().HeadRevision();
  auto api = v1::Registry::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));

  EXPECT_EQ(StatusLine(HttpGet(server.metrics_port(), "/readyz")).substr(9, 3), "503");
  EXPECT_EQ(HealthCheck(target, kApiHealthService), kNotServing);
  EXPECT_EQ(HealthCheck(target, ""), kServing);  // alive: liveness probes must not restart it
  {
    grpc::ClientContext ctx;
    v1::ListNodesResponse resp;
    grpc::Status s = api->ListNodes(&ctx, v1::ListNodesRequest(), &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_NE(s.error_message().find("recovering"), std::string::npos) << s.error_message();
    EXPECT_EQ(Trailer(ctx, "retry-after-ms"), "1000");
  }
  {
    grpc::ClientContext ctx;
    v1::GetPresenceResponse resp;
    EXPECT_EQ(api->GetPresence(&ctx, v1::GetPresenceRequest(), &resp).error_code(),
              grpc::StatusCode::UNAVAILABLE);
  }
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::InvokeNodeRequest req;
    req.set_node_id("n1");
    req.set_command("system.which");
    v1::InvokeNodeResponse resp;
    grpc::Status s = api->InvokeNode(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_FALSE(Trailer(ctx, "retry-after-ms").empty());
  }

  FakeEdge edge(target, "edgeA");
  ASSERT_TRUE(edge.Attach().has_value());
  // A new handshake during recovery is refused as retryable.
  auto refused = edge.Open("c9", "n9");
  ASSERT_TRUE(refused.has_value());
  EXPECT_FALSE(refused->granted());
  EXPECT_EQ(refused->error_code(), "UNAVAILABLE");
  EXPECT_EQ(HealthCheck(target, kApiHealthService), kNotServing);

  // The edge reports the connection it kept through the registry's restart.
  v1::EdgeMessage m;
  auto* l = m.mutable_resync()->add_connections();
  l->set_generation(42);
  auto* opened = l->mutable_opened();
  opened->set_conn_id("c1");
  opened->set_node_id("n1");
  opened->set_public_key("pk-n1");
  opened->set_shared_token_ok(true);
  opened->mutable_client()->set_client_id("node-host");
  opened->mutable_client()->add_commands("system.which");
  ASSERT_TRUE(edge.Send(m));
  ASSERT_TRUE(edge.Next([](const v1::RegistryMessage& r) { return r.has_resync_ack(); }));

  // The ticker flips gRPC health within a tick or two.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (HealthCheck(target, kApiHealthService) != kServing &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(HealthCheck(target, kApiHealthService), kServing);
  EXPECT_EQ(StatusLine(HttpGet(server.metrics_port(), "/readyz")).substr(9, 3), "200");
  {
    grpc::ClientContext ctx;
    v1::GetNodeRequest req;
    req.set_node_id("n1");
    v1::Node node;
    ASSERT_TRUE(api->GetNode(&ctx, req, &node).ok());
    EXPECT_TRUE(node.connected());
    EXPECT_EQ(node.conn_id(), "c1");
  }
  {
    // The presence history since the start holds the resync's CONNECTED and no DISCONNECTED.
    auto events = server.store().ReadPresence(head_at_start, 100);
    ASSERT_TRUE(events.ok()) << events.status();
    int connected = 0, disconnected = 0;
    for (const PresenceEvent& e : *events) {
      connected += e.kind == PresenceKind::kConnected;
      disconnected += e.kind == PresenceKind::kDisconnected;
    }
    EXPECT_EQ(connected, 1);
    EXPECT_EQ(disconnected, 0);
  }
  auto granted = edge.Open("c2", "n2");
  ASSERT_TRUE(granted.has_value());
  EXPECT_TRUE(granted->granted());
  server.Shutdown();
}

}  // namespace
}  // namespace tether::registry
