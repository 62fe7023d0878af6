// ChildProcess: runs one of the project's binaries for an integration test.
#ifndef TETHER_TESTS_TESTING_PROCESS_H_
#define TETHER_TESTS_TESTING_PROCESS_H_

#include <signal.h>
#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tether::testing {

// Owns a child process: started in the constructor, SIGKILLed and reaped in the destructor
// unless it already exited. Output goes to a log file under TEST_TMPDIR. Not thread-safe.
class ChildProcess {
 public:
  // `binary` is relative to the test's runfiles directory (the current directory in tests).
  // `port_file_flag`: append --port_file=<path> (the project's binaries have that flag).
  ChildProcess(const std::string& binary, const std::vector<std::string>& args,
               const std::vector<std::string>& env = {}, bool port_file_flag = true);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Waits for the process to write its port file (the binaries' --port_file flag).
  absl::StatusOr<int> WaitForPort(absl::Duration timeout);
  void Signal(int sig);
  // Waits for exit; returns the exit status (or -1 on timeout).
  int Wait(absl::Duration timeout);
  bool running();
  std::string Log() const;
  const std::string& port_file() const { return port_file_; }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
  std::string log_path_;
  std::string port_file_;
};

// A free TCP port on 127.0.0.1 (bound and released; fine for tests).
int FreePort();

// A fresh path under TEST_TMPDIR (or /tmp).
std::string TempPath(const std::string& stem);

}  // namespace tether::testing

#endif  // TETHER_TESTS_TESTING_PROCESS_H_
