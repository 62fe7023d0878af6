#include "ws_edge/protocol/frame.h"

#include <cmath>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tether::edge::protocol {
namespace {

using nlohmann::json;

// Counts bracket nesting outside strings. Cheaper than a parser callback and it stops at the
// first level too deep, before any value is allocated.
bool DepthWithin(absl::string_view text, int max_depth) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

// Length of the valid UTF-8 sequence at s[i], or 0 if it is not one.
size_t Utf8SequenceLength(absl::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const auto cont = [&](size_t k, unsigned char lo = 0x80, unsigned char hi = 0xBF) {
    return k < s.size() && b(k) >= lo && b(k) <= hi;
  };
  const unsigned char c = b(i);
  if (c >= 0xC2 && c <= 0xDF) return cont(i + 1) ? 2 : 0;
  if (c == 0xE0) return cont(i + 1, 0xA0) && cont(i + 2) ? 3 : 0;
  if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) return cont(i + 1) && cont(i + 2) ? 3 : 0;
  if (c == 0xED) return cont(i + 1, 0x80, 0x9F) && cont(i + 2) ? 3 : 0;
  if (c == 0xF0) return cont(i + 1, 0x90) && cont(i + 2) && cont(i + 3) ? 4 : 0;
  if (c >= 0xF1 && c <= 0xF3) return cont(i + 1) && cont(i + 2) && cont(i + 3) ? 4 : 0;
  if (c == 0xF4) return cont(i + 1, 0x80, 0x8F) && cont(i + 2) && cont(i + 3) ? 4 : 0;
  return 0;
}

absl::Status NonEmptyString(const json& obj, const char* frame_type, const char* key,
                            std::string* out) {
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_string() || it->get_ref<const std::string&>().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(frame_type, ".", key, " must be a non-empty string"));
  }
  *out = it->get_ref<const std::string&>();
  return absl::OkStatus();
}

void AppendErrorShape(const ErrorShape& e, std::string* out) {
  out->append(R"({"code":)");
  AppendJsonString(e.code, out);
  out->append(R"(,"message":)");
  AppendJsonString(e.message, out);
  if (!e.details.is_null()) {
    out->append(R"(,"details":)");
    out->append(DumpJson(e.details));
  }
  if (e.retryable.has_value()) {
    out->append(*e.retryable ? R"(,"retryable":true)" : R"(,"retryable":false)");
  }
  if (e.retry_after_ms.has_value()) {
    absl::StrAppend(out, R"(,"retryAfterMs":)", *e.retry_after_ms);
  }
  out->push_back('}');
}

std::string ResponseHead(absl::string_view id, bool ok) {
  std::string out;
  out.append(R"({"type":"res","id":)");
  AppendJsonString(id, &out);
  out.append(ok ? R"(,"ok":true)" : R"(,"ok":false)");
  return out;
}

std::string EventFrame(absl::string_view event, absl::string_view payload_json,
                       std::optional<int64_t> seq) {
  std::string out;
  out.reserve(payload_json.size() + event.size() + 48);
  out.append(R"({"type":"event","event":)");
  AppendJsonString(event, &out);
  if (!payload_json.empty()) {
    out.append(R"(,"payload":)");
    out.append(payload_json.data(), payload_json.size());
  }
  if (seq.has_value()) absl::StrAppend(&out, R"(,"seq":)", *seq);
  out.push_back('}');
  return out;
}

}  // namespace

absl::StatusOr<json> ParseJson(absl::string_view text) {
  if (!DepthWithin(text, kMaxJsonDepth)) {
    return absl::InvalidArgumentError(
        absl::StrCat("JSON nests deeper than ", kMaxJsonDepth, " levels"));
  }
  json value = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) return absl::InvalidArgumentError("not valid JSON");
  return value;
}

absl::StatusOr<Frame> ParseFrame(absl::string_view text) {
  absl::StatusOr<json> value = ParseJson(text);
  if (!value.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("frame is ", value.status().message()));
  }
  return FrameFromJson(*std::move(value));
}

absl::StatusOr<Frame> FrameFromJson(json value) {
  if (!value.is_object()) return absl::InvalidArgumentError("frame must be a JSON object");
  auto type_it = value.find("type");
  if (type_it == value.end() || !type_it->is_string()) {
    return absl::InvalidArgumentError(R"(frame.type must be "req", "res" or "event")");
  }
  const std::string& type = type_it->get_ref<const std::string&>();
  Frame frame;
  if (type == "req") {
    frame.type = FrameType::kRequest;
    if (auto s = NonEmptyString(value, "req", "id", &frame.id); !s.ok()) return s;
    if (auto s = NonEmptyString(value, "req", "method", &frame.method); !s.ok()) return s;
    if (auto it = value.find("params"); it != value.end()) frame.params = std::move(*it);
  } else if (type == "res") {
    frame.type = FrameType::kResponse;
    if (auto s = NonEmptyString(value, "res", "id", &frame.id); !s.ok()) return s;
    auto ok_it = value.find("ok");
    if (ok_it == value.end() || !ok_it->is_boolean()) {
      return absl::InvalidArgumentError("res.ok must be a boolean");
    }
    frame.ok = ok_it->get<bool>();
    if (auto it = value.find("error"); it != value.end()) {
      absl::StatusOr<ErrorShape> error = ErrorShapeFromJson(*it);
      if (!error.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("res.", error.status().message()));
      }
      frame.error = *std::move(error);
    }
    if (auto it = value.find("payload"); it != value.end()) frame.payload = std::move(*it);
  } else if (type == "event") {
    frame.type = FrameType::kEvent;
    if (auto s = NonEmptyString(value, "event", "event", &frame.event); !s.ok()) return s;
    if (auto it = value.find("seq"); it != value.end()) {
      std::optional<int64_t> seq = JsonInteger(*it);
      if (!seq.has_value() || *seq < 0) {
        return absl::InvalidArgumentError("event.seq must be a non-negative integer");
      }
      frame.seq = seq;
    }
    if (auto it = value.find("payload"); it != value.end()) frame.payload = std::move(*it);
  } else {
    return absl::InvalidArgumentError(R"(frame.type must be "req", "res" or "event")");
  }
  return frame;
}

