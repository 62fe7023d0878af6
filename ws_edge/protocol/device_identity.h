// Device identity (node-protocol.md section 4): key encodings, the device id fingerprint, the
// signed payloads and Ed25519 signing/verification through OpenSSL 3.
#ifndef TETHER_WS_EDGE_PROTOCOL_DEVICE_IDENTITY_H_
#define TETHER_WS_EDGE_PROTOCOL_DEVICE_IDENTITY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ws_edge/protocol/connect_params.h"

namespace tether::edge::protocol {

inline constexpr size_t kEd25519KeyBytes = 32;
inline constexpr size_t kEd25519SignatureBytes = 64;

// Decodes base64url or standard base64, padding optional, as the Gateway does.
absl::StatusOr<std::string> Base64DecodeLenient(absl::string_view text);

// Base64url without padding (the wire form of keys and signatures).
std::string Base64UrlEncode(absl::string_view bytes);

// `device.publicKey` as sent -> the key bytes: an SPKI PEM block yields its raw 32-byte key,
// anything else is decoded leniently as base64(url). The length is not checked here, because
// the Gateway fingerprints whatever bytes it decoded.
absl::StatusOr<std::string> DecodePublicKey(absl::string_view text);

// Lowercase hex SHA-256 of the raw public-key bytes: the node id.
std::string DeviceIdFromPublicKey(absl::string_view raw_public_key);

// The fields bound by a device signature.
struct SignatureFields {
  std::string device_id;
  std::string client_id;
  std::string client_mode;
  std::string role;
  std::vector<std::string> scopes;
  int64_t signed_at_ms = 0;
  std::string token;
  std::string nonce;
  std::string platform;       // v3 only
  std::string device_family;  // v3 only
};

// The token a signature binds: the first present of auth.token, auth.deviceToken and
// auth.bootstrapToken (an empty string counts as present), else "".
std::string SignatureToken(const ConnectParams& params);

// Fields of a connect request's signature, with `nonce` as the server compares it (trimmed).
SignatureFields SignatureFieldsFromConnect(const ConnectParams& params, absl::string_view nonce);

// `v3|deviceId|clientId|mode|role|scopes|signedAt|token|nonce|platform|deviceFamily`, with
// platform and deviceFamily trimmed and ASCII-lowercased.
std::string BuildSignaturePayloadV3(const SignatureFields& fields);
// `v2|deviceId|clientId|mode|role|scopes|signedAt|token|nonce`.
std::string BuildSignaturePayloadV2(const SignatureFields& fields);

// Ed25519 verification of raw bytes; false for wrong lengths or any OpenSSL failure.
bool VerifyEd25519(absl::string_view raw_public_key, absl::string_view message,
                   absl::string_view raw_signature);

// Verification with the wire encodings of key and signature (decoded leniently).
bool VerifyDeviceSignature(absl::string_view public_key_text, absl::string_view message,
                           absl::string_view signature_text);

// An Ed25519 key pair for a node: the 32-byte seed plus what is derived from it. A value type,
// owned by whoever holds it; const methods are thread-safe.
class Ed25519Identity {
 public:
  // A fresh key from the OS's CSPRNG.
  static Ed25519Identity Generate();
  // The key for a given 32-byte seed (the PKCS#8 private key body).
  static absl::StatusOr<Ed25519Identity> FromSeed(absl::string_view seed);

  const std::string& seed() const { return seed_; }
  const std::string& public_key_raw() const { return public_key_raw_; }
  std::string PublicKeyBase64Url() const { return Base64UrlEncode(public_key_raw_); }
  const std::string& device_id() const { return device_id_; }

  // Ed25519 signature of `message`, base64url without padding.
  std::string Sign(absl::string_view message) const;

 private:
  Ed25519Identity(std::string seed, std::string public_key_raw);

  std::string seed_;
  std::string public_key_raw_;
  std::string device_id_;
};

}  // namespace tether::edge::protocol

#endif  // TETHER_WS_EDGE_PROTOCOL_DEVICE_IDENTITY_H_
