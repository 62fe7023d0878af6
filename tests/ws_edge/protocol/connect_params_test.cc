#include "ws_edge/protocol/connect_params.h"

#include <functional>
#include <limits>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace tether::edge::protocol {
namespace {

using ::nlohmann::json;
using ::testing::ElementsAre;
using ::tether::testing::IsOk;
using ::tether::testing::StatusIs;

// What the headless node host sends (node-protocol.md section 3.1).
json NodeHostParams() {
  return json::parse(R"({
    "minProtocol": 4, "maxProtocol": 4,
    "client": {"id": "node-host", "displayName": "box", "version": "2026.9.6",
               "platform": "linux", "deviceFamily": "Linux", "mode": "node",
               "instanceId": "0b8a3f9e-1111-4222-8333-444455556666"},
    "caps": ["file", "system"], "commands": ["system.run", "system.which"],
    "pathEnv": "/usr/bin:/bin", "role": "node", "scopes": [],
    "device": {"id": "abc", "publicKey": "key", "signature": "sig",
               "signedAt": 1700000000000, "nonce": "n"},
    "auth": {"token": "tok"}
  })");
}

// Applies `edit` to the node host params and expects the given error text.
void ExpectRejected(const std::function<void(json&)>& edit, const std::string& message) {
  json params = NodeHostParams();
  edit(params);
  absl::StatusOr<ConnectParams> parsed = ParseConnectParams(params);
  EXPECT_THAT(parsed, StatusIs(absl::StatusCode::kInvalidArgument)) << params.dump();
  EXPECT_EQ(parsed.status().message(), message) << params.dump();
}

TEST(ConnectParamsTest, NodeHost) {
  absl::StatusOr<ConnectParams> p = ParseConnectParams(NodeHostParams());
  ASSERT_THAT(p, IsOk());
  EXPECT_EQ(p->min_protocol, 4);
  EXPECT_EQ(p->max_protocol, 4);
  EXPECT_EQ(p->client.id, "node-host");
  EXPECT_EQ(p->client.mode, "node");
  EXPECT_EQ(p->client.display_name, "box");
  EXPECT_EQ(p->client.version, "2026.9.6");
  EXPECT_EQ(p->client.platform, "linux");
  EXPECT_EQ(p->client.device_family, "Linux");
  EXPECT_FALSE(p->client.model_identifier.has_value());
  EXPECT_EQ(p->client.instance_id, "0b8a3f9e-1111-4222-8333-444455556666");
  EXPECT_THAT(p->caps, ElementsAre("file", "system"));
  EXPECT_THAT(p->commands, ElementsAre("system.run", "system.which"));
  EXPECT_EQ(p->path_env, "/usr/bin:/bin");
  EXPECT_EQ(p->role, "node");
  EXPECT_TRUE(p->scopes.empty());
  ASSERT_TRUE(p->device.has_value());
  EXPECT_EQ(p->device->signed_at_ms, 1700000000000);
  EXPECT_EQ(p->device->nonce, "n");
  ASSERT_TRUE(p->auth.has_value());
  EXPECT_EQ(p->auth->token, "tok");
  EXPECT_FALSE(p->auth->device_token.has_value());
  EXPECT_FALSE(p->permissions.has_value());
}

TEST(ConnectParamsTest, MinimalDefaultsRoleToOperator) {
  absl::StatusOr<ConnectParams> p = ParseConnectParams(json::parse(
      R"({"minProtocol":1,"maxProtocol":9,"client":{"id":"cli","version":"1","platform":"x",
          "mode":"cli"}})"));
  ASSERT_THAT(p, IsOk());
  EXPECT_EQ(p->role, "operator");
  EXPECT_FALSE(p->device.has_value());
  EXPECT_FALSE(p->auth.has_value());
}

