#include "ws_edge/protocol/handshake.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "ws_edge/protocol/device_identity.h"

namespace tether::edge::protocol {
namespace {

using nlohmann::json;

constexpr size_t kMaxCloseReasonBytes = 123;
constexpr absl::string_view kTokenMissingMessage =
    "unauthorized: gateway token missing (set OPENCLAW_GATEWAY_TOKEN)";
constexpr absl::string_view kTokenMismatchMessage =
    "unauthorized: gateway token mismatch (set OPENCLAW_GATEWAY_TOKEN)";

HandshakeRejection Reject(absl::string_view request_id, absl::string_view code,
                          absl::string_view message, json details = nullptr,
                          int close_code = kClosePolicyViolation) {
  HandshakeRejection r;
  r.request_id = std::string(request_id);
  r.error.code = std::string(code);
  r.error.message = std::string(message);
  r.error.details = std::move(details);
  r.close_code = close_code;
  r.close_reason = TruncateCloseReason(message);
  return r;
}

HandshakeRejection CloseOnly(int close_code, absl::string_view reason) {
  HandshakeRejection r;
  r.send_response = false;
  r.close_code = close_code;
  r.close_reason = std::string(reason);
  return r;
}

HandshakeRejection DeviceAuthRejection(absl::string_view request_id, absl::string_view code,
                                       absl::string_view reason, absl::string_view message) {
  return Reject(request_id, kInvalidRequest, message,
                {{"code", std::string(code)}, {"reason", std::string(reason)}});
}

HandshakeRejection TokenMismatchRejection(absl::string_view request_id) {
  return Reject(request_id, kInvalidRequest, kTokenMismatchMessage,
                {{"code", "AUTH_TOKEN_MISMATCH"},
                 {"authReason", "token_mismatch"},
                 {"canRetryWithDeviceToken", true}});
}

// Hashing first makes the comparison constant-time in the length as well as the content.
bool TokensEqual(absl::string_view a, absl::string_view b) {
  unsigned char da[EVP_MAX_MD_SIZE];
  unsigned char db[EVP_MAX_MD_SIZE];
  unsigned int la = 0;
  unsigned int lb = 0;
  if (EVP_Digest(a.data(), a.size(), da, &la, EVP_sha256(), nullptr) != 1 ||
      EVP_Digest(b.data(), b.size(), db, &lb, EVP_sha256(), nullptr) != 1 || la != lb) {
    return false;
  }
  return CRYPTO_memcmp(da, db, la) == 0;
}

// |a - b| without overflow for any two non-negative int64 values.
uint64_t Distance(int64_t a, int64_t b) {
  return a > b ? static_cast<uint64_t>(a) - static_cast<uint64_t>(b)
               : static_cast<uint64_t>(b) - static_cast<uint64_t>(a);
}

// Section 4's device checks, in the Gateway's order. Fills node id, key and signature version.
std::optional<HandshakeRejection> CheckDevice(const std::string& request_id,
                                              const ConnectParams& params,
                                              const HandshakeConfig& config,
                                              HandshakeAccepted* accepted) {
  const DeviceProof& device = *params.device;
  absl::StatusOr<std::string> raw_key = DecodePublicKey(device.public_key);
  if (!raw_key.ok() || DeviceIdFromPublicKey(*raw_key) != device.id) {
    return DeviceAuthRejection(request_id, "DEVICE_AUTH_DEVICE_ID_MISMATCH", "device-id-mismatch",
                               "device identity mismatch");
  }
  if (config.now_ms < 0 || device.signed_at_ms < 0 ||
      Distance(config.now_ms, device.signed_at_ms) > static_cast<uint64_t>(config.max_skew_ms)) {
    return DeviceAuthRejection(request_id, "DEVICE_AUTH_SIGNATURE_EXPIRED",
                               "device-signature-stale", "device signature expired");
  }
  const absl::string_view nonce = absl::StripAsciiWhitespace(device.nonce);
  if (nonce.empty()) {
    return DeviceAuthRejection(request_id, "DEVICE_AUTH_NONCE_REQUIRED", "device-nonce-missing",
                               "device nonce required");
  }
  if (nonce != config.challenge_nonce) {
    return DeviceAuthRejection(request_id, "DEVICE_AUTH_NONCE_MISMATCH", "device-nonce-mismatch",
                               "device nonce mismatch");
  }
  const SignatureFields fields = SignatureFieldsFromConnect(params, nonce);
  absl::StatusOr<std::string> signature = Base64DecodeLenient(device.signature);
  const auto verifies = [&](const std::string& payload) {
    return signature.ok() && VerifyEd25519(*raw_key, payload, *signature);
  };
  if (verifies(BuildSignaturePayloadV3(fields))) {
    accepted->signature_version = 3;
  } else if (verifies(BuildSignaturePayloadV2(fields))) {
    accepted->signature_version = 2;
  } else {
    return DeviceAuthRejection(request_id, "DEVICE_AUTH_SIGNATURE_INVALID", "device-signature",
                               "device signature invalid");
  }
  // Unreachable after a good signature today (verification needs a 32-byte key), kept because
  // the Gateway orders it here and the stored key must be canonical.
  if (raw_key->size() != kEd25519KeyBytes) {
    return DeviceAuthRejection(request_id, "DEVICE_AUTH_PUBLIC_KEY_INVALID", "device-public-key",
                               "device public key invalid");
  }
  accepted->node_id = device.id;
  accepted->public_key = Base64UrlEncode(*raw_key);
  return std::nullopt;
}

// Section 3.2 from the edge's side. Empty strings count as absent, as they do in the Gateway.
std::optional<HandshakeRejection> CheckToken(const std::string& request_id,
                                             const ConnectParams& params,
                                             const HandshakeConfig& config,
                                             HandshakeAccepted* accepted) {
  const auto present = [](const std::optional<std::string>& s) {
    return s.has_value() && !s->empty();
  };
  const bool has_token = params.auth.has_value() && present(params.auth->token);
  const bool has_device_token = params.auth.has_value() && present(params.auth->device_token);
  if (has_device_token) accepted->device_token = *params.auth->device_token;
  if (!config.shared_token.has_value()) {
    accepted->token_check = TokenCheck::kNotRequired;
    return std::nullopt;
  }
  if (has_token && TokensEqual(*params.auth->token, *config.shared_token)) {
    accepted->token_check = TokenCheck::kSharedToken;
    return std::nullopt;
  }
  if (has_device_token) {
    accepted->token_check = TokenCheck::kDeviceTokenPending;
    accepted->shared_token_mismatch = has_token;
    return std::nullopt;
  }
  if (has_token) return TokenMismatchRejection(request_id);
  return Reject(request_id, kInvalidRequest, kTokenMissingMessage,
                {{"code", "AUTH_TOKEN_MISSING"}, {"authReason", "token_missing"}});
}

}  // namespace

bool ProtocolAdmitted(int64_t min_protocol, int64_t max_protocol, absl::string_view role,
                      absl::string_view client_mode) {
  if (min_protocol <= kProtocolVersion && kProtocolVersion <= max_protocol) return true;
  if (role == "node" && client_mode == "node" && min_protocol <= kMinNodeProtocolVersion &&
      kMinNodeProtocolVersion <= max_protocol) {
    return true;
  }
  return client_mode == "probe" && std::max(min_protocol, kMinProbeProtocolVersion) <=
                                       std::min(max_protocol, kProtocolVersion);
}

HandshakeResult CheckHandshake(absl::string_view first_frame_text, const HandshakeConfig& config) {
  absl::StatusOr<json> value = ParseJson(first_frame_text);
  if (!value.ok()) return CloseOnly(kCloseNormal, "");
  absl::StatusOr<Frame> frame = FrameFromJson(*std::move(value));
  if (!frame.ok()) return CloseOnly(kClosePolicyViolation, "invalid request frame");
  return CheckHandshakeFrame(*frame, config);
}

HandshakeResult CheckHandshakeFrame(const Frame& frame, const HandshakeConfig& config) {
  if (frame.type != FrameType::kRequest) {
    return CloseOnly(kClosePolicyViolation, "invalid request frame");
  }
  const std::string& id = frame.id;
  if (frame.method != "connect") {
    return Reject(id, kInvalidRequest, "invalid handshake: first request must be connect");
  }
  absl::StatusOr<ConnectParams> params = ParseConnectParams(frame.params);
  if (!params.ok()) {
    return Reject(id, kInvalidRequest,
                  absl::StrCat("invalid connect params: ", params.status().message()));
  }
  if (!ProtocolAdmitted(params->min_protocol, params->max_protocol, params->role,
                        params->client.mode)) {
    return Reject(id, kInvalidRequest, "protocol mismatch",
                  {{"code", "PROTOCOL_MISMATCH"},
                   {"clientMinProtocol", params->min_protocol},
                   {"clientMaxProtocol", params->max_protocol},
                   {"expectedProtocol", kProtocolVersion},
                   {"minimumProbeProtocol", kMinProbeProtocolVersion}},
                  kCloseProtocolError);
  }
  if (params->role != "node") {
    return Reject(id, kInvalidRequest,
                  absl::StrCat("role \"", absl::string_view(params->role).substr(0, 64),
                               "\" is not served here: this endpoint accepts nodes only; "
                               "operators and services use the registry's gRPC API"),
                  {{"code", "ROLE_NOT_SUPPORTED"}, {"role", params->role}});
  }
  if (!params->device.has_value()) {
    return Reject(id, kNotPaired, "device identity required",
                  {{"code", "DEVICE_IDENTITY_REQUIRED"}});
  }
  HandshakeAccepted accepted;
  if (auto r = CheckDevice(id, *params, config, &accepted)) return *std::move(r);
  if (auto r = CheckToken(id, *params, config, &accepted)) return *std::move(r);
  accepted.request_id = id;
  accepted.params = *std::move(params);
  return accepted;
}

HandshakeRejection DeviceTokenRejection(const HandshakeAccepted& accepted) {
  if (accepted.shared_token_mismatch) return TokenMismatchRejection(accepted.request_id);
  return Reject(accepted.request_id, kInvalidRequest,
                "unauthorized: device token mismatch (rotate/reissue device token)",
                {{"code", "AUTH_DEVICE_TOKEN_MISMATCH"}, {"authReason", "device_token_mismatch"}});
}

HandshakeRejection PairingRequiredRejection(absl::string_view request_id,
                                            absl::string_view pairing_request_id,
                                            absl::string_view reason) {
  // Without the last two keys the OpenClaw node host stops reconnecting on PAIRING_REQUIRED
  // and never notices an operator's approval until it is restarted; with them it keeps
  // retrying with its backoff (up to 30 s) and comes in once approved.
  return Reject(request_id, kNotPaired, "pairing required",
                {{"code", "PAIRING_REQUIRED"},
                 {"requestId", std::string(pairing_request_id)},
                 {"reason", std::string(reason)},
                 {"pauseReconnect", false},
                 {"recommendedNextStep", "wait_then_retry"}});
}

std::string TruncateCloseReason(absl::string_view reason) {
  if (reason.size() <= kMaxCloseReasonBytes) return std::string(reason);
  size_t end = kMaxCloseReasonBytes;
  // Back up over continuation bytes so a multi-byte character is not split.
  while (end > 0 && (static_cast<unsigned char>(reason[end]) & 0xC0) == 0x80) --end;
  return std::string(reason.substr(0, end));
}

}  // namespace tether::edge::protocol
