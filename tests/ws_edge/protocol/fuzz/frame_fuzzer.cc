// Fuzz target for the decoders of untrusted bytes: ParseFrame, the method params parsers, the key
// decoders and the whole handshake check. Beyond "no crash", it checks a few properties that
// must hold for any input; a violation aborts so the fuzzer reports it.
#include "tests/ws_edge/protocol/fuzz/frame_fuzzer.h"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <variant>

#include "absl/strings/string_view.h"
#include "ws_edge/protocol/connect_params.h"
#include "ws_edge/protocol/device_identity.h"
#include "ws_edge/protocol/frame.h"
#include "ws_edge/protocol/handshake.h"
#include "ws_edge/protocol/hello.h"

namespace tether::edge::protocol::fuzz {
namespace {

// The test vector's challenge (node-protocol.md section 4), so seeds signed with it get in.
constexpr absl::string_view kNonce = "11111111-2222-3333-4444-555555555555";
constexpr int64_t kNowMs = 1700000000000;
constexpr absl::string_view kToken = "tok-123";

int64_t accepted_handshakes = 0;

void Require(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "fuzz property violated: %s\n", what);
    std::abort();
  }
}

void CheckHandshakeProperties(absl::string_view text, const HandshakeConfig& config) {
  HandshakeResult result = CheckHandshake(text, config);
  if (auto* accepted = std::get_if<HandshakeAccepted>(&result)) {
    ++accepted_handshakes;
    const ConnectParams& p = accepted->params;
    Require(p.role == "node" && p.device.has_value(), "accepted a non-node or no device");
    Require(accepted->node_id == p.device->id, "node id differs from device.id");
    absl::StatusOr<std::string> raw = DecodePublicKey(accepted->public_key);
    Require(raw.ok() && raw->size() == kEd25519KeyBytes, "public key not canonical");
    Require(DeviceIdFromPublicKey(*raw) == accepted->node_id, "node id is not the key's hash");
    Require(!config.shared_token.has_value() || accepted->token_check != TokenCheck::kNotRequired,
            "token skipped while one is configured");
    return;
  }
  const HandshakeRejection& r = std::get<HandshakeRejection>(result);
  Require(r.close_reason.size() <= 123, "close reason too long");
  Require(r.close_code == kCloseNormal || r.close_code == kCloseProtocolError ||
              r.close_code == kClosePolicyViolation,
          "unexpected close code");
  if (r.send_response) {
    Require(!r.request_id.empty() && !r.error.code.empty() && !r.error.message.empty(),
            "incomplete error response");
    // The edge sends this text; it must be a well-formed frame again.
    Require(ParseFrame(EncodeResponseError(r.request_id, r.error)).ok(), "bad error frame");
  }
}

}  // namespace

int64_t AcceptedHandshakes() { return accepted_handshakes; }

}  // namespace tether::edge::protocol::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tether::edge::protocol;  // NOLINT(google-build-using-namespace): local scope
  const absl::string_view text(reinterpret_cast<const char*>(data), size);

  absl::StatusOr<Frame> frame = ParseFrame(text);
  if (frame.ok()) {
    (void)ParseConnectParams(frame->params);
    (void)ParseInvokeResultParams(frame->params);
    (void)ParseNodeEventParams(frame->params);
    (void)ParseInvokeRequest(frame->payload);
    if (frame->error.has_value()) {
      fuzz::Require(ParseFrame(EncodeResponseError(frame->id, *frame->error)).ok(),
                    "re-encoded error does not parse");
    }
    fuzz::Require(ParseFrame(EncodeEvent("e", frame->payload, frame->seq)).ok(),
                  "re-encoded event does not parse");
  }

  HandshakeConfig config;
  config.challenge_nonce = fuzz::kNonce;
  config.now_ms = fuzz::kNowMs;
  config.shared_token = fuzz::kToken;
  fuzz::CheckHandshakeProperties(text, config);
  config.shared_token.reset();
  fuzz::CheckHandshakeProperties(text, config);

  (void)DecodePublicKey(text);
  absl::StatusOr<std::string> decoded = Base64DecodeLenient(text);
  if (decoded.ok()) {
    fuzz::Require(*Base64DecodeLenient(Base64UrlEncode(*decoded)) == *decoded,
                  "base64url does not round-trip");
  }
  std::string quoted;
  AppendJsonString(text, &quoted);
  fuzz::Require(ParseJson(quoted).ok(), "an encoded string is not valid JSON");
  return 0;
}
