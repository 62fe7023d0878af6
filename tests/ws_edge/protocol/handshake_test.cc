#include "ws_edge/protocol/handshake.h"

#include <optional>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ws_edge/protocol/device_identity.h"

namespace tether::edge::protocol {
namespace {

using ::nlohmann::json;
using ::testing::HasSubstr;

constexpr absl::string_view kNonce = "11111111-2222-3333-4444-555555555555";
constexpr int64_t kNow = 1700000000000;
constexpr absl::string_view kShared = "tok-123";

Ed25519Identity VectorKey() {
  std::string seed;
  for (int i = 1; i <= 32; ++i) seed.push_back(static_cast<char>(i));
  return *Ed25519Identity::FromSeed(seed);
}

// The fields of a connect request; MakeParams signs whatever they say.
struct Spec {
  std::string nonce = std::string(kNonce);
  int64_t signed_at = kNow;
  std::optional<std::string> token = std::string(kShared);
  std::optional<std::string> device_token;
  std::string role = "node";
  std::string mode = "node";
  int64_t min_protocol = 4;
  int64_t max_protocol = 4;
  int signature_version = 3;
};

json MakeParams(const Spec& s, const Ed25519Identity& key = VectorKey()) {
  json params = {
      {"minProtocol", s.min_protocol},
      {"maxProtocol", s.max_protocol},
      {"client",
       {{"id", "node-host"},
        {"displayName", "box"},
        {"version", "2026.9.6"},
        {"platform", "linux"},
        {"deviceFamily", "Linux"},
        {"mode", s.mode}}},
      {"role", s.role},
      {"scopes", json::array()},
  };
  json auth = json::object();
  if (s.token) auth["token"] = *s.token;
  if (s.device_token) auth["deviceToken"] = *s.device_token;
  if (!auth.empty()) params["auth"] = auth;
  SignatureFields f;
  f.device_id = key.device_id();
  f.client_id = "node-host";
  f.client_mode = s.mode;
  f.role = s.role;
  f.signed_at_ms = s.signed_at;
  f.token = s.token.value_or(s.device_token.value_or(""));
  f.nonce = std::string(absl::StripAsciiWhitespace(s.nonce));
  f.platform = "linux";
  f.device_family = "Linux";
  const std::string payload =
      s.signature_version == 3 ? BuildSignaturePayloadV3(f) : BuildSignaturePayloadV2(f);
  params["device"] = {{"id", key.device_id()},
                      {"publicKey", key.PublicKeyBase64Url()},
                      {"signature", key.Sign(payload)},
                      {"signedAt", s.signed_at},
                      {"nonce", s.nonce}};
  return params;
}

std::string ConnectText(const json& params, const std::string& method = "connect") {
  return json{{"type", "req"}, {"id", "1:req"}, {"method", method}, {"params", params}}.dump();
}

HandshakeConfig Config(bool with_token = true) {
  HandshakeConfig c;
  c.challenge_nonce = kNonce;
  c.now_ms = kNow;
  if (with_token) c.shared_token = kShared;
  return c;
}

HandshakeAccepted ExpectAccepted(const std::string& text, const HandshakeConfig& config) {
  HandshakeResult r = CheckHandshake(text, config);
  if (auto* rej = std::get_if<HandshakeRejection>(&r)) {
    ADD_FAILURE() << "rejected: " << rej->error.message << " " << rej->error.details.dump();
    return {};
  }
  return std::get<HandshakeAccepted>(std::move(r));
}

HandshakeRejection ExpectRejected(const std::string& text, const HandshakeConfig& config) {
  HandshakeResult r = CheckHandshake(text, config);
  if (!std::holds_alternative<HandshakeRejection>(r)) {
    ADD_FAILURE() << "accepted: " << text;
    return {};
  }
  return std::get<HandshakeRejection>(std::move(r));
}

// Expects the documented INVALID_REQUEST device error with close 1008.
void ExpectDeviceError(const std::string& text, absl::string_view code, absl::string_view reason,
                       absl::string_view message) {
  HandshakeRejection r = ExpectRejected(text, Config());
  EXPECT_TRUE(r.send_response);
  EXPECT_EQ(r.request_id, "1:req");
  EXPECT_EQ(r.error.code, "INVALID_REQUEST");
  EXPECT_EQ(r.error.message, message);
  EXPECT_EQ(r.error.details["code"], std::string(code));
  EXPECT_EQ(r.error.details["reason"], std::string(reason));
  EXPECT_EQ(r.close_code, 1008);
  EXPECT_EQ(r.close_reason, message);
}

TEST(HandshakeTest, AcceptsNodeHostWithSharedToken) {
  const Ed25519Identity key = VectorKey();
  HandshakeAccepted a = ExpectAccepted(ConnectText(MakeParams({})), Config());
  EXPECT_EQ(a.request_id, "1:req");
  EXPECT_EQ(a.node_id, key.device_id());
  EXPECT_EQ(a.public_key, key.PublicKeyBase64Url());
  EXPECT_EQ(a.signature_version, 3);
  EXPECT_EQ(a.token_check, TokenCheck::kSharedToken);
  EXPECT_TRUE(a.device_token.empty());
  EXPECT_EQ(a.params.client.id, "node-host");
}

TEST(HandshakeTest, AcceptsV2Signature) {
  Spec s;
  s.signature_version = 2;
  EXPECT_EQ(ExpectAccepted(ConnectText(MakeParams(s)), Config()).signature_version, 2);
}

TEST(HandshakeTest, NoSharedTokenConfiguredAcceptsAnyToken) {
  Spec s;
  s.token = "whatever";
  EXPECT_EQ(ExpectAccepted(ConnectText(MakeParams(s)), Config(false)).token_check,
            TokenCheck::kNotRequired);
  s.token.reset();
  EXPECT_EQ(ExpectAccepted(ConnectText(MakeParams(s)), Config(false)).token_check,
            TokenCheck::kNotRequired);
}

TEST(HandshakeTest, NormalizesStandardBase64PublicKey) {
  const Ed25519Identity key = VectorKey();
  json params = MakeParams({});
  params["device"]["publicKey"] = absl::Base64Escape(key.public_key_raw());  // padded, std
  HandshakeAccepted a = ExpectAccepted(ConnectText(params), Config());
  EXPECT_EQ(a.public_key, key.PublicKeyBase64Url());
}

TEST(HandshakeTest, NonJsonGetsNoResponseAndPlainClose) {
  for (const char* text : {"", "hello", "{\"type\":\"req\"", "\xff"}) {
    HandshakeRejection r = ExpectRejected(text, Config());
    EXPECT_FALSE(r.send_response);
    EXPECT_EQ(r.close_code, 1000);
    EXPECT_EQ(r.close_reason, "");
  }
}

TEST(HandshakeTest, NonRequestFrameGetsNoResponse) {
  for (const char* text :
       {R"({"type":"event","event":"connect"})", R"({"type":"res","id":"1","ok":true})", R"([1])",
        R"({"type":"req","id":"","method":"connect"})", R"({"type":"req","id":"1"})"}) {
    HandshakeRejection r = ExpectRejected(text, Config());
    EXPECT_FALSE(r.send_response) << text;
    EXPECT_EQ(r.close_code, 1008);
    EXPECT_EQ(r.close_reason, "invalid request frame");
  }
}

TEST(HandshakeTest, FirstRequestMustBeConnect) {
  HandshakeRejection r = ExpectRejected(ConnectText(MakeParams({}), "node.event"), Config());
  EXPECT_TRUE(r.send_response);
  EXPECT_EQ(r.request_id, "1:req");
  EXPECT_EQ(r.error.code, "INVALID_REQUEST");
  EXPECT_EQ(r.error.message, "invalid handshake: first request must be connect");
  EXPECT_EQ(r.close_code, 1008);
}

TEST(HandshakeTest, InvalidConnectParams) {
  json params = MakeParams({});
  params["client"]["id"] = "rogue";
  HandshakeRejection r = ExpectRejected(ConnectText(params), Config());
  EXPECT_EQ(r.error.code, "INVALID_REQUEST");
  EXPECT_EQ(r.error.message,
            "invalid connect params: at /client/id: must be equal to one of the allowed values");
  EXPECT_EQ(r.close_code, 1008);
  r = ExpectRejected(R"({"type":"req","id":"2","method":"connect"})", Config());
  EXPECT_EQ(r.error.message, "invalid connect params: at root: must be object");
  EXPECT_EQ(r.request_id, "2");
}

TEST(HandshakeTest, ProtocolMismatchCloses1002) {
  Spec s;
  s.min_protocol = 5;
  s.max_protocol = 5;
  HandshakeRejection r = ExpectRejected(ConnectText(MakeParams(s)), Config());
  EXPECT_EQ(r.error.code, "INVALID_REQUEST");
  EXPECT_EQ(r.error.message, "protocol mismatch");
  EXPECT_EQ(r.error.details, json::parse(R"({"code":"PROTOCOL_MISMATCH","clientMinProtocol":5,
      "clientMaxProtocol":5,"expectedProtocol":4,"minimumProbeProtocol":3})"));
  EXPECT_EQ(r.close_code, 1002);
  EXPECT_EQ(r.close_reason, "protocol mismatch");
}

TEST(HandshakeTest, LegacyNodeWindow) {
  Spec s;
  s.min_protocol = 3;
  s.max_protocol = 3;
  ExpectAccepted(ConnectText(MakeParams(s)), Config());
}

TEST(HandshakeTest, ProtocolAdmissionRules) {
  EXPECT_TRUE(ProtocolAdmitted(4, 4, "node", "node"));
  EXPECT_TRUE(ProtocolAdmitted(1, 10, "operator", "cli"));
  EXPECT_TRUE(ProtocolAdmitted(3, 3, "node", "node"));
  EXPECT_FALSE(ProtocolAdmitted(3, 3, "operator", "node"));
  EXPECT_FALSE(ProtocolAdmitted(3, 3, "node", "cli"));
  EXPECT_FALSE(ProtocolAdmitted(2, 2, "node", "node"));
  EXPECT_TRUE(ProtocolAdmitted(3, 3, "operator", "probe"));
  EXPECT_TRUE(ProtocolAdmitted(1, 3, "operator", "probe"));
  EXPECT_FALSE(ProtocolAdmitted(1, 2, "operator", "probe"));
  EXPECT_FALSE(ProtocolAdmitted(5, 6, "operator", "probe"));
  EXPECT_FALSE(ProtocolAdmitted(5, 5, "node", "node"));
  EXPECT_FALSE(ProtocolAdmitted(5, 3, "node", "probe"));
}

TEST(HandshakeTest, OperatorIsToldToUseGrpc) {
  Spec s;
  s.role = "operator";
  s.mode = "cli";
  HandshakeRejection r = ExpectRejected(ConnectText(MakeParams(s)), Config());
  EXPECT_EQ(r.error.code, "INVALID_REQUEST");
  EXPECT_THAT(r.error.message, HasSubstr("gRPC"));
  EXPECT_EQ(r.error.details["code"], "ROLE_NOT_SUPPORTED");
  EXPECT_EQ(r.error.details["role"], "operator");
  EXPECT_EQ(r.close_code, 1008);
  EXPECT_LE(r.close_reason.size(), 123u);
  // No role at all means operator.
  json params = MakeParams({});
  params.erase("role");
  EXPECT_EQ(ExpectRejected(ConnectText(params), Config()).error.details["role"], "operator");
}

TEST(HandshakeTest, DeviceIdentityRequired) {
  json params = MakeParams({});
  params.erase("device");
  HandshakeRejection r = ExpectRejected(ConnectText(params), Config());
  EXPECT_EQ(r.error.code, "NOT_PAIRED");
  EXPECT_EQ(r.error.message, "device identity required");
  EXPECT_EQ(r.error.details["code"], "DEVICE_IDENTITY_REQUIRED");
  EXPECT_EQ(r.close_code, 1008);
}

TEST(HandshakeTest, DeviceIdMismatch) {
  json params = MakeParams({});
  params["device"]["id"] = Ed25519Identity::Generate().device_id();
  ExpectDeviceError(ConnectText(params), "DEVICE_AUTH_DEVICE_ID_MISMATCH", "device-id-mismatch",
                    "device identity mismatch");
  params = MakeParams({});
  params["device"]["publicKey"] = "not base64!";
  ExpectDeviceError(ConnectText(params), "DEVICE_AUTH_DEVICE_ID_MISMATCH", "device-id-mismatch",
                    "device identity mismatch");
  // Checked first: a stale proof for the wrong id still reports the id.
  Spec s;
  s.signed_at = kNow - 600'000;
  params = MakeParams(s);
  params["device"]["id"] = std::string(64, 'a');
  ExpectDeviceError(ConnectText(params), "DEVICE_AUTH_DEVICE_ID_MISMATCH", "device-id-mismatch",
                    "device identity mismatch");
}

TEST(HandshakeTest, SignatureSkewWindow) {
  for (int64_t delta : {-119'000, 119'000, -120'000, 120'000}) {
    Spec s;
    s.signed_at = kNow + delta;
    ExpectAccepted(ConnectText(MakeParams(s)), Config());
  }
  for (int64_t delta : {-121'000, 121'000, -600'000}) {
    Spec s;
    s.signed_at = kNow + delta;
    ExpectDeviceError(ConnectText(MakeParams(s)), "DEVICE_AUTH_SIGNATURE_EXPIRED",
                      "device-signature-stale", "device signature expired");
  }
  json params = MakeParams({});
  params["device"]["signedAt"] = 1e300;
  ExpectDeviceError(ConnectText(params), "DEVICE_AUTH_SIGNATURE_EXPIRED", "device-signature-stale",
                    "device signature expired");
}

TEST(HandshakeTest, Nonce) {
  Spec s;
  s.nonce = "   ";
  ExpectDeviceError(ConnectText(MakeParams(s)), "DEVICE_AUTH_NONCE_REQUIRED",
                    "device-nonce-missing", "device nonce required");
  s.nonce = "22222222-2222-3333-4444-555555555555";
  ExpectDeviceError(ConnectText(MakeParams(s)), "DEVICE_AUTH_NONCE_MISMATCH",
                    "device-nonce-mismatch", "device nonce mismatch");
  s.nonce = absl::StrCat(" ", kNonce, "\n");  // compared and signed trimmed
  ExpectAccepted(ConnectText(MakeParams(s)), Config());
}

TEST(HandshakeTest, BadSignature) {
  json params = MakeParams({});
  params["auth"]["token"] = "tok-other";  // the proof signed tok-123
  ExpectDeviceError(ConnectText(params), "DEVICE_AUTH_SIGNATURE_INVALID", "device-signature",
                    "device signature invalid");
  params = MakeParams({});
  params["device"]["signature"] = "%%%";
  ExpectDeviceError(ConnectText(params), "DEVICE_AUTH_SIGNATURE_INVALID", "device-signature",
                    "device signature invalid");
  params = MakeParams({});
  params["client"]["deviceFamily"] = "Mac";  // bound by v3
  ExpectDeviceError(ConnectText(params), "DEVICE_AUTH_SIGNATURE_INVALID", "device-signature",
                    "device signature invalid");
  // A key that hashes to the claimed id but is not 32 bytes fails verification.
  params = MakeParams({});
  params["device"]["publicKey"] = "aGVsbG8";
  params["device"]["id"] = DeviceIdFromPublicKey("hello");
  ExpectDeviceError(ConnectText(params), "DEVICE_AUTH_SIGNATURE_INVALID", "device-signature",
                    "device signature invalid");
}

TEST(HandshakeTest, TokenMismatch) {
  Spec s;
  s.token = "wrong";
  HandshakeRejection r = ExpectRejected(ConnectText(MakeParams(s)), Config());
  EXPECT_EQ(r.error.code, "INVALID_REQUEST");
  EXPECT_THAT(r.error.message, HasSubstr("unauthorized: gateway token mismatch"));
  EXPECT_EQ(r.error.details["code"], "AUTH_TOKEN_MISMATCH");
  EXPECT_EQ(r.error.details["canRetryWithDeviceToken"], true);
  EXPECT_EQ(r.close_code, 1008);
  s.token = "tok-1234";  // a prefix match is no match
  EXPECT_EQ(ExpectRejected(ConnectText(MakeParams(s)), Config()).error.details["code"],
            "AUTH_TOKEN_MISMATCH");
}

TEST(HandshakeTest, TokenMissing) {
  Spec s;
  s.token.reset();
  HandshakeRejection r = ExpectRejected(ConnectText(MakeParams(s)), Config());
  EXPECT_EQ(r.error.code, "INVALID_REQUEST");
  EXPECT_EQ(r.error.message, "unauthorized: gateway token missing (set OPENCLAW_GATEWAY_TOKEN)");
  EXPECT_EQ(r.error.details["code"], "AUTH_TOKEN_MISSING");
  EXPECT_EQ(r.close_code, 1008);
  s.token = "";  // empty counts as missing
  EXPECT_EQ(ExpectRejected(ConnectText(MakeParams(s)), Config()).error.details["code"],
            "AUTH_TOKEN_MISSING");
}

TEST(HandshakeTest, DeviceTokenGoesToTheRegistry) {
  Spec s;
  s.token.reset();
  s.device_token = "dev-tok";
  HandshakeAccepted a = ExpectAccepted(ConnectText(MakeParams(s)), Config());
  EXPECT_EQ(a.token_check, TokenCheck::kDeviceTokenPending);
  EXPECT_EQ(a.device_token, "dev-tok");
  EXPECT_FALSE(a.shared_token_mismatch);
  HandshakeRejection r = DeviceTokenRejection(a);
  EXPECT_EQ(r.error.details["code"], "AUTH_DEVICE_TOKEN_MISMATCH");
  EXPECT_EQ(r.request_id, "1:req");
  EXPECT_EQ(r.close_code, 1008);

  s.token = "wrong";  // wrong shared token plus a device token: the registry decides
  a = ExpectAccepted(ConnectText(MakeParams(s)), Config());
  EXPECT_EQ(a.token_check, TokenCheck::kDeviceTokenPending);
  EXPECT_TRUE(a.shared_token_mismatch);
  EXPECT_EQ(DeviceTokenRejection(a).error.details["code"], "AUTH_TOKEN_MISMATCH");

  s.token = std::string(kShared);  // the right shared token wins over a device token
  a = ExpectAccepted(ConnectText(MakeParams(s)), Config());
  EXPECT_EQ(a.token_check, TokenCheck::kSharedToken);
  EXPECT_EQ(a.device_token, "dev-tok");
}

TEST(HandshakeTest, PairingRequired) {
  HandshakeRejection r = PairingRequiredRejection("1:req", "pr-1", "not-paired");
  EXPECT_EQ(r.error.code, "NOT_PAIRED");
  EXPECT_EQ(r.error.message, "pairing required");
  EXPECT_EQ(r.error.details, json::parse(
                                 R"({"code":"PAIRING_REQUIRED","requestId":"pr-1",
                                     "reason":"not-paired","pauseReconnect":false,
                                     "recommendedNextStep":"wait_then_retry"})"));
  EXPECT_EQ(r.close_code, 1008);
}

TEST(HandshakeTest, TruncateCloseReason) {
  EXPECT_EQ(TruncateCloseReason("short"), "short");
  EXPECT_EQ(TruncateCloseReason(std::string(200, 'x')).size(), 123u);
  // 122 ASCII bytes then a 2-byte character: cut before it, not inside it.
  const std::string s = std::string(122, 'x') + "\xc3\xa9" + "tail";
  EXPECT_EQ(TruncateCloseReason(s), std::string(122, 'x'));
}

TEST(HandshakeTest, CheckHandshakeFrameTakesParsedFrames) {
  absl::StatusOr<Frame> frame = ParseFrame(ConnectText(MakeParams({})));
  ASSERT_TRUE(frame.ok());
  EXPECT_TRUE(
      std::holds_alternative<HandshakeAccepted>(CheckHandshakeFrame(*std::move(frame), Config())));
}

}  // namespace
}  // namespace tether::edge::protocol
