#include "ws_edge/protocol/hello.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "ws_edge/protocol/frame.h"

namespace tether::edge::protocol {
namespace {

using ::nlohmann::json;
using ::tether::testing::IsOk;
using ::tether::testing::StatusIs;

void ExpectInvalidResult(const char* params, const std::string& message) {
  absl::StatusOr<InvokeResult> r = ParseInvokeResultParams(json::parse(params));
  EXPECT_THAT(r, StatusIs(absl::StatusCode::kInvalidArgument)) << params;
  EXPECT_EQ(r.status().message(), message) << params;
}

TEST(HelloOkTest, Payload) {
  HelloOkOptions o;
  o.server_version = "tether-0.1";
  o.conn_id = "conn-1";
  o.uptime_ms = 42;
  o.auth_method = "device-token";
  o.device_token = "dt";
  o.issued_at_ms = 1700000000000;
  EXPECT_EQ(BuildHelloOk(o), json::parse(R"({
    "type": "hello-ok", "protocol": 4,
    "server": {"version": "tether-0.1", "connId": "conn-1"},
    "features": {"methods": ["node.invoke.result", "node.event"],
                 "events": ["connect.challenge", "node.invoke.request", "node.invoke.cancel",
                            "tick", "node.pair.resolved"]},
    "snapshot": {"presence": [], "health": {}, "stateVersion": {"presence": 0, "health": 0},
                 "uptimeMs": 42},
    "auth": {"method": "device-token", "role": "node", "scopes": [], "deviceToken": "dt",
             "issuedAtMs": 1700000000000},
    "policy": {"maxPayload": 26214400, "maxBufferedBytes": 52428800, "tickIntervalMs": 30000}
  })"));
}

TEST(HelloOkTest, NoDeviceTokenLeavesItOut) {
  HelloOkOptions o;
  o.server_version = "v";
  o.conn_id = "c";
  const json hello = BuildHelloOk(o);
  EXPECT_EQ(hello["auth"], json::parse(R"({"method":"token","role":"node","scopes":[]})"));
}

TEST(ChallengeTest, Payload) {
  EXPECT_EQ(EncodeEvent("connect.challenge", BuildConnectChallenge("n-1", 17)),
            R"({"type":"event","event":"connect.challenge","payload":)"
            R"({"capabilities":[],"nonce":"n-1","ts":17}})");
}

TEST(InvokeRequestTest, PayloadTextAndRoundTrip) {
  InvokeRequest r{"inv-1", "node-a", "system.run", std::string(R"({"cmd":["ls"]})"), 9987, "idem"};
  const std::string text = InvokeRequestPayloadJson(r);
  EXPECT_EQ(text, R"({"id":"inv-1","nodeId":"node-a","command":"system.run",)"
                  R"("paramsJSON":"{\"cmd\":[\"ls\"]}","timeoutMs":9987,"idempotencyKey":"idem"})");
  absl::StatusOr<InvokeRequest> back = ParseInvokeRequest(json::parse(text));
  ASSERT_THAT(back, IsOk());
  EXPECT_EQ(back->params_json, r.params_json);
  EXPECT_EQ(back->timeout_ms, 9987);
  EXPECT_EQ(back->idempotency_key, "idem");

  r.params_json.reset();
  const std::string no_params = InvokeRequestPayloadJson(r);
  EXPECT_NE(no_params.find(R"("paramsJSON":null)"), std::string::npos);
  back = ParseInvokeRequest(json::parse(no_params));
  ASSERT_THAT(back, IsOk());
  EXPECT_FALSE(back->params_json.has_value());
}

TEST(InvokeRequestTest, ParseErrors) {
  EXPECT_THAT(ParseInvokeRequest(json::array()), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseInvokeRequest(json::parse(R"({"id":"1","nodeId":"n"})")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseInvokeRequest(json::parse(R"({"id":"1","nodeId":"n","command":"c",
                                                  "paramsJSON":{}})")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseInvokeRequest(json::parse(R"({"id":"1","nodeId":"n","command":"c",
                                                  "timeoutMs":-1})")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  absl::StatusOr<InvokeRequest> r =
      ParseInvokeRequest(json::parse(R"({"id":"1","nodeId":"n","command":"c"})"));
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->timeout_ms, kDefaultInvokeTimeoutMs);
}

TEST(InvokeResultTest, PayloadJsonString) {
  absl::StatusOr<InvokeResult> r = ParseInvokeResultParams(
      json::parse(R"({"id":"i","nodeId":"n","ok":true,"payloadJSON":"{\"a\":1}"})"));
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->id, "i");
  EXPECT_EQ(r->node_id, "n");
  EXPECT_TRUE(r->ok);
  EXPECT_EQ(r->payload_json, R"({"a":1})");
  EXPECT_FALSE(r->error_code.has_value());
}

TEST(InvokeResultTest, GatewayNormalization) {
  // payloadJSON:null and error:null are dropped.
  absl::StatusOr<InvokeResult> r = ParseInvokeResultParams(
      json::parse(R"({"id":"i","nodeId":"n","ok":true,"payloadJSON":null,"error":null})"));
  ASSERT_THAT(r, IsOk());
  EXPECT_FALSE(r->payload_json.has_value());
  // A non-string payloadJSON becomes payload.
  r = ParseInvokeResultParams(
      json::parse(R"({"id":"i","nodeId":"n","ok":true,"payloadJSON":{"b":[1,2]}})"));
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->payload_json, R"({"b":[1,2]})");
  // ... unless there is a payload already, which wins.
  r = ParseInvokeResultParams(
      json::parse(R"({"id":"i","nodeId":"n","ok":true,"payload":7,"payloadJSON":[1]})"));
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->payload_json, "7");
  // payloadJSON text is preferred over payload.
  r = ParseInvokeResultParams(
      json::parse(R"({"id":"i","nodeId":"n","ok":true,"payload":7,"payloadJSON":"8"})"));
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->payload_json, "8");
}

