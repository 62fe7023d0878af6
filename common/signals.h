// Signals for the binaries' main(): block them everywhere, wait for them on one thread.
#ifndef TETHER_COMMON_SIGNALS_H_
#define TETHER_COMMON_SIGNALS_H_

#include <csignal>

namespace tether::common {

// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and every thread it starts later
// (call it first in main), so only sigwait() on the returned set sees them. Ignores SIGPIPE.
inline sigset_t BlockStopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
  return set;
}

}  // namespace tether::common

#endif  // TETHER_COMMON_SIGNALS_H_
