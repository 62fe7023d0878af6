// NodeClient against a tiny in-test gateway that uses the protocol library for its side of the
// handshake, proving that the client and the protocol library agree with each other.
#include "ws_edge/client/node_client.h"

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>
#include <websocketpp/config/asio_no_tls.hpp>
#include <websocketpp/server.hpp>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/ids.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "ws_edge/protocol/device_identity.h"
#include "ws_edge/protocol/frame.h"
#include "ws_edge/protocol/handshake.h"
#include "ws_edge/protocol/hello.h"

namespace tether::edge::client {
namespace {

using ::nlohmann::json;
using ::testing::HasSubstr;
using ::tether::testing::IsOk;
using ::tether::testing::StatusIs;

constexpr absl::Duration kTimeout = absl::Seconds(5);

struct ServerConfig : websocketpp::config::asio {
  using type = ServerConfig;
  using base = websocketpp::config::asio;
  static const size_t connection_read_buffer_size = 4096;
  static const websocketpp::log::level elog_level = websocketpp::log::elevel::none;
  static const websocketpp::log::level alog_level = websocketpp::log::alevel::none;
};
using WsServer = websocketpp::server<ServerConfig>;
using Hdl = websocketpp::connection_hdl;

// Plays the gateway side on 127.0.0.1:<ephemeral>: challenge, handshake check (the protocol
// library), hello-ok with a device token it remembers, one node.invoke.request, and answers to
// node.invoke.result / node.event. Owned by the test; its own io thread; thread-safe.
class FakeGateway {
 public:
  struct Options {
    std::optional<std::string> shared_token;
    bool send_invoke = true;
    std::optional<std::string> challenge_payload;  // raw JSON replacing the real challenge
  };
  struct Accepted {
    std::string node_id;
    std::string conn_id;
    protocol::TokenCheck token_check;
  };

  explicit FakeGateway(Options options) : options_(std::move(options)) {
    std::error_code ec;
    server_.init_asio(&io_, ec);
    server_.set_reuse_addr(true);
    server_.set_open_handler([this](const Hdl& h) { OnOpen(h); });
    server_.set_close_handler([this](const Hdl& h) { OnClose(h); });
    server_.set_message_handler(
        [this](const Hdl& h, const WsServer::message_ptr& m) { OnMessage(h, m->get_payload()); });
    server_.listen(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0), ec);
    if (!ec) server_.start_accept(ec);
    EXPECT_FALSE(ec) << ec.message();
    port_ = server_.get_local_endpoint(ec).port();
    thread_ = std::thread([this] { io_.run(); });
  }

  ~FakeGateway() {
    io_.stop();
    thread_.join();
  }

  uint16_t port() const { return port_; }

  // Waits until `pred` holds; it is re-evaluated (outside the lock) whenever the gateway
  // records something.
  bool WaitFor(const std::function<bool()>& pred) {
    const absl::Time deadline = absl::Now() + kTimeout;
    for (;;) {
      int64_t seen;
      {
        absl::MutexLock lock(&mu_);
        seen = version_;
      }
      if (pred()) return true;
      absl::MutexLock lock(&mu_);
      const auto changed = [&] {
        mu_.AssertHeld();
        return version_ != seen;
      };
      if (!mu_.AwaitWithDeadline(absl::Condition(&changed), deadline)) return false;
    }
  }
  std::vector<Accepted> accepted() {
    absl::MutexLock lock(&mu_);
    return accepted_;
  }
  std::vector<protocol::HandshakeRejection> rejections() {
    absl::MutexLock lock(&mu_);
    return rejections_;
  }
  std::vector<protocol::InvokeResult> results() {
    absl::MutexLock lock(&mu_);
    return results_;
  }
  std::vector<protocol::NodeEvent> events() {
    absl::MutexLock lock(&mu_);
    return events_;
  }
  std::vector<int> close_codes() {  // close codes the gateway received from clients
    absl::MutexLock lock(&mu_);
    return close_codes_;
  }
  std::vector<std::string> remote_addresses() {  // of every socket opened, in order
    absl::MutexLock lock(&mu_);
    return remote_addresses_;
  }