absl::StatusOr<ErrorShape> ErrorShapeFromJson(const json& value) {
  if (!value.is_object()) return absl::InvalidArgumentError("error must be an object");
  ErrorShape e;
  if (auto s = NonEmptyString(value, "error", "code", &e.code); !s.ok()) return s;
  if (auto s = NonEmptyString(value, "error", "message", &e.message); !s.ok()) return s;
  if (auto it = value.find("details"); it != value.end()) e.details = *it;
  if (auto it = value.find("retryable"); it != value.end()) {
    if (!it->is_boolean()) return absl::InvalidArgumentError("error.retryable must be a boolean");
    e.retryable = it->get<bool>();
  }
  if (auto it = value.find("retryAfterMs"); it != value.end()) {
    std::optional<int64_t> ms = JsonInteger(*it);
    if (!ms.has_value() || *ms < 0) {
      return absl::InvalidArgumentError("error.retryAfterMs must be a non-negative integer");
    }
    e.retry_after_ms = ms;
  }
  return e;
}

std::optional<int64_t> JsonInteger(const json& value) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
  if (value.is_number_unsigned()) {
    const uint64_t u = value.get<uint64_t>();
    return u > static_cast<uint64_t>(kMax) ? kMax : static_cast<int64_t>(u);
  }
  if (value.is_number_integer()) return value.get<int64_t>();
  if (value.is_number_float()) {
    const double d = value.get<double>();
    if (!std::isfinite(d) || std::floor(d) != d) return std::nullopt;
    if (d >= 9223372036854775807.0) return kMax;
    if (d <= -9223372036854775808.0) return kMin;
    return static_cast<int64_t>(d);
  }
  return std::nullopt;
}

std::string DumpJson(const json& value) {
  return value.dump(-1, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace);
}

void AppendJsonString(absl::string_view s, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->reserve(out->size() + s.size() + 2);
  out->push_back('"');
  size_t run_start = 0;
  const auto flush = [&](size_t end) { out->append(s.data() + run_start, end - run_start); };
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
      ++i;
      continue;
    }
    if (c >= 0x80) {
      const size_t n = Utf8SequenceLength(s, i);
      if (n > 0) {
        i += n;
        continue;
      }
    }
    flush(i);
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\b':
        out->append("\\b");
        break;
      case '\f':
        out->append("\\f");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        if (c < 0x20) {
          out->append("\\u00");
          out->push_back(kHex[c >> 4]);
          out->push_back(kHex[c & 0xF]);
        } else {
          out->append("\xEF\xBF\xBD");  // invalid UTF-8 byte -> U+FFFD, as nlohmann's replace
        }
    }
    run_start = ++i;
  }
  flush(s.size());
  out->push_back('"');
}

std::string EncodeRequest(absl::string_view id, absl::string_view method, const json& params) {
  std::string out;
  out.append(R"({"type":"req","id":)");
  AppendJsonString(id, &out);
  out.append(R"(,"method":)");
  AppendJsonString(method, &out);
  if (!params.is_null()) {
    out.append(R"(,"params":)");
    out.append(DumpJson(params));
  }
  out.push_back('}');
  return out;
}

std::string EncodeResponseOk(absl::string_view id, const json& payload) {
  return EncodeResponseOkRaw(id, payload.is_null() ? std::string() : DumpJson(payload));
}

std::string EncodeResponseOkRaw(absl::string_view id, absl::string_view payload_json) {
  std::string out = ResponseHead(id, true);
  if (!payload_json.empty()) {
    out.append(R"(,"payload":)");
    out.append(payload_json.data(), payload_json.size());
  }
  out.push_back('}');
  return out;
}

std::string EncodeResponseError(absl::string_view id, const ErrorShape& error) {
  std::string out = ResponseHead(id, false);
  out.append(R"(,"error":)");
  AppendErrorShape(error, &out);
  out.push_back('}');
  return out;
}

std::string EncodeEvent(absl::string_view event, const json& payload, std::optional<int64_t> seq) {
  return EventFrame(event, payload.is_null() ? std::string() : DumpJson(payload), seq);
}

std::string EncodeEventRaw(absl::string_view event, absl::string_view payload_json,
                           std::optional<int64_t> seq) {
  return EventFrame(event, payload_json, seq);
}

}  // namespace tether::edge::protocol
