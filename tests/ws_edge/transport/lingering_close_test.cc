#include "ws_edge/transport/lingering_close.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <utility>

#include "gtest/gtest.h"

namespace tether::edge {
namespace {

using std::chrono::milliseconds;

// A connected loopback TCP pair: {server side, client side}.
std::pair<int, int> TcpPair() {
  int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  EXPECT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(::listen(listener, 1), 0);
  EXPECT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  int client = ::socket(AF_INET, SOCK_STREAM, 0);
  EXPECT_EQ(::connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  int server = ::accept(listener, nullptr, nullptr);
  ::close(listener);
  return {server, client};
}

void SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    ASSERT_GT(n, 0) << strerror(errno);
    sent += static_cast<size_t>(n);
  }
}

// Reads until end of input or an error, at most 5 s. Returns what was read, and 0 for a clean
// end of input or the errno that ended it (ECONNRESET for a reset).
std::pair<std::string, int> ReadToEnd(int fd) {
  std::string got;
  char buf[4096];
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (std::chrono::steady_clock::now() < give_up) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n == 0) return {got, 0};
    if (n < 0) return {got, errno};
    got.append(buf, static_cast<size_t>(n));
  }
  return {got, ETIMEDOUT};
}

bool WaitFor(const std::function<bool()>& done) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!done()) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    std::this_thread::sleep_for(milliseconds(5));
  }
  return true;
}

// What the edge does: the peer's input is unread when the edge sends its last bytes (the close
// frame) and shuts down its sending side. Returns the duplicate descriptor to hand over.
int CloseWithUnreadInput(const std::string& last_words, int server, int client) {
  SendAll(client, std::string(100 * 1024, 'x'));  // an oversize frame, mostly unread
  SendAll(server, last_words);
  EXPECT_EQ(::shutdown(server, SHUT_WR), 0);
  return ::fcntl(server, F_DUPFD_CLOEXEC, 0);
}

// After the edge's last words and FIN, the peer (or the proxy in between) still writes: the
// rest of a frame, its close frame in reply. True when the kernel answered that with a reset.
bool PeerWasReset(int client) {
  const std::string rest(64 * 1024, 'y');
  for (int i = 0; i < 4; ++i) {
    if (::send(client, rest.data(), i == 0 ? rest.size() : 1, MSG_NOSIGNAL) < 0) {
      return errno == EPIPE || errno == ECONNRESET;
    }
    std::this_thread::sleep_for(milliseconds(25));
  }
  return false;
}

// The controls: websocketpp's own close (both directions shut down) and a close with unread
// input both reset the connection while the peer still writes.
TEST(LingeringCloseTest, WithoutItThePeerIsReset) {
  {
    auto [server, client] = TcpPair();
    SendAll(server, "bye");
    ::shutdown(server, SHUT_RDWR);
    auto [got, err] = ReadToEnd(client);
    EXPECT_EQ(got, "bye");
    EXPECT_TRUE(PeerWasReset(client));
    for (int fd : {server, client}) ::close(fd);
  }
  {
    auto [server, client] = TcpPair();
    ::close(CloseWithUnreadInput("bye", server, client));  // no one lingers
    ::close(server);
    auto [got, err] = ReadToEnd(client);
    EXPECT_TRUE(err == ECONNRESET || PeerWasReset(client)) << strerror(err);
    ::close(client);
  }
}

TEST(LingeringCloseTest, DrainsInputSoThePeerSeesTheLastWordsAndAnOrderlyEnd) {
  LingeringClose lingering(16, milliseconds(5000));
  auto [server, client] = TcpPair();
  lingering.Adopt(CloseWithUnreadInput("bye", server, client));
  ::close(server);  // what the library does with its own descriptor
  EXPECT_EQ(lingering.lingering(), 1u);
  auto [got, err] = ReadToEnd(client);
  EXPECT_EQ(got, "bye");
  EXPECT_EQ(err, 0) << strerror(err);
  EXPECT_FALSE(PeerWasReset(client));
  // The peer's FIN ends the linger at once, long before the deadline.
  ::shutdown(client, SHUT_WR);
  EXPECT_TRUE(WaitFor([&] { return lingering.lingering() == 0; }));
  EXPECT_EQ(lingering.timed_out(), 0u);
  ::close(client);
}

TEST(LingeringCloseTest, APeerThatNeverClosesIsClosedAtTheDeadline) {
  LingeringClose lingering(16, milliseconds(100));
  auto [server, client] = TcpPair();
  lingering.Adopt(CloseWithUnreadInput("bye", server, client));
  ::close(server);
  EXPECT_TRUE(WaitFor([&] { return lingering.lingering() == 0; }));
  EXPECT_EQ(lingering.timed_out(), 1u);
  ::close(client);
}

TEST(LingeringCloseTest, PastTheBoundASocketIsClosedAtOnce) {
  LingeringClose lingering(1, milliseconds(5000));
  auto [s1, c1] = TcpPair();
  auto [s2, c2] = TcpPair();
  lingering.Adopt(CloseWithUnreadInput("one", s1, c1));
  lingering.Adopt(CloseWithUnreadInput("two", s2, c2));
  ::close(s1);
  ::close(s2);
  EXPECT_EQ(lingering.lingering(), 1u);
  EXPECT_EQ(lingering.closed_at_once(), 1u);
  auto [got, err] = ReadToEnd(c2);  // closed at once, with unread input: reset
  EXPECT_TRUE(err == ECONNRESET || PeerWasReset(c2)) << strerror(err);
  auto [got1, err1] = ReadToEnd(c1);
  EXPECT_EQ(err1, 0);
  EXPECT_FALSE(PeerWasReset(c1));
  for (int fd : {c1, c2}) ::close(fd);
}

TEST(LingeringCloseTest, StopClosesEverythingAndLaterAdoptsCloseAtOnce) {
  LingeringClose lingering(16, milliseconds(60'000));
  auto [server, client] = TcpPair();
  lingering.Adopt(CloseWithUnreadInput("bye", server, client));
  ::close(server);
  lingering.Stop();
  EXPECT_EQ(lingering.lingering(), 0u);
  auto [got, err] = ReadToEnd(client);
  EXPECT_NE(err, ETIMEDOUT);  // the socket really is closed
  auto [s2, c2] = TcpPair();
  lingering.Adopt(::fcntl(s2, F_DUPFD_CLOEXEC, 0));
  EXPECT_EQ(lingering.closed_at_once(), 1u);
  lingering.Stop();  // idempotent
  for (int fd : {client, s2, c2}) ::close(fd);
}

}  // namespace
}  // namespace tether::edge
