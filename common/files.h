// Small secrets and certificates read from files (never from command lines).
#ifndef TETHER_COMMON_FILES_H_
#define TETHER_COMMON_FILES_H_

#include <string>

#include "absl/status/statusor.h"

namespace tether::common {

// The file's content without surrounding whitespace. kNotFound when unreadable,
// kInvalidArgument when empty.
absl::StatusOr<std::string> ReadTrimmedFile(const std::string& path);

}  // namespace tether::common

#endif  // TETHER_COMMON_FILES_H_
