// EdgeLinkClient against a minimal in-process EdgeLink server: how fast it re-attaches.
#include "ws_edge/link/edge_link_client.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "proto/tether/v1/edge_link.grpc.pb.h"

namespace tether::edge {
namespace {

// Answers an attach with an ack asking for `heartbeat_ms`, then reads until the stream ends.
class FakeRegistry final : public v1::EdgeLink::Service {
 public:
  explicit FakeRegistry(int64_t heartbeat_ms) : heartbeat_ms_(heartbeat_ms) {}
  grpc::Status Connect(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::RegistryMessage, v1::EdgeMessage>* stream) override {
    v1::EdgeMessage in;
    while (stream->Read(&in)) {
      if (!in.has_attach()) continue;
      v1::RegistryMessage ack;
      ack.mutable_attach_ack()->set_lease_ttl_ms(4 * heartbeat_ms_);
      ack.mutable_attach_ack()->set_heartbeat_interval_ms(heartbeat_ms_);
      if (!stream->Write(ack)) break;
    }
    return grpc::Status::OK;
  }

 private:
  const int64_t heartbeat_ms_;
};

std::unique_ptr<grpc::Server> Serve(FakeRegistry& service, int* port) {
  grpc::ServerBuilder b;
  b.AddListeningPort("127.0.0.1:" + std::to_string(*port), grpc::InsecureServerCredentials(), port);
  b.RegisterService(&service);
  return b.BuildAndStart();
}

struct Ups {
  absl::Mutex mu;
  int ups ABSL_GUARDED_BY(mu) = 0;
  int downs ABSL_GUARDED_BY(mu) = 0;
};

LinkCallbacks Callbacks(Ups& u) {
  LinkCallbacks c;
  c.post = [](std::function<void()> f) { f(); };
  c.on_up = [&u] {
    absl::MutexLock lock(&u.mu);
    ++u.ups;
  };
  c.on_down = [&u] {
    absl::MutexLock lock(&u.mu);
    ++u.downs;
  };
  c.on_message = [](const v1::RegistryMessage&) {};
  return c;
}

bool WaitUps(Ups& u, int n, absl::Duration timeout) {
  absl::MutexLock lock(&u.mu);
  auto done = [&u, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(u.mu) { return u.ups >= n; };
  return u.mu.AwaitWithTimeout(absl::Condition(&done), timeout);
}

// Found by the chaos soak: the retry delay grew to backoff_max_ms (5 s) and the channel's own
// connect backoff (up to 2 s) came on top, whatever the lease. A link cut of 1.8 s with a 5 s
// lease left an edge unattached for 4.9 s: the lease lapsed and every node of the edge got a
// false DISCONNECTED (edge_lost), then CONNECTED again from the resync. A link that comes back
// must be re-attached within about half a heartbeat interval (the registry's lease is four).
TEST(EdgeLinkClientTest, ReattachesWithinHalfAHeartbeatOfTheRegistryComingBack) {
  FakeRegistry service(/*heartbeat_ms=*/200);
  int port = 0;
  auto server = Serve(service, &port);
  ASSERT_NE(server, nullptr);
  ASSERT_GT(port, 0);

  Ups ups;
  LinkOptions o;
  o.target = "127.0.0.1:" + std::to_string(port);
  o.edge_id = "edge-test";
  o.epoch = "epoch-1";
  // Large on purpose: the registry's heartbeat, not this, must bound the wait.
  o.backoff_initial_ms = 8'000;
  o.backoff_max_ms = 20'000;
  EdgeLinkClient link(o, Callbacks(ups));
  link.Start();
  ASSERT_TRUE(WaitUps(ups, 1, absl::Seconds(10)));

  // The registry goes away for 1.5 s (several failed attempts), then comes back on its port.
  server->Shutdown(std::chrono::system_clock::now());
  server.reset();
  absl::SleepFor(absl::Milliseconds(1500));
  const absl::Time back = absl::Now();
  server = Serve(service, &port);
  ASSERT_NE(server, nullptr);

  ASSERT_TRUE(WaitUps(ups, 2, absl::Seconds(15)));
  const absl::Duration took = absl::Now() - back;
  // Half a heartbeat (100 ms) plus a connect and the attach round trip, with room for a busy
  // machine; the old policy slept 4..8 s after the lost stream (backoff_initial_ms), so 2.5..6.5 s
  // here.
  EXPECT_LT(took, absl::Milliseconds(1000))
      << "re-attached " << took << " after the registry came back";
  link.Stop();
  server->Shutdown(std::chrono::system_clock::now());
}

}  // namespace
}  // namespace tether::edge
