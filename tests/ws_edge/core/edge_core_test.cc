// The edge core against fake sockets and a fake registry link.
#include "ws_edge/core/edge_core.h"

#include <atomic>
#include <chrono>
#include <map>
#include <set>
#include <string>

#include "common/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/edge_fakes.h"
#include "ws_edge/client/connect_request.h"
#include "ws_edge/protocol/device_identity.h"

namespace tether::edge {
namespace {

using nlohmann::json;
using ::tether::testing::FakeDownstream;
using ::tether::testing::FakeLink;

class EdgeCoreTest : public ::testing::Test {
 protected:
  EdgeCoreTest() : identity_(protocol::Ed25519Identity::Generate()) {
    options_.edge_id = "edge-test";
    options_.shared_token = "secret";
    options_.tick_interval_ms = 1000;
    core_ = std::make_unique<EdgeCore>(options_, down_, link_, clock_);
    // Hostile, as websocketpp is on ws://: a close completes inline, inside the core's call.
    down_.on_close = [this](uint64_t socket) { core_->OnClose(socket); };
    core_->OnLinkUp();
    link_.sent.clear();
  }

  // A new core with options_ (after a test changed them), attached as in the constructor.
  void Rebuild() {
    core_ = std::make_unique<EdgeCore>(options_, down_, link_, clock_);
    core_->OnLinkUp();
    link_.sent.clear();
  }

  json Frame(uint64_t socket, size_t i) { return json::parse(down_.sockets[socket].frames.at(i)); }
  json LastFrame(uint64_t socket) { return json::parse(down_.sockets[socket].frames.back()); }

  // Opens `socket` and sends a valid signed connect; returns the Opened the core reported.
  v1::ConnectionOpened Connect(uint64_t socket, const protocol::Ed25519Identity& id,
                               std::optional<std::string> token = std::string("secret")) {
    core_->OnOpen(socket, "127.0.0.1:5555", true);
    json challenge = Frame(socket, 0);
    EXPECT_EQ(challenge["event"], "connect.challenge");
    auto ch = client::ParseChallenge(challenge["payload"]);
    EXPECT_TRUE(ch.ok());
    json req = {{"type", "req"},
                {"id", "1:abc"},
                {"method", "connect"},
                {"params", client::BuildConnectParams(client::ConnectRequestOptions{}, id, *ch,
                                                      token, std::nullopt)}};
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
    o->set_device_token("dtok");
    core_->OnRegistryMessage(m);
  }

  v1::RegistryMessage Invoke(const std::string& conn_id, const std::string& node_id,
                             const std::string& invoke_id) {
    v1::RegistryMessage m;
    auto* inv = m.mutable_invoke();
    inv->set_invoke_id(invoke_id);
    inv->set_node_id(node_id);
    inv->set_conn_id(conn_id);
    inv->set_command("system.which");
    inv->set_params_json(R"({"bins":["ls"]})");
    inv->set_timeout_ms(9987);
    inv->set_idempotency_key("k1");
    core_->OnRegistryMessage(m);
    return m;
  }

  void NodeSends(uint64_t socket, const json& frame) { core_->OnMessage(socket, frame.dump()); }

  static json Result(const std::string& invoke_id, const std::string& node_id) {
    return {{"type", "req"},
            {"id", "7:r"},
            {"method", "node.invoke.result"},
            {"params",
             {{"id", invoke_id}, {"nodeId", node_id}, {"ok", true}, {"payloadJSON", "{\"x\":1}"}}}};
  }

