// Frame codec for OpenClaw's gateway protocol (node-protocol.md section 1): one UTF-8 JSON text
// frame <-> Frame, plus the non-throwing JSON helpers the rest of the protocol code shares.
#ifndef TETHER_WS_EDGE_PROTOCOL_FRAME_H_
#define TETHER_WS_EDGE_PROTOCOL_FRAME_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace tether::edge::protocol {

// Error codes OpenClaw puts in ErrorShape.code that the edge uses.
inline constexpr absl::string_view kInvalidRequest = "INVALID_REQUEST";
inline constexpr absl::string_view kNotPaired = "NOT_PAIRED";
inline constexpr absl::string_view kUnavailable = "UNAVAILABLE";

// Nesting bound for every JSON text we parse. nlohmann parses iteratively but dumps, copies and
// compares recursively, so untrusted depth must be bounded before a value is built.
inline constexpr int kMaxJsonDepth = 512;

enum class FrameType { kRequest, kResponse, kEvent };

// `{code, message, details?, retryable?, retryAfterMs?}`.
struct ErrorShape {
  std::string code;
  std::string message;
  nlohmann::json details;  // null = absent
  std::optional<bool> retryable;
  std::optional<int64_t> retry_after_ms;
};

// One decoded frame. Which fields are meaningful depends on `type`; absent JSON values are null.
struct Frame {
  FrameType type = FrameType::kRequest;
  std::string id;                   // req, res
  std::string method;               // req
  nlohmann::json params;            // req
  bool ok = false;                  // res
  nlohmann::json payload;           // res, event
  std::optional<ErrorShape> error;  // res
  std::string event;                // event
  std::optional<int64_t> seq;       // event
};

// Parses JSON text without exceptions; rejects invalid JSON and nesting beyond kMaxJsonDepth.
absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text);

// Parses one text frame. Malformed JSON, wrong types or empty ids give InvalidArgument.
// Unknown envelope keys are ignored so that additive protocol changes do not break nodes.
absl::StatusOr<Frame> ParseFrame(absl::string_view text);

// The same for an already parsed value (consumed: params and payload are moved out).
absl::StatusOr<Frame> FrameFromJson(nlohmann::json value);

// Reads an ErrorShape object (code and message non-empty strings).
absl::StatusOr<ErrorShape> ErrorShapeFromJson(const nlohmann::json& value);

// A JSON number that is an integer as JavaScript sees it (integral floats included), saturated
// to the int64 range; nullopt for anything else.
std::optional<int64_t> JsonInteger(const nlohmann::json& value);

// Serializes without throwing: invalid UTF-8 in strings becomes U+FFFD.
std::string DumpJson(const nlohmann::json& value);

// Appends `s` as a quoted JSON string (invalid UTF-8 becomes U+FFFD).
void AppendJsonString(absl::string_view s, std::string* out);

// Encoders producing the exact frame text. The *Raw variants take payload text the caller
// guarantees is valid JSON, so a payload that is already serialized is never re-parsed.
// A null payload is left out of the frame.
std::string EncodeRequest(absl::string_view id, absl::string_view method,
                          const nlohmann::json& params);
std::string EncodeResponseOk(absl::string_view id, const nlohmann::json& payload);
std::string EncodeResponseOkRaw(absl::string_view id, absl::string_view payload_json);
std::string EncodeResponseError(absl::string_view id, const ErrorShape& error);
std::string EncodeEvent(absl::string_view event, const nlohmann::json& payload,
                        std::optional<int64_t> seq = std::nullopt);
std::string EncodeEventRaw(absl::string_view event, absl::string_view payload_json,
                           std::optional<int64_t> seq = std::nullopt);

}  // namespace tether::edge::protocol

#endif  // TETHER_WS_EDGE_PROTOCOL_FRAME_H_