TEST(InvokeResultTest, Error) {
  absl::StatusOr<InvokeResult> r = ParseInvokeResultParams(json::parse(
      R"({"id":"i","nodeId":"n","ok":false,"error":{"code":"E_FAIL","message":"boom"}})"));
  ASSERT_THAT(r, IsOk());
  EXPECT_FALSE(r->ok);
  EXPECT_EQ(r->error_code, "E_FAIL");
  EXPECT_EQ(r->error_message, "boom");
  r = ParseInvokeResultParams(json::parse(R"({"id":"i","nodeId":"n","ok":false,"error":{}})"));
  ASSERT_THAT(r, IsOk());
  EXPECT_FALSE(r->error_code.has_value());
}

TEST(InvokeResultTest, ErrorPaths) {
  EXPECT_EQ(ParseInvokeResultParams(json()).status().message(), "at root: must be object");
  ExpectInvalidResult(R"({"nodeId":"n","ok":true})", "at root: must have required property 'id'");
  ExpectInvalidResult(R"({"id":"","nodeId":"n","ok":true})",
                      "at /id: must NOT have fewer than 1 characters");
  ExpectInvalidResult(R"({"id":"i","nodeId":5,"ok":true})", "at /nodeId: must be string");
  ExpectInvalidResult(R"({"id":"i","nodeId":"n"})", "at root: must have required property 'ok'");
  ExpectInvalidResult(R"({"id":"i","nodeId":"n","ok":"true"})", "at /ok: must be boolean");
  ExpectInvalidResult(R"({"id":"i","nodeId":"n","ok":true,"extra":1})",
                      "at root: unexpected property 'extra'");
  ExpectInvalidResult(R"({"id":"i","nodeId":"n","ok":false,"error":"boom"})",
                      "at /error: must be object");
  ExpectInvalidResult(R"({"id":"i","nodeId":"n","ok":false,"error":{"code":""}})",
                      "at /error/code: must NOT have fewer than 1 characters");
  ExpectInvalidResult(R"({"id":"i","nodeId":"n","ok":false,"error":{"message":1}})",
                      "at /error/message: must be string");
  ExpectInvalidResult(R"({"id":"i","nodeId":"n","ok":false,"error":{"stack":"x"}})",
                      "at /error: unexpected property 'stack'");
}

TEST(NodeEventTest, Params) {
  absl::StatusOr<NodeEvent> e = ParseNodeEventParams(
      json::parse(R"({"event":"node.host.stats","payloadJSON":"{\"cpuCount\":4}"})"));
  ASSERT_THAT(e, IsOk());
  EXPECT_EQ(e->event, "node.host.stats");
  EXPECT_EQ(e->payload_json, R"({"cpuCount":4})");
  e = ParseNodeEventParams(json::parse(R"({"event":"x","payload":{"a":true}})"));
  ASSERT_THAT(e, IsOk());
  EXPECT_EQ(e->payload_json, R"({"a":true})");
  e = ParseNodeEventParams(json::parse(R"({"event":"x"})"));
  ASSERT_THAT(e, IsOk());
  EXPECT_FALSE(e->payload_json.has_value());
}

TEST(NodeEventTest, ErrorPaths) {
  EXPECT_THAT(ParseNodeEventParams(json("x")), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(ParseNodeEventParams(json::parse(R"({"payload":1})")).status().message(),
            "at root: must have required property 'event'");
  EXPECT_EQ(ParseNodeEventParams(json::parse(R"({"event":""})")).status().message(),
            "at /event: must NOT have fewer than 1 characters");
  EXPECT_EQ(
      ParseNodeEventParams(json::parse(R"({"event":"x","payloadJSON":1})")).status().message(),
      "at /payloadJSON: must be string");
  EXPECT_EQ(ParseNodeEventParams(json::parse(R"({"event":"x","seq":1})")).status().message(),
            "at root: unexpected property 'seq'");
}

}  // namespace
}  // namespace tether::edge::protocol
