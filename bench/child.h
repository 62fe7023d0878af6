// Child: a process the benchmark starts (registry, edge, fleet), with its stdin and stdout as
// pipes for a line protocol, stderr to a log file (or inherited), and its memory readable.
#ifndef TETHER_BENCH_CHILD_H_
#define TETHER_BENCH_CHILD_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tether::bench {

struct ChildOptions {
  std::string binary;
  std::vector<std::string> args;
  std::vector<std::string> env;  // "NAME=value", added to this process's environment
  std::string log_path;          // stdout and stderr go here unless piped / inherited
  bool pipe_stdio = false;       // stdin and stdout become pipes (stderr goes to log_path)
  bool inherit_stderr = false;   // stderr is this process's stderr (progress lines)
};

// Owns one child process: SIGKILLed and reaped on destruction unless it exited. Not
// thread-safe.
class Child {
 public:
  static absl::StatusOr<std::unique_ptr<Child>> Start(const ChildOptions& options);
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& name() const { return name_; }
  const std::string& log_path() const { return log_path_; }

  // Line protocol over the pipes (pipe_stdio).
  absl::Status WriteLine(const std::string& line);
  // The next line from the child's stdout, without the newline; DeadlineExceeded on timeout,
  // Unavailable when the child closed its stdout.
  absl::StatusOr<std::string> ReadLine(absl::Duration timeout);
  void CloseStdin();

  // Resident memory from /proc (0 when unreadable).
  int64_t RssBytes() const;
  // CPU time (user + system) from /proc, in seconds.
  double CpuSeconds() const;
  // Context switches (voluntary + involuntary) of the threads alive now, summed over
  // /proc/PID/task/*/status: a thread that already exited is not counted.
  int64_t ContextSwitches() const;
  bool Running();
  void Signal(int sig);
  // Waits for exit; the wait status, or nullopt on timeout.
  std::optional<int> Wait(absl::Duration timeout);
  // The log's last `bytes` bytes (for error messages).
  std::string LogTail(size_t bytes = 2000) const;

 private:
  Child() = default;

  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
  int stdin_fd_ = -1;
  int stdout_fd_ = -1;
  std::string buffer_;  // read from stdout, not yet returned
  std::string name_;
  std::string log_path_;
};

// Polls `path` until it holds a positive integer (a --port_file), or the child exits.
absl::StatusOr<int> WaitForPortFile(Child& child, const std::string& path, absl::Duration timeout);

// Raises this process's open-file limit to its hard limit; returns the new soft limit.
int64_t RaiseFileLimit();

// "key=value" tokens of a line, e.g. "ready ok=5 failed=0" -> {ok:5, failed:0}.
std::vector<std::pair<std::string, std::string>> ParseFields(const std::string& line);
// The field `key` as a number, or `fallback`.
double Field(const std::string& line, const std::string& key, double fallback = 0);

}  // namespace tether::bench

#endif  // TETHER_BENCH_CHILD_H_