TEST(ConnectParamsTest, OptionalExtras) {
  json params = NodeHostParams();
  params["client"]["buildId"] = "b1";
  params["client"]["timeZone"] = "Europe/Paris";
  params["client"]["modelIdentifier"] = "Mac14,2";
  params["permissions"] = {{"camera", true}, {"mic", false}};
  params["computerUse"] = {{"anything", 1}};
  params["workerRuns"] = json::array();
  params["modelCatalog"] = {{"agentId", "a"}, {"shortId", "s"}};
  params["locale"] = "en-US";
  params["userAgent"] = "ua";
  params["auth"] = {
      {"token", ""},     {"bootstrapToken", "b"},       {"deviceToken", "d"},
      {"password", "p"}, {"approvalRuntimeToken", "a"}, {"agentRuntimeIdentityToken", "i"}};
  absl::StatusOr<ConnectParams> p = ParseConnectParams(params);
  ASSERT_THAT(p, IsOk());
  EXPECT_EQ(p->client.time_zone, "Europe/Paris");
  EXPECT_EQ((*p->permissions)["camera"], true);
  EXPECT_EQ(p->computer_use["anything"], 1);
  EXPECT_EQ(p->model_catalog["shortId"], "s");
  EXPECT_EQ(p->auth->token, "");
  EXPECT_EQ(p->auth->device_token, "d");
  EXPECT_EQ(p->locale, "en-US");
  params["modelCatalog"] = {{"sessionKey", "k"}};
  EXPECT_THAT(ParseConnectParams(params), IsOk());
}

TEST(ConnectParamsTest, SaturatesHugeSignedAt) {
  json params = NodeHostParams();
  params["device"]["signedAt"] = 1e300;
  absl::StatusOr<ConnectParams> p = ParseConnectParams(params);
  ASSERT_THAT(p, IsOk());
  EXPECT_EQ(p->device->signed_at_ms, std::numeric_limits<int64_t>::max());
}

