// Review finding, end to end: a node frame well under the advertised maxPayload (25 MiB) is
// forwarded to the registry as one EdgeMessage; the registry's gRPC server keeps the default
// 4 MiB receive limit, so the whole EdgeLink stream fails and every other node on the edge
// loses its in-flight invokes ("edge link lost").
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/cluster.h"

namespace tether {
namespace {

using edge::client::DeviceCredentials;
using edge::client::InvokeReply;
using nlohmann::json;
using testing::Cluster;

TEST(EdgeReviewE2ETest, ALargeNodeEventDoesNotBreakTheLinkForOtherNodes) {
  Cluster c;
  c.StartRegistry({"--auto_approve", "--lease_ttl_ms=2000"});
  c.StartEdge("edgeA");
  DeviceCredentials victim_creds, big_creds;
  auto victim = c.Node(victim_creds, "edgeA", [](edge::client::NodeClientOptions& o) {
    o.on_invoke = [](const edge::protocol::InvokeRequest&) { return InvokeReply::Deferred(); };
  });
  ASSERT_TRUE(victim->Connect(absl::Seconds(10)).ok());
  auto big = c.ReadyNode(big_creds, "edgeA");
  auto pending =
      std::async(std::launch::async, [&] { return c.Invoke(victim_creds.node_id(), 15000); });
  ASSERT_TRUE(victim->WaitForInvokeCount(1, absl::Seconds(5)).ok());

  // 5 MiB of payloadJSON: a fifth of the maxPayload the edge advertises in hello-ok.
  const std::string payload = "\"" + std::string(5 << 20, 'x') + "\"";
  auto id =
      big->SendRequest("node.event", json{{"event", "node.host.stats"}, {"payloadJSON", payload}});
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(big->WaitForResponse(*id, absl::Seconds(10)).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));

  const std::string scrape = testing::HttpGet(testing::MetricsPort(c.edge("edgeA")), "/metrics");
  EXPECT_EQ(testing::MetricValue(scrape, "tether_edge_link_reconnects_total"), 0) << scrape;

  // The victim answers its invoke now; it must still count.
  auto res_id = victim->SendInvokeResult(victim->invoke_requests()[0],
                                         InvokeReply::Ok(std::string("\"fine\"")));
  ASSERT_TRUE(res_id.ok());
  auto outcome = pending.get();
  EXPECT_TRUE(outcome.status.ok()) << outcome.error_code << " " << outcome.status.error_message();
}

// Resident memory (KiB) of the process whose command line contains `needle`, or -1.
long RssKiBOf(const std::string& needle) {
  DIR* d = opendir("/proc");
  if (d == nullptr) return -1;
  long rss = -1;
  while (dirent* e = readdir(d)) {
    const std::string pid = e->d_name;
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream cmd("/proc/" + pid + "/cmdline");
    std::string args((std::istreambuf_iterator<char>(cmd)), std::istreambuf_iterator<char>());
    if (args.find(needle) == std::string::npos || args.find("ws_edge") == std::string::npos) {
      continue;
    }
    std::ifstream status("/proc/" + pid + "/status");
    for (std::string line; std::getline(status, line);) {
      if (line.rfind("VmRSS:", 0) == 0) rss = std::stol(line.substr(6));
    }
  }
  closedir(d);
  return rss;
}

// Before any handshake, a client that never reads sends empty WebSocket pings. websocketpp
// answers each with a queued pong that get_buffered_amount() counts as 0 bytes (payload only),
// and the core never writes to the socket again before hello, so no bound applies: edge memory
// grows with every 6-byte frame until the handshake timeout.
TEST(EdgeReviewE2ETest, PingFloodFromAClientThatNeverReadsIsBounded) {
  Cluster c;
  c.StartRegistry({"--auto_approve"});
  const std::string edge_id = "edge-pingflood-" + std::to_string(getpid());
  const int port = c.StartEdge(edge_id);
  const long before = RssKiBOf("--edge_id=" + edge_id);
  ASSERT_GT(before, 0);

  int fd = socket(AF_INET, SOCK_STREAM, 0);
  int small = 4096;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  const std::string upgrade =
      "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
  ASSERT_EQ(write(fd, upgrade.data(), upgrade.size()), static_cast<ssize_t>(upgrade.size()));
  std::string head;
  char ch;
  while (head.find("\r\n\r\n") == std::string::npos && read(fd, &ch, 1) == 1) head += ch;
  ASSERT_NE(head.find(" 101 "), std::string::npos) << head;
  // From here on the client never reads. A masked, empty ping is 6 bytes.
  std::string pings;
  for (int i = 0; i < 10000; ++i) pings.append("\x89\x80\x00\x00\x00\x00", 6);
  const auto stop = std::chrono::steady_clock::now() + std::chrono::seconds(7);
  size_t sent = 0;
  while (std::chrono::steady_clock::now() < stop) {
    ssize_t n = send(fd, pings.data(), pings.size(), MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  const long after = RssKiBOf("--edge_id=" + edge_id);
  close(fd);
  std::printf("sent %zu bytes of pings; edge RSS %ld KiB -> %ld KiB\n", sent, before, after);
  // 64 MiB is more than the 50 MiB per-socket send bound the edge advertises.
  EXPECT_LT(after - before, 64 * 1024) << "edge grew by " << (after - before) / 1024 << " MiB";
}

}  // namespace
}  // namespace tether
