// The edge's check of a socket's first frame (node-protocol.md sections 2, 3, 4 and 11), as a pure
// function: no I/O, no clock, no registry. What the registry still has to decide (device token
// validity, pairing) is handed back in the accepted result.
#ifndef TETHER_WS_EDGE_PROTOCOL_HANDSHAKE_H_
#define TETHER_WS_EDGE_PROTOCOL_HANDSHAKE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <variant>

#include "absl/strings/string_view.h"
#include "ws_edge/protocol/connect_params.h"
#include "ws_edge/protocol/frame.h"

namespace tether::edge::protocol {

inline constexpr int64_t kProtocolVersion = 4;
inline constexpr int64_t kMinNodeProtocolVersion = 3;
inline constexpr int64_t kMinProbeProtocolVersion = 3;
inline constexpr int64_t kMaxSignatureSkewMs = 120'000;

inline constexpr int kCloseNormal = 1000;
inline constexpr int kCloseProtocolError = 1002;
inline constexpr int kClosePolicyViolation = 1008;

// Inputs of one check; the views are borrowed for the duration of the call.
struct HandshakeConfig {
  absl::string_view challenge_nonce;  // the nonce sent in this socket's connect.challenge
  int64_t now_ms = 0;                 // the edge's clock
  // The edge's shared token; nullopt means no token is required.
  std::optional<absl::string_view> shared_token;
  int64_t max_skew_ms = kMaxSignatureSkewMs;
};

enum class TokenCheck {
  kNotRequired,         // no shared token configured: any token (or none) is accepted
  kSharedToken,         // auth.token equals the shared token
  kDeviceTokenPending,  // admitted only if the registry verifies `device_token`
};

struct HandshakeAccepted {
  std::string request_id;  // id of the connect request, for the hello-ok response
  ConnectParams params;
  std::string node_id;     // recomputed from the public key (equals params.device->id)
  std::string public_key;  // raw public key, base64url without padding
  int signature_version = 3;
  TokenCheck token_check = TokenCheck::kNotRequired;
  std::string device_token;            // the non-empty auth.deviceToken presented, if any
  bool shared_token_mismatch = false;  // auth.token was wrong; the device token stands in
};

struct HandshakeRejection {
  bool send_response = true;  // false: the first frame was not a request, just close
  std::string request_id;     // id to answer when send_response
  ErrorShape error;
  int close_code = kClosePolicyViolation;
  std::string close_reason;  // already within the 123-byte limit of a close frame
};

using HandshakeResult = std::variant<HandshakeAccepted, HandshakeRejection>;

// Checks the first text frame of a socket. Text that is not JSON gets no response and a plain
// close 1000 (what the Gateway was observed to do); valid JSON that is not a request frame gets
// no response and close 1008.
HandshakeResult CheckHandshake(absl::string_view first_frame_text, const HandshakeConfig& config);

// The same for a frame that already parsed.
HandshakeResult CheckHandshakeFrame(const Frame& frame, const HandshakeConfig& config);

// The admission rule of section 2: v4, the legacy node window 3..3, or a probe meeting 3..4.
bool ProtocolAdmitted(int64_t min_protocol, int64_t max_protocol, absl::string_view role,
                      absl::string_view client_mode);

// The refusal when the registry does not accept `accepted.device_token`. If the shared token was
// also wrong, the Gateway reports the shared-token mismatch, and so does this.
HandshakeRejection DeviceTokenRejection(const HandshakeAccepted& accepted);

// NOT_PAIRED "pairing required" with details {code: PAIRING_REQUIRED, requestId, reason}.
HandshakeRejection PairingRequiredRejection(absl::string_view request_id,
                                            absl::string_view pairing_request_id,
                                            absl::string_view reason);

// Cuts a close reason to the 123 bytes a close frame can carry, at a UTF-8 boundary.
std::string TruncateCloseReason(absl::string_view reason);

}  // namespace tether::edge::protocol

#endif  // TETHER_WS_EDGE_PROTOCOL_HANDSHAKE_H_
