// EdgeLinkService over a real loopback gRPC channel, on a store that stalls when told to (as
// Redis does under a storm): a stalled decision holds up only its own lane, and a registration
// whose socket's close was read before it ran is not decided.
#include "registry_service/server/edge_link_service.h"

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/hash/hash.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "gtest/gtest.h"
#include "registry_service/store/memory_store.h"
#include "tests/testing/fake_edge.h"
#include "tests/testing/stalling_store.h"

namespace tether::registry {
namespace {

using ::tether::testing::FakeEdge;
using ::tether::testing::StallingStore;

class EdgeLinkServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    StoreOptions o;
    o.auto_approve_all = true;
    store_ = std::make_unique<StallingStore>(o);
    registry_ = std::make_unique<Registry>(*store_, clock_, RegistryOptions{});
    service_ = std::make_unique<EdgeLinkService>(*registry_, auth_, false, 10'000, 500);
    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(service_.get());
    server_ = b.BuildAndStart();
    ASSERT_NE(port, 0);
    edge_ = std::make_unique<FakeEdge>("127.0.0.1:" + std::to_string(port), "edgeA");
    ASSERT_TRUE(edge_->Attach().has_value());
  }
  void TearDown() override {
    store_->Stall(false, false);
    edge_.reset();
    server_->Shutdown();
  }

  // A conn id whose lane differs from `other`'s (or equals it).
  static std::string ConnIn(bool same_lane_as, const std::string& other) {
    const size_t lane = absl::HashOf(other) % EdgeLinkService::kLanes;
    for (int i = 0;; ++i) {
      std::string c = "conn-" + std::to_string(i);
      if ((absl::HashOf(c) % EdgeLinkService::kLanes == lane) == same_lane_as && c != other) {
        return c;
      }
    }
  }

  void SendEvent(const std::string& conn) {
    v1::EdgeMessage m;
    m.mutable_event()->set_conn_id(conn);
    m.mutable_event()->set_event("ping");
    ASSERT_TRUE(edge_->Send(m));
  }

  bool WaitStalled(int n) {
    for (int i = 0; i < 500; ++i) {
      if (store_->stalled() >= n) return true;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  }

  common::RealClock clock_;
  EdgeAuth auth_{""};
  std::unique_ptr<StallingStore> store_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<EdgeLinkService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<FakeEdge> edge_;
};

TEST_F(EdgeLinkServiceTest, AStalledDecisionHoldsUpOnlyItsOwnLane) {
  const std::string stuck = "conn-stuck";
  store_->Stall(/*registers=*/false, /*touches=*/true);
  SendEvent(stuck);  // its lane now waits for the store
  ASSERT_TRUE(WaitStalled(1));
  // A registration in another lane is decided and answered meanwhile.
  auto other = edge_->Open(ConnIn(false, stuck), "n1");
  ASSERT_TRUE(other.has_value());
  EXPECT_TRUE(other->granted());
  // One in the stalled lane waits for it.
  v1::EdgeMessage m;
  auto* o = m.mutable_opened();
  o->set_request_id(77);
  o->set_conn_id(ConnIn(true, stuck));
  o->set_node_id("n2");
  o->set_shared_token_ok(true);
  ASSERT_TRUE(edge_->Send(m));
  EXPECT_FALSE(edge_
                   ->Next([](const v1::RegistryMessage& r) { return r.has_register_outcome(); },
                          absl::Milliseconds(300))
                   .has_value());
  store_->Stall(false, false);
  auto late = edge_->Next([](const v1::RegistryMessage& r) { return r.has_register_outcome(); });
  ASSERT_TRUE(late.has_value());
  EXPECT_TRUE(late->register_outcome().granted());
}

// Overload: the edge gave up on a socket whose registration is still queued behind a slow
// decision, and said so (closed). The registration is not decided: the node keeps its working
// old socket instead of being moved to a dead one (which would then close as a false
// DISCONNECTED).
TEST_F(EdgeLinkServiceTest, ARegistrationWhoseCloseWasReadFirstIsNotDecided) {
  auto first = edge_->Open("conn-old", "n1");
  ASSERT_TRUE(first.has_value() && first->granted());
  const std::string fresh = "conn-new";
  store_->Stall(false, /*touches=*/true);
  SendEvent(ConnIn(true, fresh));  // stalls the lane `fresh` will use
  ASSERT_TRUE(WaitStalled(1));
  v1::EdgeMessage m;
  auto* o = m.mutable_opened();
  o->set_request_id(78);
  o->set_conn_id(fresh);
  o->set_node_id("n1");
  o->set_shared_token_ok(true);
  ASSERT_TRUE(edge_->Send(m));
  edge_->Close(fresh);
  absl::SleepFor(absl::Milliseconds(200));  // both read (reading does not wait for the lane)
  store_->Stall(false, false);
  auto outcome = edge_->Next([](const v1::RegistryMessage& r) { return r.has_register_outcome(); });
  ASSERT_TRUE(outcome.has_value());
  EXPECT_FALSE(outcome->register_outcome().granted());
  auto node = store_->GetNode("n1");
  ASSERT_TRUE(node.ok());
  EXPECT_TRUE(node->connected);
  EXPECT_EQ(node->conn_id, "conn-old");
  EXPECT_EQ(registry_->stats().registrations_shed.value(), 1u);
  EXPECT_FALSE(edge_
                   ->Next([](const v1::RegistryMessage& r) { return r.has_superseded(); },
                          absl::Milliseconds(200))
                   .has_value());
}

// A resync in chunks (Resync.more) is reconciled once, at the last chunk, over all of them:
// connections reported in any chunk are kept, the rest of the edge's are closed, and only the
// last chunk is answered.
TEST_F(EdgeLinkServiceTest, AResyncInChunksIsReconciledOnceOverAllOfThem) {
  for (const char* c : {"c1", "c2", "c3"}) {
    auto granted = edge_->Open(c, std::string("n-") + c);
    ASSERT_TRUE(granted.has_value() && granted->granted());
  }
  auto live = [](const std::string& conn) {
    v1::LiveConnection l;
    l.mutable_opened()->set_conn_id(conn);
    l.mutable_opened()->set_node_id("n-" + conn);
    l.mutable_opened()->set_public_key("pk-n-" + conn);
    l.mutable_opened()->set_shared_token_ok(true);
    return l;
  };
  v1::EdgeMessage first;
  *first.mutable_resync()->add_connections() = live("c1");
  first.mutable_resync()->set_more(true);
  ASSERT_TRUE(edge_->Send(first));
  EXPECT_FALSE(edge_
                   ->Next([](const v1::RegistryMessage& r) { return r.has_resync_ack(); },
                          absl::Milliseconds(300))
                   .has_value())
      << "a chunk is not answered";
  EXPECT_TRUE(store_->GetNode("n-c2")->connected) << "nothing is reconciled before the last";
  v1::EdgeMessage last;
  *last.mutable_resync()->add_connections() = live("c3");
  ASSERT_TRUE(edge_->Send(last));
  auto ack = edge_->Next([](const v1::RegistryMessage& r) { return r.has_resync_ack(); });
  ASSERT_TRUE(ack.has_value());
  EXPECT_EQ(ack->resync_ack().kept(), 2);
  EXPECT_EQ(ack->resync_ack().closed(), 1);
  EXPECT_TRUE(store_->GetNode("n-c1")->connected);
  EXPECT_FALSE(store_->GetNode("n-c2")->connected);
  EXPECT_TRUE(store_->GetNode("n-c3")->connected);
}

}  // namespace
}  // namespace tether::registry
