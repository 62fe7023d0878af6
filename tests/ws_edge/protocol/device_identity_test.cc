#include "ws_edge/protocol/device_identity.h"

#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace tether::edge::protocol {
namespace {

using ::tether::testing::IsOk;
using ::tether::testing::StatusIs;

// The test vector of node-protocol.md section 4.
constexpr absl::string_view kPublicKeyHex =
    "79b5562e8fe654f94078b112e8a98ba7901f853ae695bed7e0e3910bad049664";
constexpr absl::string_view kPublicKey = "ebVWLo_mVPlAeLES6KmLp5AfhTrmlb7X4OORC60ElmQ";
constexpr absl::string_view kDeviceId =
    "65b60673d6ed884bf01c2c222d82ada0740f29ac3355d6a925c81f17f47a27b8";
constexpr absl::string_view kSignatureV3 =
    "UHof9-fI29fGbKOtqKmDEvGUZ90V8wiDedwGUrL7RCnzIi_GxYZhRkzKusibex9JRIsBHIBrbggHha0jIseTDQ";
constexpr absl::string_view kSignatureV2 =
    "Xrdnn-D7YYx4pHHna25ls9H7jaUXcq0ykekUP0sR9IUnxS6OASjkOOaV9qHiswNkmkXdenG10M8HnKrKgMFKAg";
constexpr absl::string_view kNonce = "11111111-2222-3333-4444-555555555555";

std::string Seed() {
  std::string seed;
  for (int i = 1; i <= 32; ++i) seed.push_back(static_cast<char>(i));
  return seed;
}

SignatureFields VectorFields() {
  SignatureFields f;
  f.device_id = std::string(kDeviceId);
  f.client_id = "node-host";
  f.client_mode = "node";
  f.role = "node";
  f.signed_at_ms = 1700000000000;
  f.token = "tok-123";
  f.nonce = std::string(kNonce);
  f.platform = " Linux";
  f.device_family = "Linux";
  return f;
}

std::string Pem(absl::string_view raw_key) {
  const std::string der =
      std::string("\x30\x2a\x30\x05\x06\x03\x2b\x65\x70\x03\x21\x00", 12) + std::string(raw_key);
  const std::string b64 = absl::Base64Escape(der);
  return "-----BEGIN PUBLIC KEY-----\n" + b64.substr(0, 40) + "\n" + b64.substr(40) +
         "\n-----END PUBLIC KEY-----\n";
}

TEST(Ed25519IdentityTest, TestVectorKeyAndDeviceId) {
  absl::StatusOr<Ed25519Identity> id = Ed25519Identity::FromSeed(Seed());
  ASSERT_THAT(id, IsOk());
  EXPECT_EQ(absl::BytesToHexString(id->public_key_raw()), kPublicKeyHex);
  EXPECT_EQ(id->PublicKeyBase64Url(), kPublicKey);
  EXPECT_EQ(id->device_id(), kDeviceId);
  EXPECT_EQ(DeviceIdFromPublicKey(id->public_key_raw()), kDeviceId);
  EXPECT_EQ(id->seed(), Seed());
}

TEST(Ed25519IdentityTest, TestVectorPayloadsAndSignatures) {
  const SignatureFields f = VectorFields();
  EXPECT_EQ(BuildSignaturePayloadV3(f),
            absl::StrCat("v3|", kDeviceId,
                         "|node-host|node|node||1700000000000|tok-123|"
                         "11111111-2222-3333-4444-555555555555|linux|linux"));
  EXPECT_EQ(BuildSignaturePayloadV2(f), absl::StrCat("v2|", kDeviceId,
                                                     "|node-host|node|node||1700000000000|tok-123|"
                                                     "11111111-2222-3333-4444-555555555555"));
  absl::StatusOr<Ed25519Identity> id = Ed25519Identity::FromSeed(Seed());
  ASSERT_THAT(id, IsOk());
  EXPECT_EQ(id->Sign(BuildSignaturePayloadV3(f)), kSignatureV3);
  EXPECT_EQ(id->Sign(BuildSignaturePayloadV2(f)), kSignatureV2);
  EXPECT_TRUE(VerifyDeviceSignature(kPublicKey, BuildSignaturePayloadV3(f), kSignatureV3));
  EXPECT_TRUE(VerifyDeviceSignature(kPublicKey, BuildSignaturePayloadV2(f), kSignatureV2));
  EXPECT_FALSE(VerifyDeviceSignature(kPublicKey, BuildSignaturePayloadV2(f), kSignatureV3));
}

TEST(SignaturePayloadTest, ScopesJoinedAndMetadataNormalized) {
  SignatureFields f = VectorFields();
  f.scopes = {"operator.read", "operator.write"};
  f.platform = "\tMacOS ";
  f.device_family = "";
  EXPECT_EQ(BuildSignaturePayloadV3(f),
            absl::StrCat("v3|", kDeviceId,
                         "|node-host|node|node|operator.read,operator.write|1700000000000|"
                         "tok-123|11111111-2222-3333-4444-555555555555|macos|"));
}

TEST(VerifyTest, RejectsTamperingAndBadEncodings) {
  const std::string msg = BuildSignaturePayloadV3(VectorFields());
  EXPECT_FALSE(VerifyDeviceSignature(kPublicKey, msg + "x", kSignatureV3));
  std::string flipped(kSignatureV3);
  flipped[10] = flipped[10] == 'A' ? 'B' : 'A';
  EXPECT_FALSE(VerifyDeviceSignature(kPublicKey, msg, flipped));
  EXPECT_FALSE(VerifyDeviceSignature(kPublicKey, msg, kSignatureV3.substr(0, 80)));
  EXPECT_FALSE(VerifyDeviceSignature(kPublicKey, msg, "!!!"));
  EXPECT_FALSE(VerifyDeviceSignature(kPublicKey.substr(0, 40), msg, kSignatureV3));
  EXPECT_FALSE(VerifyDeviceSignature("", msg, kSignatureV3));
  EXPECT_FALSE(VerifyEd25519(std::string(32, '\0'), msg, std::string(64, '\0')));
}

TEST(VerifyTest, AcceptsStandardBase64AndPem) {
  absl::StatusOr<Ed25519Identity> id = Ed25519Identity::FromSeed(Seed());
  ASSERT_THAT(id, IsOk());
  const std::string msg = BuildSignaturePayloadV3(VectorFields());
  const std::string std_b64 = absl::Base64Escape(id->public_key_raw());  // with '=' padding
  EXPECT_TRUE(VerifyDeviceSignature(std_b64, msg, kSignatureV3));
  EXPECT_TRUE(VerifyDeviceSignature(Pem(id->public_key_raw()), msg, kSignatureV3));
  std::string padded_sig;
  ASSERT_TRUE(absl::WebSafeBase64Unescape(kSignatureV3, &padded_sig));
  EXPECT_TRUE(VerifyDeviceSignature(kPublicKey, msg, absl::Base64Escape(padded_sig)));
}

TEST(DecodeTest, Base64Lenient) {
  EXPECT_EQ(*Base64DecodeLenient("aGk"), "hi");
  EXPECT_EQ(*Base64DecodeLenient("aGk="), "hi");
  EXPECT_EQ(*Base64DecodeLenient("-_8"), *Base64DecodeLenient("+/8="));
  EXPECT_EQ(*Base64DecodeLenient(""), "");
  EXPECT_EQ(*Base64DecodeLenient("aG\nk=\n"), "hi");
  EXPECT_THAT(Base64DecodeLenient("a"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Base64DecodeLenient("aGk==="), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Base64DecodeLenient("a=Gk"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Base64DecodeLenient("a*Gk"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(Base64UrlEncode("\xfb\xff"), "-_8");
}

TEST(DecodeTest, PublicKeyForms) {
  absl::StatusOr<Ed25519Identity> id = Ed25519Identity::FromSeed(Seed());
  ASSERT_THAT(id, IsOk());
  EXPECT_EQ(*DecodePublicKey(kPublicKey), id->public_key_raw());
  EXPECT_EQ(*DecodePublicKey(Pem(id->public_key_raw())), id->public_key_raw());
  EXPECT_THAT(DecodePublicKey(""), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(DecodePublicKey("-----BEGIN PUBLIC KEY-----"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(DecodePublicKey("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // Not 32 bytes, yet decodable: the length is judged by verification, as in the Gateway.
  EXPECT_EQ(DecodePublicKey("aGk")->size(), 2u);
}

TEST(Ed25519IdentityTest, GenerateSignVerify) {
  const Ed25519Identity a = Ed25519Identity::Generate();
  const Ed25519Identity b = Ed25519Identity::Generate();
  EXPECT_NE(a.device_id(), b.device_id());
  EXPECT_EQ(a.device_id().size(), 64u);
  EXPECT_EQ(a.PublicKeyBase64Url().size(), 43u);
  const std::string sig = a.Sign("hello");
  EXPECT_EQ(sig.size(), 86u);
  EXPECT_TRUE(VerifyDeviceSignature(a.PublicKeyBase64Url(), "hello", sig));
  EXPECT_FALSE(VerifyDeviceSignature(b.PublicKeyBase64Url(), "hello", sig));
  EXPECT_THAT(Ed25519Identity::FromSeed("short"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(SignatureTokenTest, FirstPresentWins) {
  ConnectParams p;
  EXPECT_EQ(SignatureToken(p), "");
  p.auth.emplace();
  p.auth->bootstrap_token = "boot";
  EXPECT_EQ(SignatureToken(p), "boot");
  p.auth->device_token = "dev";
  EXPECT_EQ(SignatureToken(p), "dev");
  p.auth->token = "";  // present, even though empty
  EXPECT_EQ(SignatureToken(p), "");
  p.auth->token = "shared";
  EXPECT_EQ(SignatureToken(p), "shared");
}

}  // namespace
}  // namespace tether::edge::protocol