TEST(ConnectParamsTest, ErrorPaths) {
  EXPECT_EQ(ParseConnectParams(json()).status().message(), "at root: must be object");
  EXPECT_EQ(ParseConnectParams(json::array()).status().message(), "at root: must be object");
  ExpectRejected([](json& p) { p.erase("minProtocol"); },
                 "at root: must have required property 'minProtocol'");
  ExpectRejected([](json& p) { p.erase("client"); },
                 "at root: must have required property 'client'");
  ExpectRejected([](json& p) { p["extra"] = 1; }, "at root: unexpected property 'extra'");
  ExpectRejected([](json& p) { p["minProtocol"] = 0; }, "at /minProtocol: must be >= 1");
  ExpectRejected([](json& p) { p["maxProtocol"] = 4.5; }, "at /maxProtocol: must be integer");
  ExpectRejected([](json& p) { p["maxProtocol"] = "4"; }, "at /maxProtocol: must be integer");
  ExpectRejected([](json& p) { p["client"] = "node-host"; }, "at /client: must be object");
  ExpectRejected([](json& p) { p["client"].erase("version"); },
                 "at /client: must have required property 'version'");
  ExpectRejected([](json& p) { p["client"]["os"] = "linux"; },
                 "at /client: unexpected property 'os'");
  ExpectRejected([](json& p) { p["client"]["id"] = "my-node"; },
                 "at /client/id: must be equal to one of the allowed values");
  ExpectRejected([](json& p) { p["client"]["id"] = 1; },
                 "at /client/id: must be equal to one of the allowed values");
  ExpectRejected([](json& p) { p["client"]["mode"] = "server"; },
                 "at /client/mode: must be equal to one of the allowed values");
  ExpectRejected([](json& p) { p["client"]["version"] = ""; },
                 "at /client/version: must NOT have fewer than 1 characters");
  ExpectRejected([](json& p) { p["client"]["platform"] = 5; },
                 "at /client/platform: must be string");
  ExpectRejected([](json& p) { p["client"]["displayName"] = ""; },
                 "at /client/displayName: must NOT have fewer than 1 characters");
  ExpectRejected([](json& p) { p["client"]["buildId"] = std::string(97, 'b'); },
                 "at /client/buildId: must NOT have more than 96 characters");
  ExpectRejected([](json& p) { p["client"]["timeZone"] = std::string(65, 'z'); },
                 "at /client/timeZone: must NOT have more than 64 characters");
  ExpectRejected([](json& p) { p["caps"] = "file"; }, "at /caps: must be array");
  ExpectRejected(
      [](json& p) {
        p["caps"] = {"ok", ""};
      },
      "at /caps/1: must NOT have fewer than 1 characters");
  ExpectRejected([](json& p) { p["commands"] = {1}; }, "at /commands/0: must be string");
  // Bounded: the registry keeps these per node.
  ExpectRejected([](json& p) { p["commands"] = std::vector<std::string>(513, "system.run"); },
                 "at /commands: must NOT have more than 512 items");
  ExpectRejected([](json& p) { p["caps"] = {std::string(257, 'c')}; },
                 "at /caps/0: must NOT have more than 256 characters");
  ExpectRejected(
      [](json& p) {
        p["permissions"] = {{"camera", "yes"}};
      },
      "at /permissions/camera: must be boolean");
  ExpectRejected([](json& p) { p["permissions"] = json::array(); },
                 "at /permissions: must be object");
  ExpectRejected([](json& p) { p["pathEnv"] = 1; }, "at /pathEnv: must be string");
  ExpectRejected([](json& p) { p["role"] = ""; },
                 "at /role: must NOT have fewer than 1 characters");
  ExpectRejected([](json& p) { p["scopes"] = {nullptr}; }, "at /scopes/0: must be string");
  ExpectRejected(
      [](json& p) {
        p["modelCatalog"] = {{"slugHint", "x"}};
      },
      "at /modelCatalog: must match a schema in anyOf");
  ExpectRejected(
      [](json& p) {
        p["modelCatalog"] = {{"shortId", ""}};
      },
      "at /modelCatalog: must match a schema in anyOf");
  ExpectRejected([](json& p) { p["device"] = true; }, "at /device: must be object");
  ExpectRejected([](json& p) { p["device"].erase("nonce"); },
                 "at /device: must have required property 'nonce'");
  ExpectRejected([](json& p) { p["device"]["extra"] = 1; },
                 "at /device: unexpected property 'extra'");
  ExpectRejected([](json& p) { p["device"]["id"] = ""; },
                 "at /device/id: must NOT have fewer than 1 characters");
  ExpectRejected([](json& p) { p["device"]["publicKey"] = 1; },
                 "at /device/publicKey: must be string");
  ExpectRejected([](json& p) { p["device"]["signature"] = ""; },
                 "at /device/signature: must NOT have fewer than 1 characters");
  ExpectRejected([](json& p) { p["device"]["signedAt"] = -1; },
                 "at /device/signedAt: must be >= 0");
  ExpectRejected([](json& p) { p["device"]["signedAt"] = "1700000000000"; },
                 "at /device/signedAt: must be integer");
  ExpectRejected([](json& p) { p["auth"] = "tok"; }, "at /auth: must be object");
  ExpectRejected([](json& p) { p["auth"]["sharedSecret"] = "x"; },
                 "at /auth: unexpected property 'sharedSecret'");
  ExpectRejected([](json& p) { p["auth"]["token"] = 5; }, "at /auth/token: must be string");
  ExpectRejected([](json& p) { p["auth"]["deviceToken"] = nullptr; },
                 "at /auth/deviceToken: must be string");
  ExpectRejected([](json& p) { p["locale"] = 1; }, "at /locale: must be string");
  ExpectRejected([](json& p) { p["userAgent"] = {}; }, "at /userAgent: must be string");
}

TEST(ConnectParamsTest, Enums) {
  EXPECT_TRUE(IsKnownClientId("node-host"));
  EXPECT_TRUE(IsKnownClientId("openclaw-probe"));
  EXPECT_FALSE(IsKnownClientId("node"));
  EXPECT_TRUE(IsKnownClientMode("node"));
  EXPECT_TRUE(IsKnownClientMode("probe"));
  EXPECT_FALSE(IsKnownClientMode("operator"));
}

}  // namespace
}  // namespace tether::edge::protocol
