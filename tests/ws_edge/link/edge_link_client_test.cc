// EdgeLinkClient against a minimal in-process EdgeLink server: how fast it re-attaches.
#include "ws_edge/link/edge_link_client.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "proto/tether/v1/edge_link.grpc.pb.h"

namespace tether::edge {
namespace {

// Answers an attach with an ack asking for `heartbeat_ms` (and then `after_ack`, if set, and a
// pause of `pause_ms` before reading on), then reads until the stream ends, recording what it
// read with batches taken apart.
class FakeRegistry final : public v1::EdgeLink::Service {
 public:
  explicit FakeRegistry(int64_t heartbeat_ms) : heartbeat_ms_(heartbeat_ms) {}
  grpc::Status Connect(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::RegistryMessage, v1::EdgeMessage>* stream) override {
    v1::EdgeMessage in;
    while (stream->Read(&in)) {
      if (in.has_batch()) {
        absl::MutexLock lock(&mu_);
        ++batches_;
        for (const auto& m : in.batch().messages()) {
          received_.push_back(m);
          in_batch_.push_back(true);
        }
        continue;
      }
      if (!in.has_attach()) {
        absl::MutexLock lock(&mu_);
        received_.push_back(in);
        in_batch_.push_back(false);
        continue;
      }
      v1::RegistryMessage ack;
      ack.mutable_attach_ack()->set_accepts_batches(accepts_batches);
      ack.mutable_attach_ack()->set_lease_ttl_ms(4 * heartbeat_ms_);
      ack.mutable_attach_ack()->set_heartbeat_interval_ms(heartbeat_ms_);
      if (!stream->Write(ack)) break;
      if (after_ack.has_value() && !stream->Write(*after_ack)) break;
      absl::SleepFor(absl::Milliseconds(pause_ms));
    }
    return grpc::Status::OK;
  }

  // What was read that is not a heartbeat, in order, and whether it came inside a batch.
  std::vector<std::pair<v1::EdgeMessage, bool>> Received() {
    absl::MutexLock lock(&mu_);
    std::vector<std::pair<v1::EdgeMessage, bool>> out;
    for (size_t i = 0; i < received_.size(); ++i) {
      if (!received_[i].has_heartbeat()) out.push_back({received_[i], in_batch_[i]});
    }
    return out;
  }
  int batches() {
    absl::MutexLock lock(&mu_);
    return batches_;
  }

  std::optional<v1::RegistryMessage> after_ack;
  int64_t pause_ms = 0;
  bool accepts_batches = false;

 private:
  const int64_t heartbeat_ms_;
  absl::Mutex mu_;
  std::vector<v1::EdgeMessage> received_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> in_batch_ ABSL_GUARDED_BY(mu_);
  int batches_ ABSL_GUARDED_BY(mu_) = 0;
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

// What queues while a write is in flight goes out batched, in order, and the registry's
// batches are taken apart, in order. The fake registry reads nothing for a while after the
// attach, so flow control holds the first writes and the rest queue up behind them.
TEST(EdgeLinkClientTest, QueuedMessagesGoOutBatchedInOrderAndBatchesInAreTakenApart) {
  FakeRegistry service(/*heartbeat_ms=*/5'000);
  service.pause_ms = 300;
  service.accepts_batches = true;
  v1::RegistryMessage batch;
  for (uint64_t id : {7, 8, 9}) {
    batch.mutable_batch()->add_messages()->mutable_result_ack()->set_request_id(id);
  }
  service.after_ack = batch;
  int port = 0;
  auto server = Serve(service, &port);
  ASSERT_NE(server, nullptr);

  Ups ups;
  LinkCallbacks callbacks = Callbacks(ups);
  absl::Mutex mu;
  std::vector<uint64_t> acks;
  callbacks.on_message = [&](const v1::RegistryMessage& m) {
    absl::MutexLock lock(&mu);
    acks.push_back(m.result_ack().request_id());
  };
  LinkOptions o;
  o.target = "127.0.0.1:" + std::to_string(port);
  o.edge_id = "edge-test";
  o.epoch = "epoch-1";
  EdgeLinkClient link(o, std::move(callbacks));
  link.Start();
  ASSERT_TRUE(WaitUps(ups, 1, absl::Seconds(10)));

  constexpr int kResults = 400;
  for (int i = 0; i < kResults; ++i) {
    v1::EdgeMessage m;
    m.mutable_result()->set_request_id(i);
    m.mutable_result()->set_payload_json(std::string(2048, 'x'));
    ASSERT_TRUE(link.Send(m)) << i;
  }
  v1::EdgeMessage drain;
  drain.mutable_drain();
  ASSERT_TRUE(link.Send(drain));  // never batched: after every result, alone

  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (service.Received().size() < kResults + 1 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  auto got = service.Received();
  ASSERT_EQ(got.size(), kResults + 1u);
  for (int i = 0; i < kResults; ++i) {
    ASSERT_EQ(got[i].first.result().request_id(), uint64_t(i)) << i;
  }
  EXPECT_TRUE(got.back().first.has_drain());
  EXPECT_FALSE(got.back().second) << "a drain travelled in a batch";
  EXPECT_GT(service.batches(), 0);
  {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(acks, (std::vector<uint64_t>{7, 8, 9}));
  }
  link.Stop();
  server->Shutdown(std::chrono::system_clock::now());
}

// A registry that does not say it accepts batches (an older version) never gets one.
TEST(EdgeLinkClientTest, NoBatchesToARegistryThatDoesNotAcceptThem) {
  FakeRegistry service(/*heartbeat_ms=*/5'000);
  service.pause_ms = 300;
  int port = 0;
  auto server = Serve(service, &port);
  ASSERT_NE(server, nullptr);
  Ups ups;
  LinkOptions o;
  o.target = "127.0.0.1:" + std::to_string(port);
  o.edge_id = "edge-test";
  o.epoch = "epoch-1";
  EdgeLinkClient link(o, Callbacks(ups));
  link.Start();
  ASSERT_TRUE(WaitUps(ups, 1, absl::Seconds(10)));
  constexpr int kResults = 400;
  for (int i = 0; i < kResults; ++i) {
    v1::EdgeMessage m;
    m.mutable_result()->set_request_id(i);
    m.mutable_result()->set_payload_json(std::string(2048, 'x'));
    ASSERT_TRUE(link.Send(m)) << i;
  }
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (service.Received().size() < kResults && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(service.Received().size(), size_t{kResults});
  EXPECT_EQ(service.batches(), 0);
  link.Stop();
  server->Shutdown(std::chrono::system_clock::now());
}

}  // namespace
}  // namespace tether::edge
