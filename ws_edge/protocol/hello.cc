#include "ws_edge/protocol/hello.h"

#include <initializer_list>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "ws_edge/protocol/frame.h"

namespace tether::edge::protocol {
namespace {

using nlohmann::json;

absl::Status Invalid(absl::string_view path, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("at ", path, ": ", problem));
}

absl::Status CheckClosed(const json& obj, absl::string_view path,
                         std::initializer_list<const char*> allowed) {
  for (const auto& item : obj.items()) {
    bool known = false;
    for (const char* key : allowed) known = known || item.key() == key;
    if (!known) {
      return Invalid(path, absl::StrCat("unexpected property '",
                                        absl::string_view(item.key()).substr(0, 64), "'"));
    }
  }
  return absl::OkStatus();
}

// Reads a string member of the object at `path` ("" for the root); absent is fine unless
// `required`.
absl::Status ReadString(const json& obj, absl::string_view path, const char* key, bool required,
                        bool non_empty, std::optional<std::string>* out) {
  auto it = obj.find(key);
  if (it == obj.end()) {
    return required ? Invalid(path.empty() ? "root" : path,
                              absl::StrCat("must have required property '", key, "'"))
                    : absl::OkStatus();
  }
  const std::string member = absl::StrCat(path, "/", key);
  if (!it->is_string()) return Invalid(member, "must be string");
  if (non_empty && it->get_ref<const std::string&>().empty()) {
    return Invalid(member, "must NOT have fewer than 1 characters");
  }
  *out = it->get_ref<const std::string&>();
  return absl::OkStatus();
}

absl::Status ReadRequired(const json& obj, const char* key, std::string* out) {
  std::optional<std::string> value;
  if (auto s = ReadString(obj, "", key, true, true, &value); !s.ok()) return s;
  *out = *std::move(value);
  return absl::OkStatus();
}

}  // namespace

json BuildHelloOk(const HelloOkOptions& o) {
  json auth = {{"method", o.auth_method}, {"role", "node"}, {"scopes", json::array()}};
  if (!o.device_token.empty()) {
    auth["deviceToken"] = o.device_token;
    auth["issuedAtMs"] = o.issued_at_ms;
  }
  return {
      {"type", "hello-ok"},
      {"protocol", 4},
      {"server", {{"version", o.server_version}, {"connId", o.conn_id}}},
      {"features",
       {{"methods", {"node.invoke.result", "node.event"}},
        {"events",
         {"connect.challenge", "node.invoke.request", "node.invoke.cancel", "tick",
          "node.pair.resolved"}}}},
      {"snapshot",
       {{"presence", json::array()},
        {"health", json::object()},
        {"stateVersion", {{"presence", 0}, {"health", 0}}},
        {"uptimeMs", o.uptime_ms}}},
      {"auth", std::move(auth)},
      {"policy",
       {{"maxPayload", o.max_payload},
        {"maxBufferedBytes", o.max_buffered_bytes},
        {"tickIntervalMs", o.tick_interval_ms}}},
  };
}

json BuildConnectChallenge(absl::string_view nonce, int64_t ts_ms) {
  return {{"nonce", std::string(nonce)}, {"ts", ts_ms}, {"capabilities", json::array()}};
}

std::string InvokeRequestPayloadJson(const InvokeRequest& r) {
  std::string out;
  out.reserve(r.params_json.value_or("").size() + r.command.size() + 192);
  out.append(R"({"id":)");
  AppendJsonString(r.id, &out);
  out.append(R"(,"nodeId":)");
  AppendJsonString(r.node_id, &out);
  out.append(R"(,"command":)");
  AppendJsonString(r.command, &out);
  out.append(R"(,"paramsJSON":)");
  if (r.params_json.has_value()) {
    AppendJsonString(*r.params_json, &out);
  } else {
    out.append("null");
  }
  absl::StrAppend(&out, R"(,"timeoutMs":)", r.timeout_ms, R"(,"idempotencyKey":)");
  AppendJsonString(r.idempotency_key, &out);
  out.push_back('}');
  return out;
}

