// tether-node: a small node built on ws_edge/client, for trying Tether by hand. It connects to
// an edge, answers `system.which` (looks binaries up in PATH) and `echo` (returns its params),
// and reconnects with backoff when the connection drops.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "ws_edge/client/client_loop.h"
#include "ws_edge/client/node_client.h"

ABSL_FLAG(std::string, edge, "127.0.0.1:18789", "edge address host:port");
ABSL_FLAG(std::string, name, "tether-demo-node", "display name");

namespace {

using tether::edge::client::InvokeReply;
volatile std::sig_atomic_t g_stop = 0;

InvokeReply Handle(const tether::edge::protocol::InvokeRequest& req) {
  nlohmann::json params = nlohmann::json::parse(req.params_json.value_or("null"), nullptr, false);
  if (req.command == "echo") return InvokeReply::Ok(params.dump());
  if (req.command == "system.which") {
    nlohmann::json found = nlohmann::json::object();
    const char* path = std::getenv("PATH");
    if (params.is_object() && params.contains("bins") && params["bins"].is_array()) {
      for (const auto& bin : params["bins"]) {
        if (!bin.is_string()) continue;
        for (absl::string_view dir : absl::StrSplit(path ? path : "", ':')) {
          std::string candidate = std::string(dir) + "/" + bin.get<std::string>();
          if (access(candidate.c_str(), X_OK) == 0) {
            found[bin.get<std::string>()] = candidate;
            break;
          }
        }
      }
    }
    return InvokeReply::Ok(nlohmann::json{{"bins", found}}.dump());
  }
  return InvokeReply::Error("UNKNOWN_COMMAND", "not implemented: " + req.command);
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  std::signal(SIGINT, [](int) { g_stop = 1; });
  std::signal(SIGTERM, [](int) { g_stop = 1; });
  std::vector<std::string> hp = absl::StrSplit(absl::GetFlag(FLAGS_edge), ':');
  if (hp.size() != 2) {
    std::fprintf(stderr, "tether-node: --edge must be host:port\n");
    return 2;
  }
  const char* token = std::getenv("TETHER_SHARED_TOKEN");
  tether::edge::client::ClientLoop loop;
  tether::edge::client::DeviceCredentials creds;
  std::printf("tether-node: node id %s\n", creds.node_id().c_str());
  int backoff_ms = 1000;
  while (!g_stop) {
    tether::edge::client::NodeClientOptions o;
    o.host = hp[0];
    o.port = static_cast<uint16_t>(std::stoi(hp[1]));
    if (token != nullptr && *token) o.shared_token = token;
    o.connect.display_name = absl::GetFlag(FLAGS_name);
    o.connect.commands = {"system.which", "echo"};
    o.record_frames = false;
    o.on_invoke = Handle;
    tether::edge::client::NodeClient node(loop, creds, o);
    absl::Status s = node.Connect(absl::Seconds(15));
    if (s.ok()) {
      std::printf("tether-node: connected, conn id %s\n", node.conn_id().c_str());
      std::fflush(stdout);
      backoff_ms = 1000;
      while (!g_stop && node.state() == tether::edge::client::NodeClient::State::kReady) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
      if (auto c = node.close_info()) {
        std::printf("tether-node: closed %d %s\n", c->code, c->reason.c_str());
      }
    } else {
      std::fprintf(stderr, "tether-node: %s\n", std::string(s.message()).c_str());
    }
    if (g_stop) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(backoff_ms));
    backoff_ms = std::min(backoff_ms * 2, 30'000);
  }
  return 0;
}
