#include "ws_edge/protocol/device_identity.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tether::edge::protocol {
namespace {

using PkeyPtr = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)>;

// DER prefix of an Ed25519 SubjectPublicKeyInfo; the raw key follows it.
constexpr absl::string_view kSpkiPrefix("\x30\x2a\x30\x05\x06\x03\x2b\x65\x70\x03\x21\x00", 12);

const unsigned char* Bytes(absl::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

// OpenSSL failing on a key we built ourselves means the library is broken; nothing can go on.
[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "fatal: OpenSSL %s failed\n", what);
  std::abort();
}

int Base64Value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+' || c == '-') return 62;
  if (c == '/' || c == '_') return 63;
  return -1;
}

absl::StatusOr<std::string> DecodePem(absl::string_view text) {
  const size_t begin = text.find("-----BEGIN");
  const size_t body = text.find('\n', begin);
  const size_t end = text.find("-----END", begin);
  if (body == absl::string_view::npos || end == absl::string_view::npos || end < body) {
    return absl::InvalidArgumentError("malformed PEM block");
  }
  absl::StatusOr<std::string> der = Base64DecodeLenient(text.substr(body, end - body));
  if (!der.ok()) return der.status();
  if (der->size() != kSpkiPrefix.size() + kEd25519KeyBytes ||
      !absl::StartsWith(*der, kSpkiPrefix)) {
    return absl::InvalidArgumentError("PEM is not an Ed25519 SPKI public key");
  }
  return der->substr(kSpkiPrefix.size());
}

}  // namespace

absl::StatusOr<std::string> Base64DecodeLenient(absl::string_view text) {
  size_t end = text.size();
  int padding = 0;
  while (end > 0 && (text[end - 1] == '=' || absl::ascii_isspace(text[end - 1]))) {
    if (text[end - 1] == '=') ++padding;
    --end;
  }
  if (padding > 2) return absl::InvalidArgumentError("too much base64 padding");
  std::string out;
  out.reserve(end * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  size_t symbols = 0;
  for (size_t i = 0; i < end; ++i) {
    if (absl::ascii_isspace(text[i])) continue;  // line breaks in PEM bodies
    const int v = Base64Value(text[i]);
    if (v < 0) return absl::InvalidArgumentError("invalid base64 character");
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    ++symbols;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  if (symbols % 4 == 1) return absl::InvalidArgumentError("truncated base64");
  return out;
}

std::string Base64UrlEncode(absl::string_view bytes) { return absl::WebSafeBase64Escape(bytes); }

absl::StatusOr<std::string> DecodePublicKey(absl::string_view text) {
  if (text.find("-----BEGIN") != absl::string_view::npos) return DecodePem(text);
  absl::StatusOr<std::string> raw = Base64DecodeLenient(text);
  if (raw.ok() && raw->empty()) return absl::InvalidArgumentError("empty public key");
  return raw;
}

std::string DeviceIdFromPublicKey(absl::string_view raw_public_key) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(raw_public_key.data(), raw_public_key.size(), digest, &len, EVP_sha256(),
                 nullptr) != 1) {
    Die("SHA-256");
  }
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(digest), len));
}

std::string SignatureToken(const ConnectParams& params) {
  if (!params.auth.has_value()) return "";
  const ConnectAuth& auth = *params.auth;
  if (auth.token.has_value()) return *auth.token;
  if (auth.device_token.has_value()) return *auth.device_token;
  if (auth.bootstrap_token.has_value()) return *auth.bootstrap_token;
  return "";
}

SignatureFields SignatureFieldsFromConnect(const ConnectParams& params, absl::string_view nonce) {
  SignatureFields f;
  f.device_id = params.device.has_value() ? params.device->id : "";
  f.client_id = params.client.id;
  f.client_mode = params.client.mode;
  f.role = params.role;
  f.scopes = params.scopes;
  f.signed_at_ms = params.device.has_value() ? params.device->signed_at_ms : 0;
  f.token = SignatureToken(params);
  f.nonce = std::string(nonce);
  f.platform = params.client.platform;
  f.device_family = params.client.device_family.value_or("");
  return f;
}