  EdgeOptions options_;
  common::FakeClock clock_;
  FakeDownstream down_;
  FakeLink link_;
  std::unique_ptr<EdgeCore> core_;
  protocol::Ed25519Identity identity_;
};

TEST_F(EdgeCoreTest, HelloOkOnlyAfterTheRegistryGrants) {
  v1::ConnectionOpened opened = Connect(1, identity_);
  EXPECT_EQ(opened.node_id(), identity_.device_id());
  EXPECT_EQ(opened.conn_id().size(), 32u);
  EXPECT_TRUE(opened.shared_token_ok());
  EXPECT_TRUE(opened.loopback());
  EXPECT_EQ(opened.client().client_id(), "node-host");
  EXPECT_EQ(down_.sockets[1].frames.size(), 1u);  // nothing but the challenge yet
  Grant(opened, 42);
  json hello = LastFrame(1);
  EXPECT_EQ(hello["type"], "res");
  EXPECT_EQ(hello["id"], "1:abc");
  EXPECT_EQ(hello["ok"], true);
  EXPECT_EQ(hello["payload"]["type"], "hello-ok");
  EXPECT_EQ(hello["payload"]["server"]["connId"], opened.conn_id());
  EXPECT_EQ(hello["payload"]["auth"]["deviceToken"], "dtok");
  EXPECT_EQ(hello["payload"]["policy"]["tickIntervalMs"], 1000);
  EXPECT_EQ(down_.sockets[1].max_message_size, 26'214'400u);
  EXPECT_EQ(core_->live_count(), 1u);
}

TEST_F(EdgeCoreTest, InvokeDeliveredAndResultForwardedWithTheSocketsConnId) {
  auto opened = Connect(1, identity_);
  Grant(opened, 1);
  Invoke(opened.conn_id(), opened.node_id(), "inv-1");
  json req = LastFrame(1);
  EXPECT_EQ(req["type"], "event");
  EXPECT_EQ(req["event"], "node.invoke.request");
  EXPECT_EQ(req["payload"]["id"], "inv-1");
  EXPECT_EQ(req["payload"]["nodeId"], opened.node_id());
  EXPECT_EQ(req["payload"]["paramsJSON"], R"({"bins":["ls"]})");
  EXPECT_EQ(req["payload"]["timeoutMs"], 9987);
  EXPECT_EQ(req.count("seq"), 0u);

  link_.sent.clear();
  NodeSends(1, Result("inv-1", opened.node_id()));
  ASSERT_EQ(link_.sent.size(), 1u);
  const v1::InvokeResult& r = link_.sent[0].result();
  EXPECT_EQ(r.conn_id(), opened.conn_id());
  EXPECT_EQ(r.invoke_id(), "inv-1");
  EXPECT_EQ(r.payload_json(), "{\"x\":1}");
  // The registry decides whether it counted; the node hears it.
  v1::RegistryMessage ack;
  ack.mutable_result_ack()->set_request_id(r.request_id());
  ack.mutable_result_ack()->set_ignored(true);
  core_->OnRegistryMessage(ack);
  json res = LastFrame(1);
  EXPECT_EQ(res["id"], "7:r");
  EXPECT_EQ(res["payload"], json({{"ok", true}, {"ignored", true}}));
}

TEST_F(EdgeCoreTest, ResultForAnotherNodeIsRefusedAndNotForwarded) {
  auto opened = Connect(1, identity_);
  Grant(opened, 1);
  link_.sent.clear();
  NodeSends(1, Result("inv-1", std::string(64, 'a')));
  EXPECT_TRUE(link_.sent.empty());
  json res = LastFrame(1);
  EXPECT_EQ(res["ok"], false);
  EXPECT_EQ(res["error"]["code"], "INVALID_REQUEST");
  EXPECT_EQ(res["error"]["message"], "nodeId mismatch");
  EXPECT_FALSE(down_.sockets[1].closed);
}

TEST_F(EdgeCoreTest, AResultReceivedBeforeTheCloseReachesTheRegistryFirst) {
  auto opened = Connect(1, identity_);
  Grant(opened, 1);
  Invoke(opened.conn_id(), opened.node_id(), "inv-1");
  link_.sent.clear();
  NodeSends(1, Result("inv-1", opened.node_id()));
  core_->OnClose(1);
  ASSERT_EQ(link_.sent.size(), 2u);
  EXPECT_TRUE(link_.sent[0].has_result());
  EXPECT_TRUE(link_.sent[1].has_closed());
  EXPECT_EQ(link_.sent[1].closed().conn_id(), opened.conn_id());
}

TEST_F(EdgeCoreTest, SupersededConnectionIsClosedWithReplacedOnCommandOrAfterFallback) {
  auto first = Connect(1, identity_);
  Grant(first, 1);
  v1::RegistryMessage close;
  close.mutable_close()->set_conn_id(first.conn_id());
  close.mutable_close()->set_reason("superseded");
  core_->OnRegistryMessage(close);
  EXPECT_EQ(down_.sockets[1].close_code, 4001);
  EXPECT_EQ(down_.sockets[1].close_reason, "replaced");

  // The registry went quiet after saying "superseded": the edge retires it by itself once the
  // grace is over (its own invoke still in flight until then).
  auto second = Connect(2, identity_);
  Grant(second, 2);
  Invoke(second.conn_id(), second.node_id(), "busy");
  v1::RegistryMessage sup;
  sup.mutable_superseded()->set_conn_id(second.conn_id());
  sup.mutable_superseded()->set_grace_ms(1000);
  core_->OnRegistryMessage(sup);
  clock_.Advance(999);
  core_->OnTimer();
  EXPECT_FALSE(down_.sockets[2].closed);
  clock_.Advance(1);
  core_->OnTimer();
  EXPECT_EQ(down_.sockets[2].close_code, 4001);
}

TEST_F(EdgeCoreTest, LinkDownRefusesNewHandshakesWithRetryableUnavailable) {
  auto registering = Connect(1, identity_);
  core_->OnLinkDown();
  json refused = LastFrame(1);
  EXPECT_EQ(refused["error"]["code"], "UNAVAILABLE");
  EXPECT_EQ(refused["error"]["retryable"], true);
  EXPECT_EQ(down_.sockets[1].close_code, 1013);

  link_.up = false;
  core_->OnOpen(2, "10.0.0.1:1", false);
  auto ch = client::ParseChallenge(Frame(2, 0)["payload"]);
  json req = {{"type", "req"},
              {"id", "1:x"},
              {"method", "connect"},
              {"params", client::BuildConnectParams({}, identity_, *ch, std::string("secret"),
                                                    std::nullopt)}};
  NodeSends(2, req);
  EXPECT_EQ(LastFrame(2)["error"]["code"], "UNAVAILABLE");
  EXPECT_EQ(down_.sockets[2].close_code, 1013);
}

// Found in review: the resync was one message, and the registry accepts 64 MiB per message;
// an edge with enough live connections (or enough metadata) could never resync. It goes in
// chunks of about resync_chunk_bytes: every one but the last says more follow.
TEST_F(EdgeCoreTest, ABigResyncGoesInChunks) {
  options_.resync_chunk_bytes = 1;  // a chunk per connection
  Rebuild();
  std::set<std::string> live;
  for (uint64_t s = 1; s <= 3; ++s) {
    auto opened = Connect(s, protocol::Ed25519Identity::Generate());
    Grant(opened, s);
    live.insert(opened.conn_id());
  }
  core_->OnLinkDown();
  link_.sent.clear();
  core_->OnLinkUp();
  ASSERT_EQ(link_.sent.size(), 3u);
  std::set<std::string> reported;
  for (size_t i = 0; i < link_.sent.size(); ++i) {
    ASSERT_TRUE(link_.sent[i].has_resync());
    EXPECT_EQ(link_.sent[i].resync().more(), i + 1 < link_.sent.size()) << i;
    for (const auto& l : link_.sent[i].resync().connections()) {
      reported.insert(l.opened().conn_id());
    }
  }
  EXPECT_EQ(reported, live);
}

TEST_F(EdgeCoreTest, LinkUpResyncsEveryLiveConnectionWithItsGeneration) {
  auto a = Connect(1, identity_);
  Grant(a, 7);
  auto other = protocol::Ed25519Identity::Generate();
  auto b = Connect(2, other);
  Grant(b, 9);
  Connect(3, protocol::Ed25519Identity::Generate());  // still registering: not reported
  core_->OnLinkDown();
  link_.sent.clear();
  core_->OnLinkUp();
  ASSERT_EQ(link_.sent.size(), 1u);
  const v1::Resync& r = link_.sent[0].resync();
  ASSERT_EQ(r.connections_size(), 2);
  std::map<std::string, uint64_t> gens;
  for (const auto& l : r.connections()) {
    gens[l.opened().conn_id()] = l.generation();
    // A live socket keeps its registration serialized, not the parsed handshake: the resync
    // still reports all of it (node, key, tokens, client, caps, commands), as first sent.
    const v1::ConnectionOpened& first = l.opened().conn_id() == a.conn_id() ? a : b;
    EXPECT_EQ(l.opened().SerializeAsString(), first.SerializeAsString());
  }
  EXPECT_EQ(gens[a.conn_id()], 7u);
  EXPECT_EQ(gens[b.conn_id()], 9u);
}

TEST_F(EdgeCoreTest, PairingRefusalBecomesNotPaired) {
  auto opened = Connect(1, identity_);
  v1::RegistryMessage m;
  auto* o = m.mutable_register_outcome();
  o->set_request_id(opened.request_id());
  o->set_conn_id(opened.conn_id());
  o->set_granted(false);
  o->set_error_code("NOT_PAIRED");
  o->set_details_code("PAIRING_REQUIRED");
  o->set_pairing_request_id("req-9");
  core_->OnRegistryMessage(m);
  json res = LastFrame(1);
  EXPECT_EQ(res["error"]["code"], "NOT_PAIRED");
  EXPECT_EQ(res["error"]["details"]["code"], "PAIRING_REQUIRED");
  EXPECT_EQ(res["error"]["details"]["requestId"], "req-9");
  EXPECT_EQ(down_.sockets[1].close_code, 1008);
}

TEST_F(EdgeCoreTest, InvokeArrivingBeforeHelloIsHeldUntilAfterIt) {
  auto opened = Connect(1, identity_);
  Invoke(opened.conn_id(), opened.node_id(), "early");
  EXPECT_EQ(down_.sockets[1].frames.size(), 1u);
  Grant(opened, 1);
  ASSERT_EQ(down_.sockets[1].frames.size(), 3u);
  EXPECT_EQ(Frame(1, 1)["payload"]["type"], "hello-ok");
  EXPECT_EQ(Frame(1, 2)["payload"]["id"], "early");
}

// A cancel for an invoke still held behind hello-ok drops it: the node never sees it (it
// used to be dropped as unknown and the cancelled invoke delivered after hello-ok).
TEST_F(EdgeCoreTest, ACancelForAnInvokeHeldBeforeHelloDropsIt) {
  auto opened = Connect(1, identity_);
  Invoke(opened.conn_id(), opened.node_id(), "cancelled");
  Invoke(opened.conn_id(), opened.node_id(), "kept");
  v1::RegistryMessage cancel;
  cancel.mutable_cancel()->set_invoke_id("cancelled");
  cancel.mutable_cancel()->set_conn_id(opened.conn_id());
  cancel.mutable_cancel()->set_node_id(opened.node_id());
  core_->OnRegistryMessage(cancel);
  Grant(opened, 1);
  ASSERT_EQ(down_.sockets[1].frames.size(), 3u);  // challenge, hello-ok, one invoke
  EXPECT_EQ(Frame(1, 1)["payload"]["type"], "hello-ok");
  EXPECT_EQ(Frame(1, 2)["payload"]["id"], "kept");
}

TEST_F(EdgeCoreTest, InvokeForAGoneConnectionIsReportedUndeliverable) {
  link_.sent.clear();
  Invoke("no-such-conn", "n", "inv-x");
  ASSERT_EQ(link_.sent.size(), 1u);
  EXPECT_EQ(link_.sent[0].undeliverable().invoke_id(), "inv-x");
}

TEST_F(EdgeCoreTest, SlowConsumerIsClosed) {
  auto opened = Connect(1, identity_);
  Grant(opened, 1);
  down_.sockets[1].refuse_sends = true;
  Invoke(opened.conn_id(), opened.node_id(), "inv-1");
  EXPECT_EQ(down_.sockets[1].close_code, 1008);
  EXPECT_EQ(down_.sockets[1].close_reason, "slow consumer");
  EXPECT_EQ(core_->stats().slow_consumers_closed.value(), 1u);
}

// As node-protocol.md §1 and §7 say: an invalid frame gets "invalid request frame" under its
// own id or "invalid" (ids are never empty); a node method the edge does not implement gets
// "unknown method" (the node host then stops asking), and so does a method the Gateway does
// not have; one of the Gateway's operator methods, a second connect included, gets
// "unauthorized role: node". The socket stays open.
TEST_F(EdgeCoreTest, BadFramesAfterHelloGetErrorsWithoutClosing) {
  auto opened = Connect(1, identity_);
  Grant(opened, 1);
  core_->OnMessage(1, "{not json");
  EXPECT_EQ(LastFrame(1)["error"]["code"], "INVALID_REQUEST");
  EXPECT_EQ(LastFrame(1)["id"], "invalid");
  NodeSends(1, {{"type", "event"}, {"event", "x"}});
  EXPECT_EQ(LastFrame(1)["error"]["code"], "INVALID_REQUEST");
  EXPECT_EQ(LastFrame(1)["id"], "invalid");
  NodeSends(1, {{"type", "req"}, {"id", "7"}, {"method", ""}});
  EXPECT_EQ(LastFrame(1)["id"], "7");
  EXPECT_EQ(LastFrame(1)["error"]["message"].get<std::string>().rfind("invalid request frame", 0),
            0u);
  for (const char* method :
       {"node.runnerInventory.update", "node.pluginTools.update", "node.skills.update",
        "node.invoke.progress", "skills.bins", "no.such.method", "health"}) {
    NodeSends(1, {{"type", "req"}, {"id", "9"}, {"method", method}, {"params", json::object()}});
    EXPECT_EQ(LastFrame(1)["error"]["message"], std::string("unknown method: ") + method);
  }
  for (const char* method : {"node.list", "chat.send", "connect", "node.invoke"}) {
    NodeSends(1, {{"type", "req"}, {"id", "10"}, {"method", method}, {"params", json::object()}});
    EXPECT_EQ(LastFrame(1)["id"], "10");
    EXPECT_EQ(LastFrame(1)["error"]["code"], "INVALID_REQUEST");
    EXPECT_EQ(LastFrame(1)["error"]["message"], "unauthorized role: node") << method;
  }
  EXPECT_FALSE(down_.sockets[1].closed);
}

// The Gateway's flood guard: the 11th "unauthorized role" answer in a row closes the socket
// with 1008; any node method in between resets the count.
TEST_F(EdgeCoreTest, RepeatedUnauthorizedCallsCloseTheSocket) {
  auto opened = Connect(1, identity_);
  Grant(opened, 1);
  auto call = [&](const char* method) {
    NodeSends(1, {{"type", "req"}, {"id", "5"}, {"method", method}, {"params", json::object()}});
  };
  for (int i = 0; i < 10; ++i) call("chat.send");
  call("node.pending.pull");  // a node's method: the count starts again
  for (int i = 0; i < 10; ++i) call("chat.send");
  EXPECT_FALSE(down_.sockets[1].closed);
  call("chat.send");
  EXPECT_EQ(LastFrame(1)["error"]["message"], "unauthorized role: node");
  EXPECT_TRUE(down_.sockets[1].closed);
  EXPECT_EQ(down_.sockets[1].close_code, 1008);
  EXPECT_EQ(down_.sockets[1].close_reason, "repeated unauthorized calls");
}

TEST_F(EdgeCoreTest, TheHandshakeTimeoutIsTheGatewaysFifteenSecondsByDefault) {
  EXPECT_EQ(EdgeOptions{}.handshake_timeout_ms, 15'000);
}

TEST_F(EdgeCoreTest, HandshakeTimeoutAndTicks) {
  core_->OnOpen(1, "127.0.0.1:1", true);
  clock_.Advance(options_.handshake_timeout_ms);
  core_->OnTimer();
  EXPECT_EQ(down_.sockets[1].close_code, 1000);

  auto opened = Connect(2, identity_);
  Grant(opened, 1);
  clock_.Advance(1000);
  core_->OnTimer();
  json tick = LastFrame(2);
  EXPECT_EQ(tick["event"], "tick");
  EXPECT_EQ(tick["seq"], 1);
  clock_.Advance(1000);
  core_->OnTimer();
  EXPECT_EQ(LastFrame(2)["seq"], 2);
}

TEST_F(EdgeCoreTest, BadSignatureIsRejectedBeforeTheRegistryHearsOfIt) {
  core_->OnOpen(1, "127.0.0.1:1", true);
  auto ch = client::ParseChallenge(Frame(1, 0)["payload"]);
  json params = client::BuildConnectParams({}, identity_, *ch, std::string("secret"), std::nullopt);
  params["device"]["nonce"] = "another-nonce";
  NodeSends(1, {{"type", "req"}, {"id", "1"}, {"method", "connect"}, {"params", params}});
  EXPECT_TRUE(link_.sent.empty());
  EXPECT_EQ(LastFrame(1)["error"]["details"]["code"], "DEVICE_AUTH_NONCE_MISMATCH");
  EXPECT_EQ(down_.sockets[1].close_code, 1008);
}

TEST_F(EdgeCoreTest, SignatureChecksRunOffTheLoopAndLateResultsForGoneSocketsAreDropped) {
  testing::DeferredOffload offload;
  core_ = std::make_unique<EdgeCore>(options_, down_, link_, clock_, &offload);
  core_->OnLinkUp();
  link_.sent.clear();
  for (uint64_t socket : {1, 2}) {
    core_->OnOpen(socket, "127.0.0.1:1", true);
    auto ch = client::ParseChallenge(Frame(socket, 0)["payload"]);
    NodeSends(socket, {{"type", "req"},
                       {"id", "c"},
                       {"method", "connect"},
                       {"params", client::BuildConnectParams(
                                      {}, identity_, *ch, std::string("secret"), std::nullopt)}});
  }
  ASSERT_EQ(offload.jobs.size(), 2u);
  EXPECT_TRUE(link_.sent.empty());  // nothing decided yet
  NodeSends(1,
            {{"type", "req"}, {"id", "x"}, {"method", "node.event"}, {"params", json::object()}});
  EXPECT_EQ(LastFrame(1)["error"]["message"], "handshake in progress: wait for hello");
  core_->OnClose(2);  // gone while its signature was being checked
  offload.RunAll();
  ASSERT_EQ(link_.sent.size(), 1u);  // only socket 1 registers
  EXPECT_EQ(link_.sent[0].opened().node_id(), identity_.device_id());
}

TEST_F(EdgeCoreTest, AFloodFromOneAddressIsRefusedAtOpenWhileOthersConnect) {
  options_.handshake_limits = HandshakeLimits{1, 3, 5};
  core_ = std::make_unique<EdgeCore>(options_, down_, link_, clock_);
  core_->OnLinkUp();
  // Bad proofs from 10.9.9.9 drain its bucket quickly.
  for (uint64_t socket = 100; socket < 110; ++socket) {
    core_->OnOpen(socket, "10.9.9.9:4000", false);
    if (down_.sockets[socket].closed) continue;
    NodeSends(
        socket,
        {{"type", "req"}, {"id", "1"}, {"method", "connect"}, {"params", {{"minProtocol", 4}}}});
  }
  EXPECT_GE(core_->stats().handshakes_rate_limited.value(), 5u);
  EXPECT_EQ(down_.sockets[109].close_code, 1013);
  EXPECT_TRUE(down_.sockets[109].frames.empty());  // not even a challenge
  // A real node from elsewhere is not affected.
  auto opened = Connect(1, identity_);
  EXPECT_EQ(opened.node_id(), identity_.device_id());
}

// Drain: live sockets close with 1012 at jittered moments within the spread (nodes do not
// reconnect as one herd), a socket with an invoke in flight waits for its result, and the
// registry hears `drain` only once every socket is gone (each told it with its own `closed`).
TEST_F(EdgeCoreTest, DrainSpreadsTheClosesWaitsForInvokesThenTellsTheRegistry) {
  std::vector<v1::ConnectionOpened> opened;
  for (uint64_t s = 1; s <= 20; ++s) {
    opened.push_back(Connect(s, protocol::Ed25519Identity::Generate()));
    Grant(opened.back(), s);
  }
  Invoke(opened[0].conn_id(), opened[0].node_id(), "busy");  // socket 1 has work in flight
  core_->OnOpen(99, "127.0.0.1:1", true);                    // still in its handshake
  link_.sent.clear();
  core_->Drain();
  EXPECT_EQ(down_.sockets[99].close_code, 1012);  // nothing to hand over: at once
  std::map<uint64_t, int64_t> closed_at;          // socket -> when it was first seen closed
  for (int64_t t = 0; t <= options_.drain_spread_ms + 100; t += 100) {
    for (uint64_t s = 2; s <= 20; ++s) {
      if (down_.sockets[s].closed && closed_at.count(s) == 0) closed_at[s] = t;
    }
    clock_.Advance(100);
    core_->OnTimer();
  }
  std::set<int64_t> close_times;
  for (const auto& [socket, t] : closed_at) close_times.insert(t);
  for (uint64_t s = 2; s <= 20; ++s) EXPECT_EQ(down_.sockets[s].close_code, 1012) << s;
  EXPECT_GT(close_times.size(), 3u) << "closes not spread over the window";
  EXPECT_FALSE(down_.sockets[1].closed) << "closed with its invoke in flight";
  for (const auto& m : link_.sent) EXPECT_FALSE(m.has_drain()) << "drain before the sockets left";
  NodeSends(1, Result("busy", opened[0].node_id()));  // the result still counts
  core_->OnTimer();
  EXPECT_EQ(down_.sockets[1].close_code, 1012);
  ASSERT_FALSE(link_.sent.empty());
  EXPECT_TRUE(link_.sent.back().has_drain());
  EXPECT_TRUE(core_->drained());
}

TEST_F(EdgeCoreTest, DrainClosesAnInvokesSocketAtTheDeadlineAtTheLatest) {
  auto opened = Connect(1, identity_);
  Grant(opened, 1);
  Invoke(opened.conn_id(), opened.node_id(), "never-answered");
  core_->Drain();
  clock_.Advance(options_.drain_timeout_ms);
  core_->OnTimer();
  EXPECT_EQ(down_.sockets[1].close_code, 1012);
  EXPECT_TRUE(core_->drained());
}

// EdgeLinkClient::OnAttached sets attached_ (so Send() succeeds) on the gRPC thread and only
// then posts on_up to the loop. In between, the core still forwards node.event (it does not
// check link_up_), so the first message on the new stream is not the resync.
TEST_F(EdgeCoreTest, NothingButTheResyncGoesOutBeforeOnLinkUpAfterABlip) {
  auto opened = Connect(1, identity_);
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
TEST_F(EdgeCoreTest, IdleSupersededConnectionIsClosedByTheGraceAtTheLatest) {
  auto opened = Connect(1, identity_);
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
TEST_F(EdgeCoreTest, SocketOpenedAfterDrainIsClosedAtOnce) {
  core_->Drain();
  core_->OnOpen(7, "10.0.0.7:1", false);
  EXPECT_TRUE(down_.sockets[7].closed);
  EXPECT_EQ(down_.sockets[7].close_code, 1012);
}

// A result for an invoke this socket was never given (or already answered or cancelled) is
// answered {ok:true, ignored:true} by the edge: no payload goes up the link to be ignored.
TEST_F(EdgeCoreTest, ResultForAnInvokeNotDeliveredHereIsAnsweredLocally) {
  auto opened = Connect(1, identity_);
  Grant(opened, 1);
  link_.sent.clear();
  NodeSends(1, Result("never-sent", opened.node_id()));
  EXPECT_TRUE(link_.sent.empty());
  EXPECT_EQ(LastFrame(1)["payload"], json({{"ok", true}, {"ignored", true}}));
  // A duplicate of a result already forwarded is answered the same way.
  Invoke(opened.conn_id(), opened.node_id(), "inv-1");
  NodeSends(1, Result("inv-1", opened.node_id()));
  ASSERT_EQ(link_.sent.size(), 1u);
  NodeSends(1, Result("inv-1", opened.node_id()));
  EXPECT_EQ(link_.sent.size(), 1u);
}

// The registry only notes that the node is alive: node.event goes up without its payload and
// at most once a second per connection; the node gets {ok:true} either way.
TEST_F(EdgeCoreTest, NodeEventsReachTheRegistryAsThrottledTouchesWithoutPayload) {
  auto opened = Connect(1, identity_);
  Grant(opened, 1);
  link_.sent.clear();
  auto event = [&](const std::string& id) {
    NodeSends(
        1, json{{"type", "req"},
                {"id", id},
                {"method", "node.event"},
                {"params",
                 {{"event", "node.host.stats"}, {"payloadJSON", std::string(1000, ' ') + "{}"}}}});
    return LastFrame(1);
  };
  EXPECT_EQ(event("e1")["payload"]["ok"], true);
  ASSERT_EQ(link_.sent.size(), 1u);
  EXPECT_EQ(link_.sent[0].event().event(), "node.host.stats");
  EXPECT_TRUE(link_.sent[0].event().payload_json().empty());
  EXPECT_EQ(event("e2")["payload"]["ok"], true);
  EXPECT_EQ(link_.sent.size(), 1u);  // within the second: answered, not forwarded
  clock_.Advance(1000);
  event("e3");
  EXPECT_EQ(link_.sent.size(), 2u);
}

// At --max_connections the next socket is refused at open with 1013 (nodes retry elsewhere or
// later) and the ones held are not affected.
TEST_F(EdgeCoreTest, SocketsOverMaxConnectionsAreRefusedAtOpen) {
  options_.max_connections = 2;
  Rebuild();
  for (uint64_t s = 1; s <= 3; ++s) core_->OnOpen(s, "127.0.0.1:1", true);
  EXPECT_FALSE(down_.sockets[1].closed);
  EXPECT_FALSE(down_.sockets[2].closed);
  EXPECT_EQ(down_.sockets[3].close_code, 1013);
  EXPECT_TRUE(down_.sockets[3].frames.empty());  // no challenge, no state kept
  EXPECT_EQ(core_->stats().connections_refused.value(), 1u);
  core_->OnClose(1);
  core_->OnOpen(4, "127.0.0.1:4", true);  // room again
  EXPECT_FALSE(down_.sockets[4].closed);
}

// Strangers that never finish their handshake are bounded as a whole: past the budget new
// sockets are refused at open, while sockets past hello-ok do not count against it.
TEST_F(EdgeCoreTest, PendingHandshakesHaveABudget) {
  options_.max_pending_handshakes = 2;
  Rebuild();
  for (uint64_t s = 1; s <= 3; ++s) core_->OnOpen(s, "127.0.0.1:1", true);
  EXPECT_EQ(down_.sockets[3].close_code, 1013);
  core_->OnClose(2);  // a stranger leaves: room for one more
  core_->OnOpen(4, "127.0.0.1:4", true);
  EXPECT_FALSE(down_.sockets[4].closed);
  core_->OnOpen(5, "127.0.0.1:5", true);
  EXPECT_EQ(down_.sockets[5].close_code, 1013);
}

TEST_F(EdgeCoreTest, SocketsPastHelloDoNotCountAgainstTheHandshakeBudget) {
  options_.max_pending_handshakes = 1;
  Rebuild();
  auto opened = Connect(1, identity_);
  Grant(opened, 1);                       // live: no longer a pending handshake
  core_->OnOpen(2, "127.0.0.1:2", true);  // the one pending slot
  EXPECT_FALSE(down_.sockets[2].closed);
  core_->OnOpen(3, "127.0.0.1:3", true);
  EXPECT_EQ(down_.sockets[3].close_code, 1013);
}

// A reconnect storm faster than the registry decides: past max_registrations_in_flight
// (verifying + waiting for the registry), a well-formed connect is refused before its proof is
// checked, retryable with a jittered retryAfterMs, and the registry never hears of it; a
// malformed one still gets its own error; a decision or a close frees a slot.
TEST_F(EdgeCoreTest, ConnectsPastTheRegistrationsInFlightLimitAreRefusedUnverified) {
  options_.max_registrations_in_flight = 2;
  Rebuild();
  const auto first = Connect(1, identity_);
  Connect(2, identity_);
  const size_t sent = link_.sent.size();
  core_->OnOpen(3, "127.0.0.1:3", true);
  // Well-formed, with a proof for another challenge: DEVICE_AUTH_NONCE_MISMATCH if checked.
  client::Challenge other;
  other.nonce = "not-this-sockets-nonce";
  other.ts_ms = clock_.NowMs();
  NodeSends(3, {{"type", "req"},
                {"id", "1:z"},
                {"method", "connect"},
                {"params", client::BuildConnectParams({}, identity_, other, std::string("secret"),
                                                      std::nullopt)}});
  json refused = LastFrame(3);
  EXPECT_EQ(refused["id"], "1:z");
  EXPECT_EQ(refused["error"]["code"], "UNAVAILABLE");
  EXPECT_EQ(refused["error"]["retryable"], true);
  EXPECT_GE(refused["error"]["retryAfterMs"].get<int64_t>(), 1000);
  EXPECT_LE(refused["error"]["retryAfterMs"].get<int64_t>(), 2000);
  EXPECT_EQ(down_.sockets[3].close_code, 1013);
  EXPECT_EQ(link_.sent.size(), sent);  // neither an opened nor a closed for it
  EXPECT_EQ(core_->stats().handshakes_busy.value(), 1u);
  EXPECT_EQ(down_.sockets[3].close_reason, "edge busy; try again later");

  Grant(first, 1);  // decided: a slot is free
  Connect(4, identity_);
  EXPECT_EQ(link_.sent.back().opened().conn_id().size(), 32u);
  EXPECT_FALSE(down_.sockets[4].closed);
  core_->OnClose(2);  // a registering socket goes away: its slot too
  Connect(5, identity_);
  EXPECT_FALSE(down_.sockets[5].closed);
  core_->OnOpen(6, "127.0.0.1:6", true);
  NodeSends(6, {{"type", "req"},
                {"id", "1:y"},
                {"method", "connect"},
                {"params", client::BuildConnectParams({}, identity_, other, std::string("secret"),
                                                      std::nullopt)}});
  EXPECT_EQ(down_.sockets[6].close_code, 1013);  // 4 and 5 are registering
  // Malformed while busy: its own error (invalid connect params, close 1008), not "retry".
  core_->OnOpen(7, "127.0.0.1:7", true);
  NodeSends(7, {{"type", "req"}, {"id", "1:x"}, {"method", "connect"}, {"params", json::object()}});
  EXPECT_EQ(LastFrame(7)["error"]["code"], "INVALID_REQUEST");
  EXPECT_EQ(down_.sockets[7].close_code, 1008);
  EXPECT_EQ(core_->stats().handshakes_busy.value(), 2u);
}

// The registry fails a lost link's in-flight invokes; the node is told to stop on them.
TEST_F(EdgeCoreTest, LinkLossCancelsInFlightInvokesAtTheNode) {
  auto opened = Connect(1, identity_);
  Grant(opened, 1);
  Invoke(opened.conn_id(), opened.node_id(), "inv-1");
  link_.up = false;
  core_->OnLinkDown();
  json cancel = LastFrame(1);
  EXPECT_EQ(cancel["event"], "node.invoke.cancel");
  EXPECT_EQ(cancel["payload"]["invokeId"], "inv-1");
  EXPECT_EQ(cancel["payload"]["nodeId"], opened.node_id());
  EXPECT_FALSE(down_.sockets[1].closed);  // the node itself stays connected
}

// Found in review: after a registry replica crashed, the replica that took the edge over sent
// it the invoke again; the edge had cancelled it at the node when the link was lost and
// dropped the copy as a duplicate, so nothing ended it before its deadline (the crashed replica
// failed nothing in the store). The edge now reports it undeliverable: the registry ends it
// at once (DISCONNECTED). A copy of an invoke still running at the node is dropped as before.
TEST_F(EdgeCoreTest, AnInvokeSentAgainAfterTheLinkWasLostIsReportedUndeliverable) {
  auto opened = Connect(1, identity_);
  Grant(opened, 1);
  Invoke(opened.conn_id(), opened.node_id(), "running");
  Invoke(opened.conn_id(), opened.node_id(), "running");  // a copy: still running, dropped
  EXPECT_EQ(core_->stats().invokes_delivered.value(), 1);
  link_.up = false;
  core_->OnLinkDown();  // cancelled at the node
  link_.up = true;
  core_->OnLinkUp();
  link_.sent.clear();
  const size_t frames = down_.sockets[1].frames.size();
  Invoke(opened.conn_id(), opened.node_id(), "running");
  EXPECT_EQ(down_.sockets[1].frames.size(), frames) << "the node ran it again";
  ASSERT_EQ(link_.sent.size(), 1u);
  EXPECT_EQ(link_.sent[0].undeliverable().invoke_id(), "running");
  EXPECT_EQ(link_.sent[0].undeliverable().conn_id(), opened.conn_id());
}

// Found in review: a result the link could not take (its queue full) was answered "retry" to
// the node, and the retry was then answered "ignored": the invoke had been forgotten.
TEST_F(EdgeCoreTest, AResultTheLinkCouldNotTakeIsForwardedWhenTheNodeRetries) {
  auto opened = Connect(1, identity_);
  Grant(opened, 1);
  Invoke(opened.conn_id(), opened.node_id(), "inv-1");
  link_.full = true;
  NodeSends(1, Result("inv-1", opened.node_id()));
  EXPECT_EQ(LastFrame(1)["error"]["code"], "UNAVAILABLE");
  link_.full = false;
  link_.sent.clear();
  NodeSends(1, Result("inv-1", opened.node_id()));
  ASSERT_EQ(link_.sent.size(), 1u);
  EXPECT_EQ(link_.sent[0].result().invoke_id(), "inv-1");
  NodeSends(1, Result("inv-1", opened.node_id()));  // once forwarded, a third is ignored
  EXPECT_EQ(LastFrame(1)["payload"]["ignored"], true);
}

// --- Re-entrant closes (the downstream calls OnClose from inside Close or a failed Send) ------

TEST_F(EdgeCoreTest, DrainClosesEverySocketWhileEachCloseCallsBackInline) {
  std::vector<v1::ConnectionOpened> opened;
  for (uint64_t s = 1; s <= 5; ++s) {
    opened.push_back(Connect(s, protocol::Ed25519Identity::Generate()));
    Grant(opened.back(), s);
  }
  core_->OnOpen(6, "127.0.0.1:1", true);  // still in its handshake
  link_.sent.clear();
  core_->Drain();  // iterates the table while each close erases from it
  clock_.Advance(options_.drain_spread_ms);
  core_->OnTimer();  // the rest, the same way
  int closed = 0;
  for (const auto& m : link_.sent) closed += m.has_closed() ? 1 : 0;
  EXPECT_EQ(closed, 5);  // every registered connection reported once
  for (uint64_t s = 1; s <= 6; ++s) EXPECT_EQ(down_.sockets[s].close_code, 1012) << s;
  EXPECT_EQ(core_->connection_count(), 0u);
  EXPECT_EQ(core_->stats().sockets.load(), 0);
  EXPECT_EQ(core_->live_count(), 0u);
}

TEST_F(EdgeCoreTest, HelloOkToASlowReaderClosesItInlineAndHeldInvokesAreNotDelivered) {
  auto opened = Connect(1, identity_);
  // Two invokes arrive before hello-ok: held on the connection.
  Invoke(opened.conn_id(), opened.node_id(), "inv-1");
  Invoke(opened.conn_id(), opened.node_id(), "inv-2");
  down_.sockets[1].refuse_sends = true;  // hello-ok's send fails: slow consumer, closed inline
  link_.sent.clear();
  Grant(opened, 1);  // the delivery loop must not touch the erased connection
  EXPECT_TRUE(down_.sockets[1].closed);
  EXPECT_EQ(down_.sockets[1].close_code, 1008);
  ASSERT_EQ(link_.sent.size(), 1u);  // its close: the registry fails both invokes
  EXPECT_TRUE(link_.sent[0].has_closed());
  EXPECT_EQ(core_->connection_count(), 0u);
  EXPECT_EQ(core_->stats().invokes_delivered.value(), 0);
}

TEST_F(EdgeCoreTest, RejectionWhoseResponseCannotBeSentClosesOnce) {
  core_->OnOpen(1, "127.0.0.1:5555", true);
  down_.sockets[1].refuse_sends = true;
  NodeSends(1, json{{"type", "req"}, {"id", "1"}, {"method", "health"}});  // not connect
  EXPECT_TRUE(down_.sockets[1].closed);
  EXPECT_EQ(core_->connection_count(), 0u);
}

TEST_F(EdgeCoreTest, LinkDownRefusesRegisteringSocketsWhileTheirClosesCallBackInline) {
  for (uint64_t s = 1; s <= 4; ++s) Connect(s, protocol::Ed25519Identity::Generate());
  link_.up = false;
  core_->OnLinkDown();  // iterates the table; each refusal closes inline
  for (uint64_t s = 1; s <= 4; ++s) {
    EXPECT_EQ(down_.sockets[s].close_code, 1013) << s;
    EXPECT_EQ(LastFrame(s)["error"]["code"], "UNAVAILABLE") << s;
  }
  EXPECT_EQ(core_->connection_count(), 0u);
}

TEST_F(EdgeCoreTest, ATimerPassThatClosesEverySocketInline) {
  for (uint64_t s = 1; s <= 3; ++s) core_->OnOpen(s, "127.0.0.1:1", true);
  clock_.Advance(options_.handshake_timeout_ms + 1);
  core_->OnTimer();
  for (uint64_t s = 1; s <= 3; ++s) EXPECT_TRUE(down_.sockets[s].closed) << s;
  EXPECT_EQ(core_->connection_count(), 0u);
}

}  // namespace
}  // namespace tether::edge

namespace tether::edge {
namespace {

// A registry replica that takes this edge over may send again an invoke the previous replica
// already sent (it had not recorded the delivery yet): the node runs it once, answered or not.
TEST_F(EdgeCoreTest, AnInvokeSentAgainAfterARegistryTakeoverIsDeliveredOnce) {
  auto opened = Connect(1, identity_);
  Grant(opened, 1);
  const size_t before = down_.sockets[1].frames.size();
  Invoke(opened.conn_id(), opened.node_id(), "inv-1");
  Invoke(opened.conn_id(), opened.node_id(), "inv-1");  // still pending at the node
  EXPECT_EQ(down_.sockets[1].frames.size(), before + 1);
  NodeSends(1, Result("inv-1", opened.node_id()));
  const size_t answered = down_.sockets[1].frames.size();
  Invoke(opened.conn_id(), opened.node_id(), "inv-1");  // already answered
  EXPECT_EQ(down_.sockets[1].frames.size(), answered);
  EXPECT_EQ(core_->stats().invokes_duplicate.value(), 2u);
  Invoke(opened.conn_id(), opened.node_id(), "inv-2");  // a new one still goes out
  EXPECT_EQ(down_.sockets[1].frames.size(), answered + 1);
}

}  // namespace
}  // namespace tether::edge

namespace tether::edge {
namespace {

// Issue 11 #3 at the edge: ticks and the handshake timeout run on the steady timeline. A wall
// clock stepped two hours back (which used to stop ticks, so nodes closed with 4000 after two
// missed tick intervals) or an hour forward changes nothing: ticks keep their 1 s rhythm.
TEST_F(EdgeCoreTest, WallClockStepsNeitherStopTicksNorCloseSockets) {
  const int64_t start = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count();
  std::atomic<int64_t> wall{start};
  std::atomic<int64_t> steady{0};
  common::RealClock real([&] { return wall.load(); }, [&] { return steady.load(); });
  core_ = std::make_unique<EdgeCore>(options_, down_, link_, real);
  core_->OnLinkUp();
  link_.sent.clear();
  auto opened = Connect(1, identity_);
  Grant(opened, 1);
  int64_t seq = 0;
  for (int64_t step : {-7'200'000, 0, 3'600'000, 0}) {
    wall += step;
    steady += 1000;
    core_->OnTimer();
    json tick = LastFrame(1);
    ASSERT_EQ(tick["event"], "tick") << "after a wall step of " << step << " ms";
    EXPECT_EQ(tick["seq"], ++seq);
  }
  EXPECT_FALSE(down_.sockets[1].closed);
  core_.reset();  // before `real` goes
}

}  // namespace
}  // namespace tether::edge
