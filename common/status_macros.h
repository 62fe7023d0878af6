// RETURN_IF_ERROR / ASSIGN_OR_RETURN: Debian's Abseil 20220623 ships no status macros.
#ifndef TETHER_COMMON_STATUS_MACROS_H_
#define TETHER_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define TETHER_STATUS_CONCAT_INNER_(x, y) x##y
#define TETHER_STATUS_CONCAT_(x, y) TETHER_STATUS_CONCAT_INNER_(x, y)

// Returns the status from the enclosing function when `expr` is not OK.
#define RETURN_IF_ERROR(expr)                        \
  do {                                               \
    const ::absl::Status tether_status_ = (expr);    \
    if (!tether_status_.ok()) return tether_status_; \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, F());` binds the value of a StatusOr or returns its status.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(TETHER_STATUS_CONCAT_(tether_statusor_, __LINE__), lhs, expr)

#define ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                           \
  if (!statusor.ok()) return statusor.status();     \
  lhs = std::move(statusor).value()

#endif  // TETHER_COMMON_STATUS_MACROS_H_