std::string BuildSignaturePayloadV2(const SignatureFields& f) {
  return absl::StrCat("v2|", f.device_id, "|", f.client_id, "|", f.client_mode, "|", f.role, "|",
                      absl::StrJoin(f.scopes, ","), "|", f.signed_at_ms, "|", f.token, "|",
                      f.nonce);
}

std::string BuildSignaturePayloadV3(const SignatureFields& f) {
  const auto normalize = [](absl::string_view s) {
    return absl::AsciiStrToLower(absl::StripAsciiWhitespace(s));
  };
  return absl::StrCat("v3|", f.device_id, "|", f.client_id, "|", f.client_mode, "|", f.role, "|",
                      absl::StrJoin(f.scopes, ","), "|", f.signed_at_ms, "|", f.token, "|", f.nonce,
                      "|", normalize(f.platform), "|", normalize(f.device_family));
}

bool VerifyEd25519(absl::string_view raw_public_key, absl::string_view message,
                   absl::string_view raw_signature) {
  if (raw_public_key.size() != kEd25519KeyBytes || raw_signature.size() != kEd25519SignatureBytes) {
    return false;
  }
  PkeyPtr key(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, Bytes(raw_public_key),
                                          raw_public_key.size()),
              EVP_PKEY_free);
  MdCtxPtr ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  const bool ok = key != nullptr && ctx != nullptr &&
                  EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) == 1 &&
                  EVP_DigestVerify(ctx.get(), Bytes(raw_signature), raw_signature.size(),
                                   Bytes(message), message.size()) == 1;
  // A failed verification leaves entries on this thread's error queue; they must not pile up
  // or confuse the next OpenSSL caller.
  if (!ok) ERR_clear_error();
  return ok;
}

bool VerifyDeviceSignature(absl::string_view public_key_text, absl::string_view message,
                           absl::string_view signature_text) {
  absl::StatusOr<std::string> key = DecodePublicKey(public_key_text);
  if (!key.ok()) return false;
  absl::StatusOr<std::string> signature = Base64DecodeLenient(signature_text);
  if (!signature.ok()) return false;
  return VerifyEd25519(*key, message, *signature);
}

Ed25519Identity::Ed25519Identity(std::string seed, std::string public_key_raw)
    : seed_(std::move(seed)),
      public_key_raw_(std::move(public_key_raw)),
      device_id_(DeviceIdFromPublicKey(public_key_raw_)) {}

Ed25519Identity Ed25519Identity::Generate() {
  std::string seed(kEd25519KeyBytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(seed.data()), static_cast<int>(seed.size())) !=
      1) {
    Die("RAND_bytes");
  }
  absl::StatusOr<Ed25519Identity> identity = FromSeed(seed);
  if (!identity.ok()) Die("Ed25519 key generation");
  return *std::move(identity);
}

absl::StatusOr<Ed25519Identity> Ed25519Identity::FromSeed(absl::string_view seed) {
  if (seed.size() != kEd25519KeyBytes) {
    return absl::InvalidArgumentError("an Ed25519 seed is 32 bytes");
  }
  PkeyPtr key(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, Bytes(seed), seed.size()),
              EVP_PKEY_free);
  if (key == nullptr) Die("EVP_PKEY_new_raw_private_key");
  std::string public_key(kEd25519KeyBytes, '\0');
  size_t len = public_key.size();
  if (EVP_PKEY_get_raw_public_key(key.get(), reinterpret_cast<unsigned char*>(public_key.data()),
                                  &len) != 1 ||
      len != kEd25519KeyBytes) {
    Die("EVP_PKEY_get_raw_public_key");
  }
  return Ed25519Identity(std::string(seed), std::move(public_key));
}

std::string Ed25519Identity::Sign(absl::string_view message) const {
  PkeyPtr key(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, Bytes(seed_), seed_.size()),
              EVP_PKEY_free);
  MdCtxPtr ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  unsigned char signature[kEd25519SignatureBytes];
  size_t len = sizeof(signature);
  if (key == nullptr || ctx == nullptr ||
      EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) != 1 ||
      EVP_DigestSign(ctx.get(), signature, &len, Bytes(message), message.size()) != 1) {
    Die("Ed25519 signing");
  }
  return Base64UrlEncode(absl::string_view(reinterpret_cast<char*>(signature), len));
}

}  // namespace tether::edge::protocol