  // Sends `text` to every authenticated session (from the gateway thread).
  void Broadcast(const std::string& text) {
    asio::post(io_, [this, text] {
      std::vector<Hdl> targets;
      {
        absl::MutexLock lock(&mu_);
        for (const auto& [hdl, session] : sessions_) {
          if (!session.node_id.empty()) targets.push_back(hdl);
        }
      }
      for (const Hdl& h : targets) Send(h, text);
    });
  }

 private:
  struct Session {
    std::string nonce;
    std::string node_id;  // set once authenticated
  };

  void Send(const Hdl& h, const std::string& text) {
    std::error_code ec;
    server_.send(h, text, websocketpp::frame::opcode::text, ec);
  }

  void OnOpen(const Hdl& h) {
    const std::string nonce = common::RandomUuid();
    std::error_code ec;
    WsServer::connection_ptr con = server_.get_con_from_hdl(h, ec);
    std::string remote;
    if (con) {
      auto endpoint = con->get_raw_socket().remote_endpoint(ec);
      if (!ec) remote = endpoint.address().to_string();
    }
    {
      absl::MutexLock lock(&mu_);
      sessions_[h].nonce = nonce;
      remote_addresses_.push_back(remote);
      ++version_;
    }
    Send(h, options_.challenge_payload
                ? protocol::EncodeEventRaw("connect.challenge", *options_.challenge_payload)
                : protocol::EncodeEvent("connect.challenge",
                                        protocol::BuildConnectChallenge(nonce, clock_.NowMs())));
  }

  void OnClose(const Hdl& h) {
    std::error_code ec;
    WsServer::connection_ptr con = server_.get_con_from_hdl(h, ec);
    absl::MutexLock lock(&mu_);
    if (con) close_codes_.push_back(con->get_remote_close_code());
    sessions_.erase(h);
    ++version_;
  }

  void Reject(const Hdl& h, const protocol::HandshakeRejection& r) {
    if (r.send_response) Send(h, protocol::EncodeResponseError(r.request_id, r.error));
    {
      absl::MutexLock lock(&mu_);
      rejections_.push_back(r);
      ++version_;
    }
    std::error_code ec;
    server_.close(h, static_cast<websocketpp::close::status::value>(r.close_code), r.close_reason,
                  ec);
  }

  void OnMessage(const Hdl& h, const std::string& text) {
    Session session;
    {
      absl::MutexLock lock(&mu_);
      session = sessions_[h];
    }
    if (session.node_id.empty()) {
      Handshake(h, session, text);
    } else {
      Request(h, session, text);
    }
  }

  void Handshake(const Hdl& h, const Session& session, const std::string& text) {
    protocol::HandshakeConfig config;
    config.challenge_nonce = session.nonce;
    config.now_ms = clock_.NowMs();
    if (options_.shared_token) config.shared_token = *options_.shared_token;
    protocol::HandshakeResult result = protocol::CheckHandshake(text, config);
    if (auto* r = std::get_if<protocol::HandshakeRejection>(&result)) return Reject(h, *r);
    const auto& a = std::get<protocol::HandshakeAccepted>(result);
    std::string token = common::RandomToken();
    const std::string conn_id = common::RandomHexId();
    bool device_token_ok = true;
    {
      // Stands in for the registry's device-token check.
      absl::MutexLock lock(&mu_);
      if (a.token_check == protocol::TokenCheck::kDeviceTokenPending) {
        device_token_ok = device_tokens_[a.node_id] == a.device_token;
      }
      if (device_token_ok) {
        device_tokens_[a.node_id] = token;
        sessions_[h].node_id = a.node_id;
        accepted_.push_back({a.node_id, conn_id, a.token_check});
        ++version_;
      }
    }
    if (!device_token_ok) return Reject(h, protocol::DeviceTokenRejection(a));
    protocol::HelloOkOptions hello;
    hello.server_version = "fake-gateway";
    hello.conn_id = conn_id;
    hello.auth_method =
        a.token_check == protocol::TokenCheck::kDeviceTokenPending ? "device-token" : "token";
    hello.device_token = token;
    hello.issued_at_ms = clock_.NowMs();
    Send(h, protocol::EncodeResponseOk(a.request_id, protocol::BuildHelloOk(hello)));
    if (options_.send_invoke) {
      protocol::InvokeRequest invoke{common::RandomUuid(), a.node_id, "system.which",
                                     R"({"bins":["ls"]})", 15000,     "idem-1"};
      Send(h, protocol::EncodeEventRaw("node.invoke.request",
                                       protocol::InvokeRequestPayloadJson(invoke)));
    }
  }

