// The main of every C++ test: GoogleTest plus a hang watchdog.
//
// Bazel kills a test that outlives its timeout and leaves nothing but "TIMEOUT" in the log. So
// that the next hang is diagnosed from CI's log alone, a watchdog thread wakes a few seconds
// before Bazel's deadline (TEST_TIMEOUT), prints the running test's name and the stacks of
// every thread of this process and of its child processes (servers the test started), with
// gdb, then aborts. Without gdb it still names the test and each thread's kernel wait channel.
#include <dirent.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Live (not zombie) descendants of `pid`: the servers a test started, and theirs.
std::vector<pid_t> DescendantsOf(pid_t pid) {
  std::vector<pid_t> out;
  DIR* dir = opendir("/proc");
  if (dir == nullptr) return out;
  while (dirent* e = readdir(dir)) {
    const pid_t p = static_cast<pid_t>(std::atoi(e->d_name));
    if (p <= 0) continue;
    // /proc/P/stat: "pid (comm) state ppid ..."; comm may hold spaces, so parse after ')'.
    const std::string stat = ReadFile("/proc/" + std::to_string(p) + "/stat");
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 1));
    std::string state;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid == pid && state != "Z") out.push_back(p);
  }
  closedir(dir);
  for (size_t i = 0, n = out.size(); i < n; ++i) {
    for (pid_t d : DescendantsOf(out[i])) out.push_back(d);
  }
  return out;
}

// Prints every thread's stack of `pid` with gdb; false when gdb could not be run.
bool GdbStacks(pid_t pid) {
  const pid_t child = fork();
  if (child < 0) return false;
  if (child == 0) {
    dup2(STDERR_FILENO, STDOUT_FILENO);
    const std::string p = std::to_string(pid);
    execlp("gdb", "gdb", "-nx", "-batch", "-iex", "set index-cache enabled off", "-p", p.c_str(),
           "-ex", "thread apply all bt", static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  waitpid(child, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

void WaitChannels(pid_t pid) {
  const std::string base = "/proc/" + std::to_string(pid) + "/task";
  DIR* dir = opendir(base.c_str());
  if (dir == nullptr) return;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    const std::string t = base + "/" + e->d_name;
    std::fprintf(stderr, "  thread %s (%s): waiting in %s\n", e->d_name,
                 ReadFile(t + "/comm").c_str(), ReadFile(t + "/wchan").c_str());
  }
  closedir(dir);
}

void DumpAndAbort(int after_s) {
  const testing::TestInfo* info = testing::UnitTest::GetInstance()->current_test_info();
  std::fprintf(stderr,
               "\n*** WATCHDOG: still running after %d s, just before Bazel's timeout; "
               "running test: %s.%s\n",
               after_s, info != nullptr ? info->test_suite_name() : "(none)",
               info != nullptr ? info->name() : "(none)");
  std::vector<pid_t> pids = {getpid()};
  for (pid_t c : DescendantsOf(getpid())) pids.push_back(c);
  for (pid_t p : pids) {
    std::fprintf(stderr, "*** WATCHDOG: stacks of pid %d (%s)\n", static_cast<int>(p),
                 ReadFile("/proc/" + std::to_string(p) + "/cmdline").c_str());
    std::fflush(stderr);
    if (!GdbStacks(p)) {
      std::fprintf(stderr, "*** WATCHDOG: gdb unavailable; wait channels instead\n");
      WaitChannels(p);
    }
  }
  std::fflush(stderr);
  for (pid_t p : pids) {
    if (p != getpid()) kill(p, SIGKILL);
  }
  std::abort();
}

void StartWatchdog() {
  const char* timeout = std::getenv("TEST_TIMEOUT");  // set by `bazel test`
  if (timeout == nullptr) return;
  const int total_s = std::atoi(timeout);
  if (total_s <= 0) return;
  // Fire with enough time left for gdb to print (a few seconds per process).
  const int after_s = total_s > 40 ? total_s - 15 : total_s * 2 / 3;
  // Let a gdb child attach to this process under Yama's ptrace_scope=1.
  prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
  std::thread([after_s] {
    std::this_thread::sleep_for(std::chrono::seconds(after_s));
    DumpAndAbort(after_s);
  }).detach();
}

}  // namespace

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  StartWatchdog();
  return RUN_ALL_TESTS();
}
