#include "common/ids.h"

#include <openssl/rand.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/escaping.h"

namespace tether::common {
namespace {

void Fill(uint8_t* out, int n) {
  // RAND_bytes only fails when the OS entropy source is broken; nothing sane can continue.
  if (RAND_bytes(out, n) != 1) std::abort();
}

}  // namespace

std::string RandomHexId() {
  uint8_t b[16];
  Fill(b, sizeof(b));
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(b), sizeof(b)));
}

std::string UniqueId() {
  static const uint64_t prefix = [] {
    uint64_t p = 0;
    Fill(reinterpret_cast<uint8_t*>(&p), sizeof(p));
    return p;
  }();
  static std::atomic<uint64_t> counter{0};
  const uint64_t n = counter.fetch_add(1, std::memory_order_relaxed);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(32, '0');
  for (int i = 0; i < 16; ++i) {
    out[i] = kHex[(prefix >> (60 - 4 * i)) & 0xf];
    out[16 + i] = kHex[(n >> (60 - 4 * i)) & 0xf];
  }
  return out;
}

std::string RandomUuid() {
  uint8_t b[16];
  Fill(b, sizeof(b));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  char buf[37];
  std::snprintf(buf, sizeof(buf),
                "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
                b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
                b[15]);
  return buf;
}

std::string RandomToken(int n) {
  std::string raw(n, '\0');
  Fill(reinterpret_cast<uint8_t*>(raw.data()), n);
  return absl::WebSafeBase64Escape(raw);
}

}  // namespace tether::common