  void Request(const Hdl& h, const Session& session, const std::string& text) {
    absl::StatusOr<protocol::Frame> frame = protocol::ParseFrame(text);
    if (!frame.ok() || frame->type != protocol::FrameType::kRequest) return;
    const auto fail = [&](const std::string& message) {
      Send(h, protocol::EncodeResponseError(
                  frame->id, protocol::ErrorShape{"INVALID_REQUEST", message, nullptr, {}, {}}));
    };
    if (frame->method == "node.invoke.result") {
      absl::StatusOr<protocol::InvokeResult> r = protocol::ParseInvokeResultParams(frame->params);
      if (!r.ok()) {
        return fail(absl::StrCat("invalid node.invoke.result params: ", r.status().message()));
      }
      if (r->node_id != session.node_id) return fail("nodeId mismatch");
      {
        absl::MutexLock lock(&mu_);
        results_.push_back(*r);
        ++version_;
      }
      Send(h, protocol::EncodeResponseOk(frame->id, json{{"ok", true}}));
    } else if (frame->method == "node.event") {
      absl::StatusOr<protocol::NodeEvent> e = protocol::ParseNodeEventParams(frame->params);
      if (!e.ok()) return fail(absl::StrCat("invalid node.event params: ", e.status().message()));
      {
        absl::MutexLock lock(&mu_);
        events_.push_back(*e);
        ++version_;
      }
      Send(h, protocol::EncodeResponseOk(frame->id, json{{"ok", true}}));
    } else {
      fail("unknown method: " + frame->method);
    }
  }

  const Options options_;
  common::RealClock clock_;
  asio::io_context io_;
  WsServer server_;
  uint16_t port_ = 0;
  std::thread thread_;

