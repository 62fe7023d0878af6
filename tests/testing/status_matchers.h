// IsOk() / StatusIs(code): gMock matchers for absl::Status and absl::StatusOr (Debian's Abseil
// ships none).
#ifndef TETHER_TESTS_TESTING_STATUS_MATCHERS_H_
#define TETHER_TESTS_TESTING_STATUS_MATCHERS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"

namespace tether::testing {

inline const absl::Status& GetStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

MATCHER(IsOk, "is OK") {
  const absl::Status& s = GetStatus(arg);
  *result_listener << s.ToString();
  return s.ok();
}

MATCHER_P(StatusIs, code, "has status code " + absl::StatusCodeToString(code)) {
  const absl::Status& s = GetStatus(arg);
  *result_listener << s.ToString();
  return s.code() == code;
}

}  // namespace tether::testing

#endif  // TETHER_TESTS_TESTING_STATUS_MATCHERS_H_
