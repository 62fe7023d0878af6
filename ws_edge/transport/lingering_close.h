// LingeringClose: ends TCP connections the way a careful server does.
#ifndef TETHER_WS_EDGE_TRANSPORT_LINGERING_CLOSE_H_
#define TETHER_WS_EDGE_TRANSPORT_LINGERING_CLOSE_H_

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace tether::edge {

// A socket closed with unread input is reset (RST) by the kernel, and so is one whose reading
// side was shut down when more input arrives. The reset can overtake the close frame the edge
// just sent: behind a proxy the node then sees 1006 instead of the edge's code (1009 for an
// oversize frame, 1008 for a refused handshake). So the edge shuts down only its sending side
// (a FIN after the close frame) and hands the socket here: its input is read and thrown away
// until the peer closes its side or `linger` has passed, and only then is it closed.
//
// Bounded: at most `max_sockets` linger at once; past that a socket is closed at once (as
// without this class), so a flood of closes cannot pin descriptors.
//
// Transitions of one adopted descriptor:
//   from      event                          to        action
//   -         Adopt, under the bound         draining  waits for input; deadline now + linger
//   -         Adopt, at the bound            closed    close(fd) (counted in closed_at_once)
//   -         Adopt after Stop               closed    close(fd)
//   draining  input                          draining  read and discarded
//   draining  end of input or socket error   closed    close(fd)
//   draining  deadline passed                closed    close(fd) (counted in timed_out)
//   draining  Stop / destruction             closed    close(fd)
//
// Owns the descriptors it adopted and one thread that drains them. Thread-safe.
class LingeringClose {
 public:
  LingeringClose(size_t max_sockets, std::chrono::milliseconds linger);
  ~LingeringClose();
  LingeringClose(const LingeringClose&) = delete;
  LingeringClose& operator=(const LingeringClose&) = delete;

  // Takes ownership of `fd`, a connected TCP socket whose sending side is already shut down.
  void Adopt(int fd);
  // Closes every descriptor and ends the thread. Idempotent; any thread.
  void Stop();

  size_t lingering();
  uint64_t closed_at_once() { return closed_at_once_.load(); }
  uint64_t timed_out() { return timed_out_.load(); }

 private:
  struct Entry {
    int fd;
    std::chrono::steady_clock::time_point deadline;
  };
  void Loop();
  void Wake();

  const size_t max_sockets_;
  const std::chrono::milliseconds linger_;
  int wake_fds_[2] = {-1, -1};  // a pipe: Adopt and Stop write a byte to wake the loop
  absl::Mutex mu_;
  std::vector<Entry> adopted_ ABSL_GUARDED_BY(mu_);  // handed over, not yet seen by the loop
  size_t count_ ABSL_GUARDED_BY(mu_) = 0;            // adopted and not yet closed
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<uint64_t> closed_at_once_{0};
  std::atomic<uint64_t> timed_out_{0};
  std::atomic<bool> joined_{false};
  std::thread thread_;
};

}  // namespace tether::edge

#endif  // TETHER_WS_EDGE_TRANSPORT_LINGERING_CLOSE_H_