absl::StatusOr<InvokeRequest> ParseInvokeRequest(const json& payload) {
  if (!payload.is_object()) return Invalid("root", "must be object");
  InvokeRequest r;
  absl::Status s = ReadRequired(payload, "id", &r.id);
  if (s.ok()) s = ReadRequired(payload, "nodeId", &r.node_id);
  if (s.ok()) s = ReadRequired(payload, "command", &r.command);
  if (!s.ok()) return s;
  if (auto it = payload.find("paramsJSON"); it != payload.end() && !it->is_null()) {
    if (!it->is_string()) return Invalid("/paramsJSON", "must be string or null");
    r.params_json = it->get<std::string>();
  }
  if (auto it = payload.find("timeoutMs"); it != payload.end()) {
    std::optional<int64_t> ms = JsonInteger(*it);
    if (!ms.has_value() || *ms < 0) return Invalid("/timeoutMs", "must be integer >= 0");
    r.timeout_ms = *ms;
  }
  std::optional<std::string> key;
  if (s = ReadString(payload, "", "idempotencyKey", false, false, &key); !s.ok()) return s;
  r.idempotency_key = key.value_or("");
  return r;
}

absl::StatusOr<InvokeResult> ParseInvokeResultParams(const json& params) {
  if (!params.is_object()) return Invalid("root", "must be object");
  // The Gateway's normalization, applied to a view instead of a copy of a possibly large value.
  const json* payload = nullptr;
  const json* payload_json = nullptr;
  const json* error = nullptr;
  for (const auto& item : params.items()) {
    if (item.key() == "payload") {
      payload = &item.value();
    } else if (item.key() == "payloadJSON") {
      payload_json = &item.value();
    } else if (item.key() == "error") {
      error = &item.value();
    } else if (item.key() != "id" && item.key() != "nodeId" && item.key() != "ok") {
      return Invalid("root", absl::StrCat("unexpected property '",
                                          absl::string_view(item.key()).substr(0, 64), "'"));
    }
  }
  if (payload_json != nullptr && payload_json->is_null()) payload_json = nullptr;
  if (payload_json != nullptr && !payload_json->is_string()) {
    if (payload == nullptr) payload = payload_json;
    payload_json = nullptr;
  }
  if (error != nullptr && error->is_null()) error = nullptr;

  InvokeResult r;
  absl::Status s = ReadRequired(params, "id", &r.id);
  if (s.ok()) s = ReadRequired(params, "nodeId", &r.node_id);
  if (!s.ok()) return s;
  auto ok = params.find("ok");
  if (ok == params.end()) return Invalid("root", "must have required property 'ok'");
  if (!ok->is_boolean()) return Invalid("/ok", "must be boolean");
  r.ok = ok->get<bool>();
  if (error != nullptr) {
    if (!error->is_object()) return Invalid("/error", "must be object");
    if (s = CheckClosed(*error, "/error", {"code", "message"}); !s.ok()) return s;
    s = ReadString(*error, "/error", "code", false, true, &r.error_code);
    if (s.ok()) s = ReadString(*error, "/error", "message", false, true, &r.error_message);
    if (!s.ok()) return s;
  }
  if (payload_json != nullptr) {
    r.payload_json = payload_json->get<std::string>();
  } else if (payload != nullptr) {
    r.payload_json = DumpJson(*payload);
  }
  return r;
}

absl::StatusOr<NodeEvent> ParseNodeEventParams(const json& params) {
  if (!params.is_object()) return Invalid("root", "must be object");
  if (auto s = CheckClosed(params, "root", {"event", "payload", "payloadJSON"}); !s.ok()) {
    return s;
  }
  NodeEvent e;
  if (auto s = ReadRequired(params, "event", &e.event); !s.ok()) return s;
  if (auto s = ReadString(params, "", "payloadJSON", false, false, &e.payload_json); !s.ok()) {
    return s;
  }
  if (auto it = params.find("payload"); !e.payload_json.has_value() && it != params.end()) {
    e.payload_json = DumpJson(*it);
  }
  return e;
}

}  // namespace tether::edge::protocol
