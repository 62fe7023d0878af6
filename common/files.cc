#include "common/files.h"

#include <fstream>
#include <sstream>

#include "absl/strings/strip.h"

namespace tether::common {

absl::StatusOr<std::string> ReadTrimmedFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string content(absl::StripAsciiWhitespace(ss.str()));
  if (content.empty()) return absl::InvalidArgumentError(path + " is empty");
  return content;
}

}  // namespace tether::common
