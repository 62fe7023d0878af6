// Structured logs: one line per event, key=value, to stderr.
#ifndef TETHER_COMMON_LOG_H_
#define TETHER_COMMON_LOG_H_

#include <initializer_list>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"

namespace tether::common {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// Process-wide minimum level (set once from a flag in main). Thread-safe.
void SetLogLevel(LogLevel level);
bool ParseLogLevel(absl::string_view text, LogLevel* level);
bool LogEnabled(LogLevel level);

using LogField = std::pair<absl::string_view, absl::string_view>;

// Writes `ts=<iso8601> level=<l> event=<event> k=v ...` as one line (one write call, so lines
// from several threads do not interleave). Values with spaces or quotes are quoted. Never pass
// secrets (tokens, signatures) as fields.
void Log(LogLevel level, absl::string_view event, std::initializer_list<LogField> fields = {});

}  // namespace tether::common

#endif  // TETHER_COMMON_LOG_H_
