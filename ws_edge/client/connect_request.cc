#include "ws_edge/client/connect_request.h"

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "common/ids.h"
#include "ws_edge/protocol/frame.h"

namespace tether::edge::client {

using nlohmann::json;

absl::StatusOr<Challenge> ParseChallenge(const json& payload) {
  constexpr int64_t kMaxSafeInteger = (int64_t{1} << 53) - 1;  // JavaScript's safe range
  if (!payload.is_object()) return absl::InvalidArgumentError("connect challenge missing nonce");
  auto nonce = payload.find("nonce");
  if (nonce == payload.end() || !nonce->is_string() ||
      absl::StripAsciiWhitespace(nonce->get_ref<const std::string&>()).empty()) {
    return absl::InvalidArgumentError("connect challenge missing nonce");
  }
  Challenge c;
  c.nonce = std::string(absl::StripAsciiWhitespace(nonce->get_ref<const std::string&>()));
  auto ts = payload.find("ts");
  std::optional<int64_t> ts_ms = ts == payload.end() ? std::nullopt : protocol::JsonInteger(*ts);
  if (!ts_ms.has_value() || *ts_ms < 0 || *ts_ms > kMaxSafeInteger) {
    return absl::InvalidArgumentError("gateway connect challenge timestamp invalid");
  }
  c.ts_ms = *ts_ms;
  return c;
}

json BuildConnectParams(const ConnectRequestOptions& o, const protocol::Ed25519Identity& identity,
                        const Challenge& challenge, const std::optional<std::string>& shared_token,
                        const std::optional<std::string>& device_token) {
  return BuildConnectParams(o, identity, challenge, shared_token, device_token,
                            [&identity](absl::string_view m) { return identity.Sign(m); });
}

json BuildConnectParams(const ConnectRequestOptions& o, const protocol::Ed25519Identity& identity,
                        const Challenge& challenge, const std::optional<std::string>& shared_token,
                        const std::optional<std::string>& device_token, const Signer& sign) {
  json client = {{"id", o.client_id},
                 {"displayName", o.display_name},
                 {"version", o.version},
                 {"platform", o.platform},
                 {"deviceFamily", o.device_family},
                 {"mode", o.client_mode},
                 {"instanceId", o.instance_id.empty() ? common::RandomUuid() : o.instance_id}};
  json params = {{"minProtocol", o.min_protocol},
                 {"maxProtocol", o.max_protocol},
                 {"client", std::move(client)},
                 {"caps", o.caps},
                 {"commands", o.commands},
                 {"role", o.role},
                 {"scopes", o.scopes}};
  if (o.path_env.has_value()) params["pathEnv"] = *o.path_env;

  protocol::SignatureFields fields;
  if (shared_token.has_value()) {
    params["auth"] = {{"token", *shared_token}};
    fields.token = *shared_token;
  } else if (device_token.has_value()) {
    params["auth"] = {{"deviceToken", *device_token}};
    fields.token = *device_token;
  }
  fields.device_id = identity.device_id();
  fields.client_id = o.client_id;
  fields.client_mode = o.client_mode;
  fields.role = o.role;
  fields.scopes = o.scopes;
  fields.signed_at_ms = challenge.ts_ms;
  fields.nonce = challenge.nonce;
  fields.platform = o.platform;
  fields.device_family = o.device_family;
  params["device"] = {{"id", identity.device_id()},
                      {"publicKey", identity.PublicKeyBase64Url()},
                      {"signature", sign(protocol::BuildSignaturePayloadV3(fields))},
                      {"signedAt", challenge.ts_ms},
                      {"nonce", challenge.nonce}};
  return params;
}

}  // namespace tether::edge::client
