#include "ws_edge/protocol/connect_params.h"

#include <algorithm>
#include <cstddef>
#include <initializer_list>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "ws_edge/protocol/frame.h"

namespace tether::edge::protocol {
namespace {

using nlohmann::json;

constexpr absl::string_view kClientIds[] = {"webchat-ui",
                                            "openclaw-control-ui",
                                            "openclaw-browser-copilot",
                                            "openclaw-tui",
                                            "webchat",
                                            "cli",
                                            "gateway-client",
                                            "openclaw-macos",
                                            "openclaw-linux",
                                            "openclaw-ios",
                                            "openclaw-watchos",
                                            "openclaw-android",
                                            "node-host",
                                            "openclaw-worker",
                                            "test",
                                            "fingerprint",
                                            "openclaw-probe"};
constexpr absl::string_view kClientModes[] = {"webchat", "cli",    "ui",    "backend",
                                              "node",    "worker", "probe", "test"};

// Messages follow the wording of OpenClaw's schema validator ("at <path>: <problem>") so that
// clients which match on them see what the Gateway would say.
absl::Status Invalid(absl::string_view path, absl::string_view problem) {
  return absl::InvalidArgumentError(
      absl::StrCat("at ", path.empty() ? "root" : path, ": ", problem));
}

std::string Child(absl::string_view path, absl::string_view key) {
  return absl::StrCat(path, "/", key);
}

// JavaScript measures string length in UTF-16 code units; the schema's bounds are in those.
size_t Utf16Length(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) {
    if ((c & 0xC0) != 0x80) n += (c >= 0xF0) ? 2 : 1;
  }
  return n;
}

struct StrRule {
  size_t min = 0;
  size_t max = std::numeric_limits<size_t>::max();
};
constexpr StrRule kAnyString{};
constexpr StrRule kNonEmpty{1};

absl::Status RequireObject(const json& v, absl::string_view path) {
  return v.is_object() ? absl::OkStatus() : Invalid(path, "must be object");
}

absl::Status CheckKeys(const json& obj, absl::string_view path,
                       std::initializer_list<const char*> required,
                       std::initializer_list<const char*> optional) {
  for (const char* key : required) {
    if (obj.find(key) == obj.end()) {
      return Invalid(path, absl::StrCat("must have required property '", key, "'"));
    }
  }
  for (const auto& item : obj.items()) {
    const std::string& key = item.key();
    const auto known = [&](std::initializer_list<const char*> keys) {
      return std::find(keys.begin(), keys.end(), key) != keys.end();
    };
    if (!known(required) && !known(optional)) {
      return Invalid(
          path, absl::StrCat("unexpected property '", absl::string_view(key).substr(0, 64), "'"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckString(const json& v, absl::string_view path, StrRule rule) {
  if (!v.is_string()) return Invalid(path, "must be string");
  const size_t len = Utf16Length(v.get_ref<const std::string&>());
  if (len < rule.min) {
    return Invalid(path, absl::StrCat("must NOT have fewer than ", rule.min, " characters"));
  }
  if (len > rule.max) {
    return Invalid(path, absl::StrCat("must NOT have more than ", rule.max, " characters"));
  }
  return absl::OkStatus();
}

absl::Status GetString(const json& obj, absl::string_view path, const char* key, StrRule rule,
                       std::string* out) {
  const json& v = *obj.find(key);  // presence checked by CheckKeys
  if (auto s = CheckString(v, Child(path, key), rule); !s.ok()) return s;
  *out = v.get_ref<const std::string&>();
  return absl::OkStatus();
}

absl::Status GetOptString(const json& obj, absl::string_view path, const char* key, StrRule rule,
                          std::optional<std::string>* out) {
  auto it = obj.find(key);
  if (it == obj.end()) return absl::OkStatus();
  if (auto s = CheckString(*it, Child(path, key), rule); !s.ok()) return s;
  *out = it->get_ref<const std::string&>();
  return absl::OkStatus();
}

constexpr size_t kMaxListItems = 512;
constexpr size_t kMaxListItemChars = 256;

absl::Status GetOptStringArray(const json& obj, absl::string_view path, const char* key,
                               std::vector<std::string>* out) {
  auto it = obj.find(key);
  if (it == obj.end()) return absl::OkStatus();
  const std::string array_path = Child(path, key);
  if (!it->is_array()) return Invalid(array_path, "must be array");
  // The registry keeps these per node for as long as it knows the node: bounded, so that a
  // fleet of hostile nodes cannot fill it (the real node host declares about 20 commands).
  if (it->size() > kMaxListItems) {
    return Invalid(array_path, absl::StrCat("must NOT have more than ", kMaxListItems, " items"));
  }
  out->reserve(it->size());
  for (size_t i = 0; i < it->size(); ++i) {
    const json& item = (*it)[i];
    const std::string item_path = Child(array_path, absl::StrCat(i));
    if (auto s = CheckString(item, item_path, kNonEmpty); !s.ok()) return s;
    const std::string& text = item.get_ref<const std::string&>();
    const size_t chars = static_cast<size_t>(std::count_if(text.begin(), text.end(), [](char c) {
      return (static_cast<unsigned char>(c) & 0xC0) != 0x80;
    }));
    if (chars > kMaxListItemChars) {
      return Invalid(item_path,
                     absl::StrCat("must NOT have more than ", kMaxListItemChars, " characters"));
    }
    out->push_back(item.get_ref<const std::string&>());
  }
  return absl::OkStatus();
}

absl::Status GetInteger(const json& obj, absl::string_view path, const char* key, int64_t minimum,
                        int64_t* out) {
  const std::string p = Child(path, key);
  std::optional<int64_t> v = JsonInteger(*obj.find(key));
  if (!v.has_value()) return Invalid(p, "must be integer");
  if (*v < minimum) return Invalid(p, absl::StrCat("must be >= ", minimum));
  *out = *v;
  return absl::OkStatus();
}

absl::Status ParseClient(const json& v, ClientInfo* out) {
  constexpr absl::string_view path = "/client";
  if (auto s = RequireObject(v, path); !s.ok()) return s;
  if (auto s = CheckKeys(
          v, path, {"id", "version", "platform", "mode"},
          {"displayName", "buildId", "deviceFamily", "modelIdentifier", "timeZone", "instanceId"});
      !s.ok()) {
    return s;
  }
  const json& id = *v.find("id");
  if (!id.is_string() || !IsKnownClientId(id.get_ref<const std::string&>())) {
    return Invalid("/client/id", "must be equal to one of the allowed values");
  }
  out->id = id.get_ref<const std::string&>();
  const json& mode = *v.find("mode");
  if (!mode.is_string() || !IsKnownClientMode(mode.get_ref<const std::string&>())) {
    return Invalid("/client/mode", "must be equal to one of the allowed values");
  }
  out->mode = mode.get_ref<const std::string&>();
  absl::Status s = GetOptString(v, path, "displayName", kNonEmpty, &out->display_name);
  if (s.ok()) s = GetString(v, path, "version", kNonEmpty, &out->version);
  if (s.ok()) s = GetOptString(v, path, "buildId", {1, 96}, &out->build_id);
  if (s.ok()) s = GetString(v, path, "platform", kNonEmpty, &out->platform);
  if (s.ok()) s = GetOptString(v, path, "deviceFamily", kNonEmpty, &out->device_family);
  if (s.ok()) s = GetOptString(v, path, "modelIdentifier", kNonEmpty, &out->model_identifier);
  if (s.ok()) s = GetOptString(v, path, "timeZone", {1, 64}, &out->time_zone);
  if (s.ok()) s = GetOptString(v, path, "instanceId", kNonEmpty, &out->instance_id);
  return s;
}

absl::Status ParseDevice(const json& v, DeviceProof* out) {
  constexpr absl::string_view path = "/device";
  if (auto s = RequireObject(v, path); !s.ok()) return s;
  if (auto s = CheckKeys(v, path, {"id", "publicKey", "signature", "signedAt", "nonce"}, {});
      !s.ok()) {
    return s;
  }
  absl::Status s = GetString(v, path, "id", kNonEmpty, &out->id);
  if (s.ok()) s = GetString(v, path, "publicKey", kNonEmpty, &out->public_key);
  if (s.ok()) s = GetString(v, path, "signature", kNonEmpty, &out->signature);
  if (s.ok()) s = GetInteger(v, path, "signedAt", 0, &out->signed_at_ms);
  if (s.ok()) s = GetString(v, path, "nonce", kNonEmpty, &out->nonce);
  return s;
}

absl::Status ParseAuth(const json& v, ConnectAuth* out) {
  constexpr absl::string_view path = "/auth";
  if (auto s = RequireObject(v, path); !s.ok()) return s;
  if (auto s = CheckKeys(v, path, {},
                         {"token", "bootstrapToken", "deviceToken", "password",
                          "approvalRuntimeToken", "agentRuntimeIdentityToken"});
      !s.ok()) {
    return s;
  }
  absl::Status s = GetOptString(v, path, "token", kAnyString, &out->token);
  if (s.ok()) s = GetOptString(v, path, "bootstrapToken", kAnyString, &out->bootstrap_token);
  if (s.ok()) s = GetOptString(v, path, "deviceToken", kAnyString, &out->device_token);
  if (s.ok()) s = GetOptString(v, path, "password", kAnyString, &out->password);
  if (s.ok()) {
    s = GetOptString(v, path, "approvalRuntimeToken", kAnyString, &out->approval_runtime_token);
  }
  if (s.ok()) {
    s = GetOptString(v, path, "agentRuntimeIdentityToken", kAnyString,
                     &out->agent_runtime_identity_token);
  }
  return s;
}

absl::Status ParsePermissions(const json& v, std::map<std::string, bool>* out) {
  constexpr absl::string_view path = "/permissions";
  if (auto s = RequireObject(v, path); !s.ok()) return s;
  for (const auto& item : v.items()) {
    if (item.key().empty()) return Invalid(path, "property name must NOT be empty");
    if (!item.value().is_boolean()) {
      return Invalid(Child(path, absl::string_view(item.key()).substr(0, 64)), "must be boolean");
    }
    (*out)[item.key()] = item.value().get<bool>();
  }
  return absl::OkStatus();
}

// modelCatalog is a union of two closed objects: {agentId?, sessionKey?} and
// {agentId?, shortId, slugHint?}, all non-empty strings.
absl::Status CheckModelCatalog(const json& v) {
  constexpr absl::string_view path = "/modelCatalog";
  const auto mismatch = [&] { return Invalid(path, "must match a schema in anyOf"); };
  if (!v.is_object()) return mismatch();
  const bool by_short_id = v.find("shortId") != v.end();
  absl::Status s = by_short_id ? CheckKeys(v, path, {"shortId"}, {"agentId", "slugHint"})
                               : CheckKeys(v, path, {}, {"agentId", "sessionKey"});
  if (!s.ok()) return mismatch();
  for (const auto& item : v.items()) {
    if (!CheckString(item.value(), path, kNonEmpty).ok()) return mismatch();
  }
  return absl::OkStatus();
}

}  // namespace

bool IsKnownClientId(const std::string& id) {
  return std::find(std::begin(kClientIds), std::end(kClientIds), id) != std::end(kClientIds);
}

bool IsKnownClientMode(const std::string& mode) {
  return std::find(std::begin(kClientModes), std::end(kClientModes), mode) !=
         std::end(kClientModes);
}

absl::StatusOr<ConnectParams> ParseConnectParams(const json& params) {
  if (auto s = RequireObject(params, ""); !s.ok()) return s;
  if (auto s =
          CheckKeys(params, "", {"minProtocol", "maxProtocol", "client"},
                    {"caps", "commands", "computerUse", "workerRuns", "permissions", "pathEnv",
                     "role", "scopes", "modelCatalog", "device", "auth", "locale", "userAgent"});
      !s.ok()) {
    return s;
  }
  ConnectParams out;
  absl::Status s = GetInteger(params, "", "minProtocol", 1, &out.min_protocol);
  if (s.ok()) s = GetInteger(params, "", "maxProtocol", 1, &out.max_protocol);
  if (s.ok()) s = ParseClient(*params.find("client"), &out.client);
  if (s.ok()) s = GetOptStringArray(params, "", "caps", &out.caps);
  if (s.ok()) s = GetOptStringArray(params, "", "commands", &out.commands);
  if (!s.ok()) return s;
  if (auto it = params.find("computerUse"); it != params.end()) out.computer_use = *it;
  if (auto it = params.find("workerRuns"); it != params.end()) out.worker_runs = *it;
  if (auto it = params.find("permissions"); it != params.end()) {
    out.permissions.emplace();
    if (s = ParsePermissions(*it, &*out.permissions); !s.ok()) return s;
  }
  s = GetOptString(params, "", "pathEnv", kAnyString, &out.path_env);
  if (!s.ok()) return s;
  std::optional<std::string> role;
  if (s = GetOptString(params, "", "role", kNonEmpty, &role); !s.ok()) return s;
  if (role.has_value()) out.role = *std::move(role);
  if (s = GetOptStringArray(params, "", "scopes", &out.scopes); !s.ok()) return s;
  if (auto it = params.find("modelCatalog"); it != params.end()) {
    if (s = CheckModelCatalog(*it); !s.ok()) return s;
    out.model_catalog = *it;
  }
  if (auto it = params.find("device"); it != params.end()) {
    out.device.emplace();
    if (s = ParseDevice(*it, &*out.device); !s.ok()) return s;
  }
  if (auto it = params.find("auth"); it != params.end()) {
    out.auth.emplace();
    if (s = ParseAuth(*it, &*out.auth); !s.ok()) return s;
  }
  s = GetOptString(params, "", "locale", kAnyString, &out.locale);
  if (s.ok()) s = GetOptString(params, "", "userAgent", kAnyString, &out.user_agent);
  if (!s.ok()) return s;
  return out;
}

}  // namespace tether::edge::protocol
