// Review findings against EdgeCore (fake sockets, fake link). Each test fails on the current
// code and documents one bug; see the review report for the sequence and the proposed fix.
#include <memory>
#include <optional>
#include <string>

#include "common/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/edge_fakes.h"
#include "ws_edge/client/connect_request.h"
#include "ws_edge/core/edge_core.h"
#include "ws_edge/protocol/device_identity.h"

namespace tether::edge {
namespace {

using nlohmann::json;
using ::tether::testing::FakeDownstream;
using ::tether::testing::FakeLink;

class EdgeCoreReviewTest : public ::testing::Test {
 protected:
  EdgeCoreReviewTest() : identity_(protocol::Ed25519Identity::Generate()) {
    options_.edge_id = "edge-test";
    options_.shared_token = "secret";
    options_.tick_interval_ms = 1000;
    core_ = std::make_unique<EdgeCore>(options_, down_, link_, clock_);
    core_->OnLinkUp();
    link_.sent.clear();
  }

  json Frame(uint64_t socket, size_t i) { return json::parse(down_.sockets[socket].frames.at(i)); }

  v1::ConnectionOpened Connect(uint64_t socket) {
    core_->OnOpen(socket, "127.0.0.1:5555", true);
    auto ch = client::ParseChallenge(Frame(socket, 0)["payload"]);
    EXPECT_TRUE(ch.ok());
    json req = {{"type", "req"},
                {"id", "1:abc"},
                {"method", "connect"},
                {"params", client::BuildConnectParams(client::ConnectRequestOptions{}, identity_,
                                                      *ch, std::string("secret"), std::nullopt)}};
    core_->OnMessage(socket, req.dump());
    EXPECT_FALSE(link_.sent.empty());
    return link_.sent.empty() ? v1::ConnectionOpened() : link_.sent.back().opened();
  }

  void Grant(const v1::ConnectionOpened& opened, uint64_t generation) {
    v1::RegistryMessage m;
    auto* o = m.mutable_register_outcome();
    o->set_request_id(opened.request_id());
    o->set_conn_id(opened.conn_id());
    o->set_granted(true);
    o->set_generation(generation);
    core_->OnRegistryMessage(m);
  }

  EdgeOptions options_;
  common::FakeClock clock_;
  FakeDownstream down_;
  FakeLink link_;
  std::unique_ptr<EdgeCore> core_;
  protocol::Ed25519Identity identity_;
};

// EdgeLinkClient::OnAttached sets attached_ (so Send() succeeds) on the gRPC thread and only
// then posts on_up to the loop. In between, the core still forwards node.event (it does not
// check link_up_), so the first message on the new stream is not the resync.
TEST_F(EdgeCoreReviewTest, NothingButTheResyncGoesOutBeforeOnLinkUpAfterABlip) {
  auto opened = Connect(1);
  Grant(opened, 3);
  core_->OnLinkDown();
  link_.sent.clear();
  link_.up = true;  // the new stream is attached; on_up is still queued on the loop
  core_->OnMessage(1, json({{"type", "req"},
                            {"id", "5"},
                            {"method", "node.event"},
                            {"params", {{"event", "node.host.stats"}, {"payloadJSON", "{}"}}}})
                          .dump());
  core_->OnLinkUp();
  ASSERT_FALSE(link_.sent.empty());
  EXPECT_TRUE(link_.sent[0].has_resync())
      << "first message after the blip: " << link_.sent[0].ShortDebugString();
}

// edge_link.proto: "the edge closes it by itself after grace_ms at the latest"; invariant 7:
// closed once its invokes settle or a short grace passes. The core waits grace + 15 s even
// when the superseded connection has no invoke in flight.
TEST_F(EdgeCoreReviewTest, IdleSupersededConnectionIsClosedByTheGraceAtTheLatest) {
  auto opened = Connect(1);
  Grant(opened, 1);
  v1::RegistryMessage sup;
  sup.mutable_superseded()->set_conn_id(opened.conn_id());
  sup.mutable_superseded()->set_grace_ms(1000);
  core_->OnRegistryMessage(sup);
  clock_.Advance(1000);
  core_->OnTimer();
  EXPECT_TRUE(down_.sockets[1].closed);
  EXPECT_EQ(down_.sockets[1].close_code, kCloseReplaced);
}

// A socket whose upgrade completes after Drain() (accepted before StopListening) gets a
// challenge and sits in the table until the handshake timeout, past --drain_timeout_ms.
TEST_F(EdgeCoreReviewTest, SocketOpenedAfterDrainIsClosedAtOnce) {
  core_->Drain();
  core_->OnOpen(7, "10.0.0.7:1", false);
  EXPECT_TRUE(down_.sockets[7].closed);
  EXPECT_EQ(down_.sockets[7].close_code, 1012);
}

}  // namespace
}  // namespace tether::edge
