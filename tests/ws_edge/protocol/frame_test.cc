#include "ws_edge/protocol/frame.h"

#include <limits>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace tether::edge::protocol {
namespace {

using ::nlohmann::json;
using ::testing::HasSubstr;
using ::tether::testing::IsOk;
using ::tether::testing::StatusIs;

void ExpectInvalid(absl::string_view text, absl::string_view message_part) {
  absl::StatusOr<Frame> frame = ParseFrame(text);
  EXPECT_THAT(frame, StatusIs(absl::StatusCode::kInvalidArgument)) << text;
  EXPECT_THAT(std::string(frame.status().message()), HasSubstr(std::string(message_part))) << text;
}

TEST(ParseFrameTest, Request) {
  absl::StatusOr<Frame> f =
      ParseFrame(R"({"type":"req","id":"1:abc","method":"connect","params":{"a":[1,2]}})");
  ASSERT_THAT(f, IsOk());
  EXPECT_EQ(f->type, FrameType::kRequest);
  EXPECT_EQ(f->id, "1:abc");
  EXPECT_EQ(f->method, "connect");
  EXPECT_EQ(f->params, json::parse(R"({"a":[1,2]})"));
}

TEST(ParseFrameTest, RequestWithoutParamsAndUnknownEnvelopeKey) {
  absl::StatusOr<Frame> f = ParseFrame(R"({"type":"req","id":"7","method":"m","traceparent":"x"})");
  ASSERT_THAT(f, IsOk());
  EXPECT_TRUE(f->params.is_null());
}

TEST(ParseFrameTest, ResponseOk) {
  absl::StatusOr<Frame> f = ParseFrame(R"({"type":"res","id":"9","ok":true,"payload":{"x":1}})");
  ASSERT_THAT(f, IsOk());
  EXPECT_EQ(f->type, FrameType::kResponse);
  EXPECT_TRUE(f->ok);
  EXPECT_EQ(f->payload["x"], 1);
  EXPECT_FALSE(f->error.has_value());
}

TEST(ParseFrameTest, ResponseError) {
  absl::StatusOr<Frame> f =
      ParseFrame(R"({"type":"res","id":"9","ok":false,"error":{"code":"NOT_PAIRED","message":"m",)"
                 R"("details":{"code":"PAIRING_REQUIRED"},"retryable":true,"retryAfterMs":500}})");
  ASSERT_THAT(f, IsOk());
  EXPECT_FALSE(f->ok);
  ASSERT_TRUE(f->error.has_value());
  EXPECT_EQ(f->error->code, "NOT_PAIRED");
  EXPECT_EQ(f->error->message, "m");
  EXPECT_EQ(f->error->details["code"], "PAIRING_REQUIRED");
  EXPECT_EQ(f->error->retryable, true);
  EXPECT_EQ(f->error->retry_after_ms, 500);
}

TEST(ParseFrameTest, Event) {
  absl::StatusOr<Frame> f =
      ParseFrame(R"({"type":"event","event":"tick","payload":{"ts":5},"seq":3.0})");
  ASSERT_THAT(f, IsOk());
  EXPECT_EQ(f->type, FrameType::kEvent);
  EXPECT_EQ(f->event, "tick");
  EXPECT_EQ(f->seq, 3);
  EXPECT_EQ(f->payload["ts"], 5);
  f = ParseFrame(R"({"type":"event","event":"connect.challenge"})");
  ASSERT_THAT(f, IsOk());
  EXPECT_FALSE(f->seq.has_value());
}

TEST(ParseFrameTest, ErrorPaths) {
  ExpectInvalid("", "not valid JSON");
  ExpectInvalid("{\"type\":", "not valid JSON");
  ExpectInvalid("\xff\xfe", "not valid JSON");
  ExpectInvalid(std::string(600, '[') + std::string(600, ']'), "nests deeper");
  ExpectInvalid("[1,2]", "must be a JSON object");
  ExpectInvalid("\"req\"", "must be a JSON object");
  ExpectInvalid(R"({"id":"1","method":"m"})", "frame.type");
  ExpectInvalid(R"({"type":5})", "frame.type");
  ExpectInvalid(R"({"type":"cancel","id":"1"})", "frame.type");
  ExpectInvalid(R"({"type":"req","method":"m"})", "req.id must be a non-empty string");
  ExpectInvalid(R"({"type":"req","id":"","method":"m"})", "req.id");
  ExpectInvalid(R"({"type":"req","id":1,"method":"m"})", "req.id");
  ExpectInvalid(R"({"type":"req","id":"1"})", "req.method");
  ExpectInvalid(R"({"type":"req","id":"1","method":""})", "req.method");
  ExpectInvalid(R"({"type":"res","id":"","ok":true})", "res.id");
  ExpectInvalid(R"({"type":"res","id":"1"})", "res.ok must be a boolean");
  ExpectInvalid(R"({"type":"res","id":"1","ok":"yes"})", "res.ok");
  ExpectInvalid(R"({"type":"res","id":"1","ok":false,"error":"boom"})", "res.error");
  ExpectInvalid(R"({"type":"res","id":"1","ok":false,"error":{"code":"","message":"m"}})",
                "error.code");
  ExpectInvalid(R"({"type":"res","id":"1","ok":false,"error":{"code":"C"}})", "error.message");
  ExpectInvalid(
      R"({"type":"res","id":"1","ok":false,"error":{"code":"C","message":"m","retryable":1}})",
      "error.retryable");
  ExpectInvalid(
      R"({"type":"res","id":"1","ok":false,"error":{"code":"C","message":"m","retryAfterMs":-1}})",
      "error.retryAfterMs");
  ExpectInvalid(R"({"type":"event","event":""})", "event.event");
  ExpectInvalid(R"({"type":"event"})", "event.event");
  ExpectInvalid(R"({"type":"event","event":"e","seq":-1})", "event.seq");
  ExpectInvalid(R"({"type":"event","event":"e","seq":1.5})", "event.seq");
  ExpectInvalid(R"({"type":"event","event":"e","seq":"1"})", "event.seq");
}

TEST(ParseJsonTest, DepthLimitIgnoresBracketsInStrings) {
  EXPECT_THAT(ParseJson("\"" + std::string(2000, '[') + "\""), IsOk());
  EXPECT_THAT(ParseJson(std::string(kMaxJsonDepth, '[') + std::string(kMaxJsonDepth, ']')), IsOk());
  EXPECT_THAT(ParseJson(std::string(kMaxJsonDepth + 1, '{')),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(JsonIntegerTest, IntegersAsJavaScriptSeesThem) {
  EXPECT_EQ(JsonInteger(json(5)), 5);
  EXPECT_EQ(JsonInteger(json(-5)), -5);
  EXPECT_EQ(JsonInteger(json(2.0)), 2);
  EXPECT_EQ(JsonInteger(json::parse("18446744073709551615")), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(JsonInteger(json(1e300)), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(JsonInteger(json(-1e300)), std::numeric_limits<int64_t>::min());
  EXPECT_FALSE(JsonInteger(json(2.5)).has_value());
  EXPECT_FALSE(JsonInteger(json("2")).has_value());
  EXPECT_FALSE(JsonInteger(json(true)).has_value());
  EXPECT_FALSE(JsonInteger(json(nullptr)).has_value());
}

TEST(EncodeTest, ResponseOk) {
  EXPECT_EQ(EncodeResponseOk("1", json{{"ok", true}}),
            R"({"type":"res","id":"1","ok":true,"payload":{"ok":true}})");
  EXPECT_EQ(EncodeResponseOk("1", json()), R"({"type":"res","id":"1","ok":true})");
  EXPECT_EQ(EncodeResponseOkRaw("x\"y", R"({"a":1})"),
            R"({"type":"res","id":"x\"y","ok":true,"payload":{"a":1}})");
}

TEST(EncodeTest, ResponseError) {
  ErrorShape e;
  e.code = "INVALID_REQUEST";
  e.message = "protocol mismatch";
  EXPECT_EQ(EncodeResponseError("3", e),
            R"({"type":"res","id":"3","ok":false,"error":{"code":"INVALID_REQUEST",)"
            R"("message":"protocol mismatch"}})");
  e.details = json{{"code", "PROTOCOL_MISMATCH"}, {"expectedProtocol", 4}};
  e.retryable = false;
  e.retry_after_ms = 500;
  EXPECT_EQ(EncodeResponseError("3", e),
            R"({"type":"res","id":"3","ok":false,"error":{"code":"INVALID_REQUEST",)"
            R"("message":"protocol mismatch","details":{"code":"PROTOCOL_MISMATCH",)"
            R"("expectedProtocol":4},"retryable":false,"retryAfterMs":500}})");
}

TEST(EncodeTest, Event) {
  EXPECT_EQ(EncodeEvent("tick", json{{"ts", 1}}, 2),
            R"({"type":"event","event":"tick","payload":{"ts":1},"seq":2})");
  EXPECT_EQ(EncodeEvent("tick", json{{"ts", 1}}),
            R"({"type":"event","event":"tick","payload":{"ts":1}})");
  EXPECT_EQ(EncodeEventRaw("e", "[1]"), R"({"type":"event","event":"e","payload":[1]})");
  EXPECT_EQ(EncodeEventRaw("e", ""), R"({"type":"event","event":"e"})");
}

TEST(EncodeTest, Request) {
  EXPECT_EQ(EncodeRequest("1:u", "node.event", json{{"event", "x"}}),
            R"({"type":"req","id":"1:u","method":"node.event","params":{"event":"x"}})");
}

TEST(EncodeTest, StringEscapingAndInvalidUtf8) {
  std::string out;
  AppendJsonString("a\"b\\c\n\t\x01\x7f", &out);
  EXPECT_EQ(out, R"("a\"b\\c\n\t\u0001)"
                 "\x7f\"");
  out.clear();
  AppendJsonString("h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", &out);  // valid UTF-8 passes
  EXPECT_EQ(out, "\"h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
  out.clear();
  AppendJsonString(
      "a\xff"
      "b\xc3",
      &out);  // invalid bytes become U+FFFD
  EXPECT_EQ(out,
            "\"a\xEF\xBF\xBD"
            "b\xEF\xBF\xBD\"");
  out.clear();
  AppendJsonString("\xed\xa0\x80", &out);  // a UTF-16 surrogate is not valid UTF-8
  EXPECT_EQ(out, "\"\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\"");
  // What we encode must always parse again.
  EXPECT_THAT(ParseFrame(EncodeEventRaw("e\xff\x01", "{}")), IsOk());
  EXPECT_EQ(DumpJson(json("a\xff")), "\"a\xEF\xBF\xBD\"");
}

TEST(EncodeTest, RoundTrip) {
  ErrorShape e{"NOT_PAIRED", "pairing required", json{{"code", "PAIRING_REQUIRED"}}, true, 7};
  absl::StatusOr<Frame> f = ParseFrame(EncodeResponseError("id-1", e));
  ASSERT_THAT(f, IsOk());
  EXPECT_EQ(f->id, "id-1");
  EXPECT_EQ(f->error->details["code"], "PAIRING_REQUIRED");
  EXPECT_EQ(f->error->retry_after_ms, 7);
}

}  // namespace
}  // namespace tether::edge::protocol