  absl::Mutex mu_;
  std::map<Hdl, Session, std::owner_less<Hdl>> sessions_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> device_tokens_ ABSL_GUARDED_BY(mu_);
  std::vector<Accepted> accepted_ ABSL_GUARDED_BY(mu_);
  std::vector<protocol::HandshakeRejection> rejections_ ABSL_GUARDED_BY(mu_);
  std::vector<protocol::InvokeResult> results_ ABSL_GUARDED_BY(mu_);
  std::vector<protocol::NodeEvent> events_ ABSL_GUARDED_BY(mu_);
  std::vector<int> close_codes_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> remote_addresses_ ABSL_GUARDED_BY(mu_);
  int64_t version_ ABSL_GUARDED_BY(mu_) = 0;  // bumped on every recorded change
};

FakeGateway::Options Gateway(std::optional<std::string> token, bool send_invoke = true,
                             std::optional<std::string> challenge_payload = std::nullopt) {
  FakeGateway::Options o;
  o.shared_token = std::move(token);
  o.send_invoke = send_invoke;
  o.challenge_payload = std::move(challenge_payload);
  return o;
}

NodeClientOptions OptionsFor(const FakeGateway& gateway,
                             std::optional<std::string> token = std::nullopt) {
  NodeClientOptions o;
  o.port = gateway.port();
  o.shared_token = std::move(token);
  return o;
}

std::string DetailsCode(const protocol::ErrorShape& e) {
  return e.details.is_object() && e.details.contains("code") ? e.details["code"].get<std::string>()
                                                             : "";
}

// Declared first so that it is destroyed last, after the clients.
class NodeClientTest : public ::testing::Test {
 protected:
  ClientLoop loop_;
};

TEST_F(NodeClientTest, HandshakeInvokeAndResult) {
  FakeGateway gateway(Gateway("secret"));
  DeviceCredentials creds;
  NodeClientOptions options = OptionsFor(gateway, "secret");
  options.on_invoke = [](const protocol::InvokeRequest& r) {
    return InvokeReply::Ok(
        json{{"command", r.command}, {"params", r.params_json.value_or("")}}.dump());
  };
  NodeClient client(loop_, creds, options);
  ASSERT_THAT(client.Connect(kTimeout), IsOk());

  EXPECT_EQ(client.state(), NodeClient::State::kReady);
  const json hello = *client.hello();
  EXPECT_EQ(hello["type"], "hello-ok");
  EXPECT_EQ(hello["protocol"], 4);
  ASSERT_EQ(gateway.accepted().size(), 1u);
  EXPECT_EQ(gateway.accepted()[0].node_id, creds.node_id());
  EXPECT_EQ(gateway.accepted()[0].token_check, protocol::TokenCheck::kSharedToken);
  EXPECT_EQ(client.conn_id(), gateway.accepted()[0].conn_id);
  EXPECT_EQ(creds.device_token(), hello["auth"]["deviceToken"].get<std::string>());

  ASSERT_THAT(client.WaitForInvokeCount(1, kTimeout), IsOk());
  ASSERT_TRUE(gateway.WaitFor([&] { return !gateway.results().empty(); }));
  const protocol::InvokeResult result = gateway.results()[0];
  EXPECT_TRUE(result.ok);
  EXPECT_EQ(result.node_id, creds.node_id());
  EXPECT_EQ(result.id, client.invoke_requests()[0].id);
  EXPECT_EQ(json::parse(*result.payload_json),
            json::parse(R"({"command":"system.which","params":"{\"bins\":[\"ls\"]}"})"));
  EXPECT_TRUE(client.error_responses().empty());
}

TEST_F(NodeClientTest, WrongSharedTokenIsRefused) {
  FakeGateway gateway(Gateway("secret"));
  DeviceCredentials creds;
  NodeClient client(loop_, creds, OptionsFor(gateway, "guess"));
  absl::Status status = client.Connect(kTimeout);
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(status.message()), HasSubstr("[AUTH_TOKEN_MISMATCH]"));
  ASSERT_TRUE(client.connect_error().has_value());
  EXPECT_EQ(client.connect_error()->details["canRetryWithDeviceToken"], true);
  absl::StatusOr<CloseInfo> close = client.WaitForClose(kTimeout);
  ASSERT_THAT(close, IsOk());
  EXPECT_EQ(close->code, 1008);
  EXPECT_THAT(close->reason, HasSubstr("gateway token mismatch"));
  EXPECT_FALSE(close->closed_by_client);
}

TEST_F(NodeClientTest, ReconnectsWithDeviceTokenWhileOldSocketStaysOpen) {
  FakeGateway gateway(Gateway("secret", false));
  DeviceCredentials creds;
  NodeClient first(loop_, creds, OptionsFor(gateway, "secret"));
  ASSERT_THAT(first.Connect(kTimeout), IsOk());
  ASSERT_TRUE(creds.device_token().has_value());

  // Same identity, no shared token: the stored device token is presented.
  NodeClient second(loop_, creds, OptionsFor(gateway));
  ASSERT_THAT(second.Connect(kTimeout), IsOk());
  EXPECT_EQ((*second.hello())["auth"]["method"], "device-token");
  EXPECT_EQ(first.state(), NodeClient::State::kReady);
  ASSERT_EQ(gateway.accepted().size(), 2u);
  EXPECT_EQ(gateway.accepted()[1].node_id, creds.node_id());
  EXPECT_EQ(gateway.accepted()[1].token_check, protocol::TokenCheck::kDeviceTokenPending);
  EXPECT_NE(first.conn_id(), second.conn_id());

  // A stale device token is refused by the (fake) registry check.
  creds.set_device_token("stale");
  NodeClient third(loop_, creds, OptionsFor(gateway));
  EXPECT_THAT(third.Connect(kTimeout), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(DetailsCode(*third.connect_error()), "AUTH_DEVICE_TOKEN_MISMATCH");
  EXPECT_EQ(first.state(), NodeClient::State::kReady);
}

TEST_F(NodeClientTest, TokenMissingAndOpenGateway) {
  FakeGateway strict(Gateway("secret", false));
  DeviceCredentials creds;
  NodeClient refused(loop_, creds, OptionsFor(strict));
  absl::Status status = refused.Connect(kTimeout);
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("unauthorized: gateway token missing (set OPENCLAW_GATEWAY_TOKEN)"));

  FakeGateway open(Gateway(std::nullopt, false));
  NodeClient accepted(loop_, creds, OptionsFor(open));
  EXPECT_THAT(accepted.Connect(kTimeout), IsOk());
  EXPECT_EQ(open.accepted()[0].token_check, protocol::TokenCheck::kNotRequired);
}

TEST_F(NodeClientTest, HostileRawFrames) {
  FakeGateway gateway(Gateway("secret", false));
  DeviceCredentials creds;
  NodeClientOptions manual = OptionsFor(gateway, "secret");
  manual.auto_connect = false;

  NodeClient garbage(loop_, creds, manual);
  ASSERT_THAT(garbage.WaitForChallenge(kTimeout).status(), IsOk());
  ASSERT_THAT(garbage.SendText("this is not json"), IsOk());
  absl::StatusOr<CloseInfo> close = garbage.WaitForClose(kTimeout);
  ASSERT_THAT(close, IsOk());
  EXPECT_EQ(close->code, 1000);
  EXPECT_TRUE(garbage.error_responses().empty());

  NodeClient wrong_method(loop_, creds, manual);
  ASSERT_THAT(wrong_method.Open(kTimeout), IsOk());
  ASSERT_THAT(wrong_method.SendRequest("node.event", json{{"event", "x"}}).status(), IsOk());
  close = wrong_method.WaitForClose(kTimeout);
  ASSERT_THAT(close, IsOk());
  EXPECT_EQ(close->code, 1008);
  ASSERT_EQ(wrong_method.error_responses().size(), 1u);
  EXPECT_EQ(wrong_method.error_responses()[0].message,
            "invalid handshake: first request must be connect");

  // A signed connect for another challenge's nonce.
  NodeClient replay(loop_, creds, manual);
  absl::StatusOr<Challenge> challenge = replay.WaitForChallenge(kTimeout);
  ASSERT_THAT(challenge, IsOk());
  Challenge other = *challenge;
  other.nonce = common::RandomUuid();
  ASSERT_THAT(replay
                  .SendConnect(BuildConnectParams(manual.connect, creds.identity(), other,
                                                  manual.shared_token, std::nullopt))
                  .status(),
              IsOk());
  EXPECT_THAT(replay.Connect(kTimeout), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(DetailsCode(*replay.connect_error()), "DEVICE_AUTH_NONCE_MISMATCH");

  // The same, done properly by hand, is accepted.
  NodeClient by_hand(loop_, creds, manual);
  challenge = by_hand.WaitForChallenge(kTimeout);
  ASSERT_THAT(challenge, IsOk());
  ASSERT_THAT(by_hand
                  .SendConnect(BuildConnectParams(manual.connect, creds.identity(), *challenge,
                                                  manual.shared_token, std::nullopt))
                  .status(),
              IsOk());
  EXPECT_THAT(by_hand.Connect(kTimeout), IsOk());
}

TEST_F(NodeClientTest, DeferredInvokeReplyAndNodeEvent) {
  FakeGateway gateway(Gateway("secret"));
  DeviceCredentials creds;
  NodeClientOptions options = OptionsFor(gateway, "secret");
  options.on_invoke = [](const protocol::InvokeRequest&) { return InvokeReply::Deferred(); };
  NodeClient client(loop_, creds, options);
  ASSERT_THAT(client.Connect(kTimeout), IsOk());
  ASSERT_THAT(client.WaitForInvokeCount(1, kTimeout), IsOk());
  EXPECT_TRUE(gateway.results().empty());

  const protocol::InvokeRequest request = client.invoke_requests()[0];
  EXPECT_EQ(request.command, "system.which");
  EXPECT_EQ(request.timeout_ms, 15000);
  EXPECT_EQ(request.idempotency_key, "idem-1");
  absl::StatusOr<std::string> id =
      client.SendInvokeResult(request, InvokeReply::Error("E_DENIED", "not allowed"));
  ASSERT_THAT(id, IsOk());
  absl::StatusOr<protocol::Frame> response = client.WaitForResponse(*id, kTimeout);
  ASSERT_THAT(response, IsOk());
  EXPECT_TRUE(response->ok);
  ASSERT_EQ(gateway.results().size(), 1u);
  EXPECT_FALSE(gateway.results()[0].ok);
  EXPECT_EQ(gateway.results()[0].error_code, "E_DENIED");
  EXPECT_EQ(gateway.results()[0].error_message, "not allowed");

  id = client.SendNodeEvent("node.host.stats", R"({"cpuCount":4})");
  ASSERT_THAT(id, IsOk());
  ASSERT_THAT(client.WaitForResponse(*id, kTimeout), IsOk());
  ASSERT_EQ(gateway.events().size(), 1u);
  EXPECT_EQ(gateway.events()[0].payload_json, R"({"cpuCount":4})");

  // Another node's id in a result is refused and the socket stays open.
  protocol::InvokeRequest forged = request;
  forged.node_id = "someone-else";
  id = client.SendInvokeResult(forged, InvokeReply::Ok());
  ASSERT_THAT(id, IsOk());
  response = client.WaitForResponse(*id, kTimeout);
  ASSERT_THAT(response, IsOk());
  EXPECT_FALSE(response->ok);
  EXPECT_EQ(response->error->message, "nodeId mismatch");
  EXPECT_EQ(client.state(), NodeClient::State::kReady);
}

TEST_F(NodeClientTest, PauseReadingHoldsFramesUntilResumed) {
  FakeGateway gateway(Gateway("secret", false));
  DeviceCredentials creds;
  NodeClient client(loop_, creds, OptionsFor(gateway, "secret"));
  ASSERT_THAT(client.Connect(kTimeout), IsOk());
  client.PauseReading();
  // The read in flight when pausing still completes: let it take a primer frame first.
  gateway.Broadcast(protocol::EncodeEvent("primer", json::object()));
  ASSERT_THAT(client.WaitForEvent("primer", kTimeout).status(), IsOk());
  gateway.Broadcast(protocol::EncodeEvent("tick", json{{"ts", 1}}, 1));
  // A negative check needs a bounded wait: nothing may arrive while paused.
  EXPECT_THAT(client.WaitForEvent("tick", absl::Milliseconds(300)).status(),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  client.ResumeReading();
  absl::StatusOr<protocol::Frame> tick = client.WaitForEvent("tick", kTimeout);
  ASSERT_THAT(tick, IsOk());
  EXPECT_EQ(tick->seq, 1);
}

TEST_F(NodeClientTest, ClientCloseAndBadChallenge) {
  FakeGateway gateway(Gateway("secret", false));
  DeviceCredentials creds;
  NodeClient client(loop_, creds, OptionsFor(gateway, "secret"));
  ASSERT_THAT(client.Connect(kTimeout), IsOk());
  ASSERT_THAT(client.Close(4000, "tick timeout"), IsOk());
  absl::StatusOr<CloseInfo> close = client.WaitForClose(kTimeout);
  ASSERT_THAT(close, IsOk());
  EXPECT_TRUE(close->closed_by_client);
  EXPECT_EQ(close->code, 4000);  // echoed by the server
  ASSERT_TRUE(gateway.WaitFor([&] { return !gateway.close_codes().empty(); }));
  EXPECT_EQ(gateway.close_codes()[0], 4000);

  FakeGateway no_nonce(Gateway("secret", false, R"({"ts":1})"));
  NodeClient refused(loop_, creds, OptionsFor(no_nonce, "secret"));
  EXPECT_THAT(refused.Connect(kTimeout), StatusIs(absl::StatusCode::kUnavailable));
  ASSERT_TRUE(no_nonce.WaitFor([&] { return !no_nonce.close_codes().empty(); }));
  EXPECT_EQ(no_nonce.close_codes()[0], 1008);
}

TEST_F(NodeClientTest, ConnectionRefused) {
  uint16_t port;
  {
    FakeGateway gone(Gateway(std::nullopt));
    port = gone.port();
  }
  DeviceCredentials creds;
  NodeClientOptions options;
  options.port = port;
  NodeClient client(loop_, creds, options);
  EXPECT_THAT(client.Connect(kTimeout), StatusIs(absl::StatusCode::kUnavailable));
  ASSERT_TRUE(client.close_info().has_value());
  EXPECT_FALSE(client.close_info()->error.empty());
}

TEST_F(NodeClientTest, ManyClientsShareOneLoop) {
  FakeGateway gateway(Gateway("secret"));
  constexpr int kClients = 64;
  std::vector<std::unique_ptr<DeviceCredentials>> creds;
  std::vector<std::unique_ptr<NodeClient>> clients;
  for (int i = 0; i < kClients; ++i) {
    creds.push_back(std::make_unique<DeviceCredentials>());
    NodeClientOptions options = OptionsFor(gateway, "secret");
    options.record_frames = false;
    clients.push_back(std::make_unique<NodeClient>(loop_, *creds.back(), options));
    clients.back()->Start();
  }
  for (auto& client : clients) ASSERT_THAT(client->Connect(kTimeout), IsOk());
  ASSERT_TRUE(
      gateway.WaitFor([&] { return gateway.results().size() == static_cast<size_t>(kClients); }));
  for (auto& client : clients) EXPECT_EQ(client->invoke_requests_received(), 1);
  clients.clear();  // before their credentials
}

TEST(DeviceCredentialsTest, SignMatchesTheIdentityAndVerifies) {
  DeviceCredentials creds;
  for (const char* message : {"v3|a|b", "", "another payload"}) {
    const std::string signature = creds.Sign(message);
    EXPECT_EQ(signature, creds.identity().Sign(message));  // Ed25519 is deterministic
    EXPECT_TRUE(
        protocol::VerifyDeviceSignature(creds.identity().PublicKeyBase64Url(), message, signature));
  }
}

TEST_F(NodeClientTest, OnChallengeRunsOnceWithoutAutoConnect) {
  FakeGateway gateway(Gateway("secret"));
  DeviceCredentials creds;
  NodeClientOptions options = OptionsFor(gateway, "secret");
  options.auto_connect = false;
  absl::Mutex mu;
  std::vector<std::string> nonces;
  options.on_challenge = [&](const Challenge& c) {
    absl::MutexLock lock(&mu);
    nonces.push_back(c.nonce);
  };
  NodeClient client(loop_, creds, options);
  absl::StatusOr<Challenge> challenge = client.WaitForChallenge(kTimeout);
  ASSERT_THAT(challenge.status(), IsOk());
  absl::MutexLock lock(&mu);
  const auto called = [&] {
    mu.AssertHeld();
    return !nonces.empty();
  };
  mu.AwaitWithTimeout(absl::Condition(&called), kTimeout);  // it runs just after the record
  EXPECT_THAT(nonces, ::testing::ElementsAre(challenge->nonce));
  EXPECT_EQ(client.state(), NodeClient::State::kOpen);  // no connect was sent
}

TEST_F(NodeClientTest, SourceAddressIsBoundBeforeConnecting) {
  FakeGateway gateway(Gateway("secret"));
  DeviceCredentials creds;
  std::vector<std::unique_ptr<NodeClient>> clients;
  for (const char* source : {"127.0.0.2", "127.0.0.3", ""}) {
    NodeClientOptions options = OptionsFor(gateway, "secret");
    options.source_address = source;
    clients.push_back(std::make_unique<NodeClient>(loop_, creds, options));
    ASSERT_THAT(clients.back()->Connect(kTimeout), IsOk());
  }
  EXPECT_THAT(gateway.remote_addresses(),
              ::testing::ElementsAre("127.0.0.2", "127.0.0.3", "127.0.0.1"));
}

TEST_F(NodeClientTest, SourceAddressNeedsNumericAddresses) {
  FakeGateway gateway(Gateway("secret"));
  DeviceCredentials creds;
  NodeClientOptions bad_source = OptionsFor(gateway, "secret");
  bad_source.source_address = "not-an-address";
  NodeClient client(loop_, creds, bad_source);
  EXPECT_THAT(client.Connect(kTimeout), StatusIs(absl::StatusCode::kUnavailable));
  NodeClientOptions named_host = OptionsFor(gateway, "secret");
  named_host.host = "localhost";
  named_host.source_address = "127.0.0.2";
  NodeClient named(loop_, creds, named_host);
  EXPECT_THAT(named.Connect(kTimeout), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_TRUE(gateway.remote_addresses().empty());
}

}  // namespace
}  // namespace tether::edge::client
