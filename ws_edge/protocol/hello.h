// Payloads of the node session after the handshake (node-protocol.md sections 3, 6 and 7):
// connect.challenge, hello-ok, node.invoke.request, and the params of the two methods the edge
// serves, node.invoke.result and node.event.
#ifndef TETHER_WS_EDGE_PROTOCOL_HELLO_H_
#define TETHER_WS_EDGE_PROTOCOL_HELLO_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace tether::edge::protocol {

inline constexpr int64_t kMaxPayloadBytes = 26'214'400;          // frames after the handshake
inline constexpr int64_t kMaxHandshakePayloadBytes = 64 * 1024;  // frames before it
inline constexpr int64_t kMaxBufferedBytes = 52'428'800;         // send buffer: slow consumer
inline constexpr int64_t kDefaultTickIntervalMs = 30'000;
inline constexpr int64_t kDefaultInvokeTimeoutMs = 30'000;

struct HelloOkOptions {
  std::string server_version;
  std::string conn_id;
  int64_t uptime_ms = 0;
  std::string auth_method = "token";  // "token" or "device-token"
  std::string device_token;           // empty: none issued (left out)
  int64_t issued_at_ms = 0;
  int64_t max_payload = kMaxPayloadBytes;
  int64_t max_buffered_bytes = kMaxBufferedBytes;
  int64_t tick_interval_ms = kDefaultTickIntervalMs;
};

// The hello-ok payload. features lists only what the edge implements.
nlohmann::json BuildHelloOk(const HelloOkOptions& options);

// The connect.challenge payload {nonce, ts, capabilities: []}.
nlohmann::json BuildConnectChallenge(absl::string_view nonce, int64_t ts_ms);

// The node.invoke.request payload.
struct InvokeRequest {
  std::string id;
  std::string node_id;
  std::string command;
  std::optional<std::string> params_json;  // nullopt is sent as null (the caller gave none)
  int64_t timeout_ms = kDefaultInvokeTimeoutMs;
  std::string idempotency_key;
};

// Payload JSON text for an event frame (see EncodeEventRaw); built without a JSON tree since it
// runs per invoke.
std::string InvokeRequestPayloadJson(const InvokeRequest& request);

// The client's reading of a node.invoke.request payload (unknown keys ignored).
absl::StatusOr<InvokeRequest> ParseInvokeRequest(const nlohmann::json& payload);

// node.invoke.result params after the Gateway's normalization.
struct InvokeResult {
  std::string id;
  std::string node_id;
  bool ok = false;
  // The result as JSON text: payloadJSON when it is a string, else `payload` serialized.
  std::optional<std::string> payload_json;
  std::optional<std::string> error_code;
  std::optional<std::string> error_message;
};

// Validates the closed object {id, nodeId, ok, payload?, payloadJSON?, error?{code?, message?}},
// after dropping payloadJSON:null and error:null and turning a non-string payloadJSON into
// payload. InvalidArgument messages are meant to follow "invalid node.invoke.result params: ".
absl::StatusOr<InvokeResult> ParseInvokeResultParams(const nlohmann::json& params);

// node.event params {event, payload?, payloadJSON?}.
struct NodeEvent {
  std::string event;
  std::optional<std::string> payload_json;  // payloadJSON if given, else `payload` serialized
};

absl::StatusOr<NodeEvent> ParseNodeEventParams(const nlohmann::json& params);

}  // namespace tether::edge::protocol

#endif  // TETHER_WS_EDGE_PROTOCOL_HELLO_H_
