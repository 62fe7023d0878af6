// fleet: a simulated node fleet in one process. Every node has its own Ed25519 identity, does
// the real handshake (challenge, signed connect, hello-ok) and answers every invoke with a
// fixed-size payload. Sockets are spread over several client threads (ClientLoops), several
// source addresses (127.0.0.2, 127.0.0.3, ...) and the given edges.
//
// It is driven by commands, one per line on stdin (the benchmark does this), or by --commands
// ("ramp; hold 30; storm 2000; quit") when run by hand. Each command answers one line on stdout
// of "key=value" fields; progress goes to stderr.
//
//   ramp [WINDOW]      connect every node, at most WINDOW handshakes in flight at once (with
//                      --handshake=false: open every socket and wait for its challenge only)
//                      -> "ramped ready=N failed=N retries=N elapsed_ms=T rate=R"
//   storm [SPREAD_MS]  reconnect every node at once on a new socket while the old one stays
//                      open; once a node's new socket has hello-ok its old one is closed by us
//                      at a random time within SPREAD_MS, unless the edge closed it already
//                      -> "stormed ready=N failed=N retries=N all_ready_ms=T old_closed_by_us=N
//                          old_replaced=N old_other=N elapsed_ms=T"
//   close              close every socket -> "closed sockets=N elapsed_ms=T"
//   stats              -> "stats ready=N invokes=N dropped=N"
//   hold SECONDS       sleep (for --commands)
//   quit               close everything and exit
//
// Bounded: --nodes, every phase by --phase_timeout_s, the whole process by --max_runtime_s.
// Connects only to the given edges, which must be 127.0.0.0/8 addresses.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <iostream>
#include <map>
#include <memory>
#include <queue>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/child.h"
#include "ws_edge/client/client_loop.h"
#include "ws_edge/client/node_client.h"

ABSL_FLAG(std::string, edges, "127.0.0.1:18789",
          "comma-separated edge host:port (127.0.0.0/8); node i connects to edge i % count");
ABSL_FLAG(std::string, source_addresses, "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5",
          "comma-separated local addresses (127.0.0.0/8) the sockets bind to, round robin");
ABSL_FLAG(int, nodes, 1000, "nodes (identities) in this fleet");
ABSL_FLAG(int, loops, 1, "client threads (ClientLoops) the sockets are spread over");
ABSL_FLAG(int, window, 500, "default handshakes in flight at once while ramping");
ABSL_FLAG(int, payload_bytes, 64, "size of the payloadJSON every invoke is answered with");
ABSL_FLAG(bool, handshake, true,
          "send connect after the challenge; off: a node counts as ready once the challenge "
          "arrives and never authenticates (to measure the edge's cost of a bare socket)");
ABSL_FLAG(int, retries, 3, "attempts after a failed connection before the node counts as failed");
ABSL_FLAG(int64_t, phase_timeout_s, 300, "a ramp or storm gives up after this long");
ABSL_FLAG(int64_t, max_runtime_s, 1800, "the process exits after this long whatever happens");
ABSL_FLAG(std::string, name, "fleet", "prefix of progress lines");
ABSL_FLAG(std::string, commands, "",
          "semicolon-separated commands to run instead of reading stdin, e.g. \"ramp; hold 60\"");

namespace {

using tether::edge::client::ClientLoop;
using tether::edge::client::CloseInfo;
using tether::edge::client::DeviceCredentials;
using tether::edge::client::InvokeReply;
using tether::edge::client::NodeClient;
using tether::edge::client::NodeClientOptions;

constexpr int kCloseReplaced = 4001;  // the edge closes a superseded socket with this

bool IsLoopbackV4(const std::string& host) {
  return absl::StartsWith(host, "127.") && std::count(host.begin(), host.end(), '.') == 3;
}

struct Endpoint {
  std::string host;
  uint16_t port = 0;
};

// What a client reported from a loop thread, handled on the main thread.
struct Event {
  enum class Kind { kReady, kClosed };
  Kind kind;
  int node = 0;
  uint64_t serial = 0;  // which socket of the node
  CloseInfo close;
};

class Fleet {
 public:
  Fleet(std::vector<Endpoint> edges, std::vector<std::string> sources, int nodes, int loops,
        std::string token, int payload_bytes)
      : edges_(std::move(edges)), sources_(std::move(sources)), token_(std::move(token)) {
    payload_ = absl::StrCat(R"({"data":")",
                            std::string(static_cast<size_t>(std::max(0, payload_bytes - 11)), 'x'),
                            R"("})");
    for (int i = 0; i < loops; ++i) loops_.push_back(std::make_unique<ClientLoop>());
    nodes_.resize(static_cast<size_t>(nodes));
    for (Node& n : nodes_) n.creds = std::make_unique<DeviceCredentials>();
  }

  ~Fleet() {
    CloseAll();
    loops_.clear();  // after every client
  }

  std::string Ramp(int window) {
    const absl::Time start = absl::Now();
    std::deque<int> pending;
    for (int i = 0; i < static_cast<int>(nodes_.size()); ++i) {
      if (nodes_[i].current == nullptr) pending.push_back(i);
    }
    const int total = static_cast<int>(pending.size());
    int ready = 0, failed = 0, retries = 0, in_flight = 0;
    const absl::Time deadline = start + absl::Seconds(absl::GetFlag(FLAGS_phase_timeout_s));
    absl::Time next_progress = start + absl::Seconds(1);
    while (ready + failed < total && absl::Now() < deadline) {
      while (in_flight < window && !pending.empty()) {
        Connect(pending.front());
        pending.pop_front();
        ++in_flight;
      }
      for (const Event& e : WaitForEvents(absl::Milliseconds(100))) {
        Node& n = nodes_[e.node];
        if (e.serial != n.current_serial) continue;
        if (e.kind == Event::Kind::kReady) {
          n.ready = true;
          ++ready;
          --in_flight;
        } else if (!n.ready) {
          --in_flight;
          n.current.reset();
          if (++n.attempts <= absl::GetFlag(FLAGS_retries)) {
            ++retries;
            pending.push_back(e.node);
          } else {
            ++failed;
          }
        } else {
          n.ready = false;
          ++dropped_;
        }
      }
      if (absl::Now() >= next_progress) {
        next_progress += absl::Seconds(1);
        Progress(absl::StrFormat("ramp %d/%d ready, %d failed, %d retries, %.0f/s", ready, total,
                                 failed, retries,
                                 ready / absl::ToDoubleSeconds(absl::Now() - start)));
      }
    }
    const double secs = absl::ToDoubleSeconds(absl::Now() - start);
    return absl::StrFormat("ramped ready=%d failed=%d retries=%d elapsed_ms=%.0f rate=%.0f", ready,
                           total - ready, retries, secs * 1000, ready / secs);
  }

  std::string Storm(int64_t spread_ms) {
    const absl::Time start = absl::Now();
    absl::BitGen rng;
    int total = 0;
    for (int i = 0; i < static_cast<int>(nodes_.size()); ++i) {
      Node& n = nodes_[i];
      if (n.current == nullptr || !n.ready) continue;
      n.previous = std::move(n.current);
      n.previous_serial = n.current_serial;
      n.previous_open = true;
      n.attempts = 0;
      ++total;
    }
    // Every new socket is started before any answer is looked at: all at once.
    for (int i = 0; i < static_cast<int>(nodes_.size()); ++i) {
      if (nodes_[i].previous != nullptr) Connect(i);
    }
    int ready = 0, failed = 0, retries = 0, old_open = total;
    int closed_by_us = 0, replaced = 0, other = 0;
    std::map<int, std::pair<int, std::string>> new_socket_failures;  // code -> count, a reason
    absl::Time all_ready = start;
    // (when, node): old sockets to close late, and new sockets to retry.
    using Timed = std::pair<absl::Time, int>;
    std::priority_queue<Timed, std::vector<Timed>, std::greater<Timed>> close_at, retry_at;
    const absl::Time deadline = start + absl::Seconds(absl::GetFlag(FLAGS_phase_timeout_s));
    absl::Time next_progress = start + absl::Seconds(1);
    while ((ready + failed < total || old_open > 0) && absl::Now() < deadline) {
      const absl::Time now = absl::Now();
      while (!close_at.empty() && close_at.top().first <= now) {
        Node& n = nodes_[close_at.top().second];
        close_at.pop();
        if (n.previous_open && n.previous != nullptr) (void)n.previous->Close(1000, "");
      }
      while (!retry_at.empty() && retry_at.top().first <= now) {
        Connect(retry_at.top().second);
        retry_at.pop();
      }
      for (const Event& e : WaitForEvents(absl::Milliseconds(5))) {
        Node& n = nodes_[e.node];
        if (e.serial == n.previous_serial && e.kind == Event::Kind::kClosed) {
          if (!n.previous_open) continue;
          n.previous_open = false;
          --old_open;
          if (e.close.closed_by_client) {
            ++closed_by_us;
          } else if (e.close.code == kCloseReplaced) {
            ++replaced;
          } else {
            ++other;
          }
          continue;
        }
        if (e.serial != n.current_serial) continue;
        if (e.kind == Event::Kind::kReady) {
          n.ready = true;
          ++ready;
          all_ready = absl::Now();
          close_at.push({all_ready + absl::Milliseconds(absl::Uniform<int64_t>(
                                         rng, 0, std::max<int64_t>(1, spread_ms))),
                         e.node});
        } else if (!n.ready) {
          int64_t retry_after_ms = 0;
          if (n.current != nullptr) {
            if (auto error = n.current->connect_error(); error.has_value()) {
              retry_after_ms = error->retry_after_ms.value_or(0);
            }
          }
          n.current.reset();
          // Why new sockets fail, for the report: close code (and the first reason seen).
          auto& why = new_socket_failures[e.close.code];
          if (why.first++ == 0)
            why.second = e.close.reason.empty() ? e.close.error : e.close.reason;
          if (++n.attempts <= absl::GetFlag(FLAGS_retries)) {
            ++retries;
            // As an OpenClaw node reconnects (node-protocol.md section 8): backoff from 1 s,
            // factor 2, cap 30 s, and a retryable error's retryAfterMs honoured.
            const int64_t backoff_ms =
                std::min<int64_t>(30'000, 1000LL << std::min(n.attempts - 1, 5));
            retry_at.push(
                {absl::Now() + absl::Milliseconds(std::max(backoff_ms, retry_after_ms)), e.node});
          } else {
            ++failed;
            if (n.previous_open) close_at.push({absl::Now(), e.node});
          }
        } else {
          n.ready = false;
          ++dropped_;
        }
      }
      if (absl::Now() >= next_progress) {
        next_progress += absl::Seconds(1);
        Progress(
            absl::StrFormat("storm %d/%d new sockets ready, %d failed, %d retries, %d old "
                            "sockets open",
                            ready, total, failed, retries, old_open));
      }
    }
    for (Node& n : nodes_) {
      n.previous.reset();
      n.previous_open = false;
    }
    std::string failures;
    for (const auto& [code, why] : new_socket_failures) {
      absl::StrAppend(&failures, failures.empty() ? "" : ",", code, ":", why.first, "(",
                      why.second.substr(0, 60), ")");
    }
    return absl::StrFormat(
        "stormed nodes=%d ready=%d failed=%d retries=%d all_ready_ms=%.0f old_closed_by_us=%d "
        "old_replaced=%d old_other=%d old_left_open=%d elapsed_ms=%.0f new_socket_closes=%s",
        total, ready, total - ready, retries, absl::ToDoubleMilliseconds(all_ready - start),
        closed_by_us, replaced, other, old_open, absl::ToDoubleMilliseconds(absl::Now() - start),
        failures.empty() ? "none" : failures);
  }

  std::string CloseAll() {
    const absl::Time start = absl::Now();
    int sockets = 0;
    for (Node& n : nodes_) {
      sockets += (n.current != nullptr) + (n.previous != nullptr);
      n.current.reset();
      n.previous.reset();
      n.ready = false;
      n.attempts = 0;
    }
    (void)WaitForEvents(absl::ZeroDuration());
    return absl::StrFormat("closed sockets=%d elapsed_ms=%.0f", sockets,
                           absl::ToDoubleMilliseconds(absl::Now() - start));
  }

  std::string Stats() {
    int ready = 0;
    for (const Node& n : nodes_) ready += n.ready;
    return absl::StrFormat("stats ready=%d invokes=%d dropped=%d", ready, invokes_.load(),
                           dropped_);
  }

  void Progress(const std::string& text) {
    std::fprintf(stderr, "%s: %s\n", absl::GetFlag(FLAGS_name).c_str(), text.c_str());
  }

 private:
  struct Node {
    std::unique_ptr<DeviceCredentials> creds;
    std::unique_ptr<NodeClient> current;
    uint64_t current_serial = 0;
    bool ready = false;  // current has hello-ok and is open
    int attempts = 0;
    std::unique_ptr<NodeClient> previous;  // during a storm: the socket being replaced
    uint64_t previous_serial = 0;
    bool previous_open = false;
  };

  // Starts a new socket for node `i` as its current one.
  void Connect(int i) {
    Node& n = nodes_[i];
    const uint64_t serial = ++next_serial_;
    const Endpoint& edge = edges_[static_cast<size_t>(i) % edges_.size()];
    NodeClientOptions o;
    o.host = edge.host;
    o.port = edge.port;
    o.source_address = sources_[(static_cast<size_t>(i) / edges_.size()) % sources_.size()];
    o.shared_token = token_;
    o.record_frames = false;
    o.connect.display_name = absl::StrCat("fleet-", i);
    if (!absl::GetFlag(FLAGS_handshake)) {
      o.auto_connect = false;
      o.on_challenge = [this, i, serial](const tether::edge::client::Challenge&) {
        Push(Event{Event::Kind::kReady, i, serial, {}});
      };
    }
    o.on_invoke = [this](const tether::edge::protocol::InvokeRequest&) {
      invokes_.fetch_add(1, std::memory_order_relaxed);
      return InvokeReply::Ok(payload_);
    };
    o.on_ready = [this, i, serial] { Push(Event{Event::Kind::kReady, i, serial, {}}); };
    o.on_closed = [this, i, serial](const CloseInfo& info) {
      Push(Event{Event::Kind::kClosed, i, serial, info});
    };
    n.current.reset();
    n.ready = false;
    n.current_serial = serial;
    n.current = std::make_unique<NodeClient>(*loops_[static_cast<size_t>(i) % loops_.size()],
                                             *n.creds, std::move(o));
    n.current->Start();
  }

  void Push(Event e) {
    absl::MutexLock lock(&mu_);
    events_.push_back(std::move(e));
  }

  // Polls every millisecond rather than being woken by each event: thousands of events a second
  // then cost a thousand wake-ups, not one each.
  std::vector<Event> WaitForEvents(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    for (;;) {
      {
        absl::MutexLock lock(&mu_);
        if (!events_.empty()) return std::exchange(events_, {});
      }
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return {};
      absl::SleepFor(std::min(left, absl::Milliseconds(1)));
    }
  }

  const std::vector<Endpoint> edges_;
  const std::vector<std::string> sources_;
  const std::string token_;
  std::string payload_;
  std::vector<std::unique_ptr<ClientLoop>> loops_;
  std::vector<Node> nodes_;
  uint64_t next_serial_ = 0;
  int dropped_ = 0;  // ready sockets that closed without being asked to
  std::atomic<int> invokes_{0};

  absl::Mutex mu_;
  std::vector<Event> events_ ABSL_GUARDED_BY(mu_);
};

absl::StatusOr<std::vector<Endpoint>> ParseEdges(const std::string& text) {
  std::vector<Endpoint> out;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    std::vector<std::string> hp = absl::StrSplit(item, ':');
    int port = 0;
    if (hp.size() != 2 || !absl::SimpleAtoi(hp[1], &port) || port <= 0 || port > 65535 ||
        !IsLoopbackV4(hp[0])) {
      return absl::InvalidArgumentError(
          absl::StrCat("--edges: \"", item, "\" is not a 127.x.x.x:port address"));
    }
    out.push_back({hp[0], static_cast<uint16_t>(port)});
  }
  if (out.empty()) return absl::InvalidArgumentError("--edges is empty");
  return out;
}

// Runs one command; returns false for quit.
bool RunCommand(Fleet& fleet, const std::string& line, int64_t socket_budget, int nodes) {
  std::vector<std::string> words = absl::StrSplit(line, ' ', absl::SkipEmpty());
  if (words.empty()) return true;
  const std::string& verb = words[0];
  int64_t arg = -1;
  if (words.size() > 1 && !absl::SimpleAtoi(words[1], &arg)) arg = -1;
  std::string answer;
  if (verb == "ramp") {
    answer = fleet.Ramp(arg > 0 ? static_cast<int>(arg) : absl::GetFlag(FLAGS_window));
  } else if (verb == "storm") {
    if (!absl::GetFlag(FLAGS_handshake)) {
      answer = "error storm needs --handshake";
    } else if (2 * static_cast<int64_t>(nodes) > socket_budget) {
      answer = absl::StrCat("error storm needs ", 2 * nodes, " sockets, the file limit allows ",
                            socket_budget);
    } else {
      answer = fleet.Storm(arg >= 0 ? arg : 2000);
    }
  } else if (verb == "close") {
    answer = fleet.CloseAll();
  } else if (verb == "stats") {
    answer = fleet.Stats();
  } else if (verb == "hold") {
    absl::SleepFor(absl::Seconds(std::max<int64_t>(0, arg)));
    answer = "held";
  } else if (verb == "quit") {
    answer = fleet.CloseAll();
    std::printf("quit %s\n", answer.c_str());
    std::fflush(stdout);
    return false;
  } else {
    answer = absl::StrCat("error unknown command ", verb);
  }
  std::printf("%s\n", answer.c_str());
  std::fflush(stdout);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Simulated node fleet for Tether benchmarks (see bench/fleet.cc).");
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::ParseCommandLine(argc, argv);

  const int64_t max_runtime_s = absl::GetFlag(FLAGS_max_runtime_s);
  std::thread([max_runtime_s] {
    absl::SleepFor(absl::Seconds(max_runtime_s));
    std::fprintf(stderr, "fleet: --max_runtime_s=%lld reached, exiting\n",
                 static_cast<long long>(max_runtime_s));
    _exit(3);
  }).detach();

  auto edges = ParseEdges(absl::GetFlag(FLAGS_edges));
  if (!edges.ok()) {
    std::fprintf(stderr, "fleet: %s\n", std::string(edges.status().message()).c_str());
    return 2;
  }
  std::vector<std::string> sources =
      absl::StrSplit(absl::GetFlag(FLAGS_source_addresses), ',', absl::SkipEmpty());
  for (const std::string& s : sources) {
    if (!IsLoopbackV4(s)) {
      std::fprintf(stderr, "fleet: --source_addresses: %s is not a 127.x.x.x address\n", s.c_str());
      return 2;
    }
  }
  if (sources.empty()) sources.push_back("");
  const int nodes = absl::GetFlag(FLAGS_nodes);
  const int loops = absl::GetFlag(FLAGS_loops);
  if (nodes <= 0 || nodes > 1'000'000 || loops <= 0 || loops > 64) {
    std::fprintf(stderr, "fleet: --nodes in 1..1000000 and --loops in 1..64 required\n");
    return 2;
  }
  const int64_t file_limit = tether::bench::RaiseFileLimit();
  const int64_t socket_budget = file_limit - 64;
  if (nodes > socket_budget) {
    std::fprintf(stderr, "fleet: %d nodes need more sockets than the file limit %lld allows\n",
                 nodes, static_cast<long long>(file_limit));
    return 2;
  }
  std::string token;
  if (const char* t = std::getenv("TETHER_SHARED_TOKEN"); t != nullptr) token = t;

  const absl::Time keys_start = absl::Now();
  Fleet fleet(*std::move(edges), sources, nodes, loops, token, absl::GetFlag(FLAGS_payload_bytes));
  fleet.Progress(absl::StrFormat("%d identities in %.1f s; file limit %lld", nodes,
                                 absl::ToDoubleSeconds(absl::Now() - keys_start),
                                 static_cast<long long>(file_limit)));
  std::printf("started nodes=%d file_limit=%lld\n", nodes, static_cast<long long>(file_limit));
  std::fflush(stdout);

  if (const std::string script = absl::GetFlag(FLAGS_commands); !script.empty()) {
    for (absl::string_view command : absl::StrSplit(script, ';', absl::SkipEmpty())) {
      if (!RunCommand(fleet, std::string(absl::StripAsciiWhitespace(command)), socket_budget,
                      nodes)) {
        break;
      }
    }
    return 0;
  }
  std::string line;
  while (std::getline(std::cin, line)) {
    if (!RunCommand(fleet, std::string(absl::StripAsciiWhitespace(line)), socket_budget, nodes)) {
      break;
    }
  }
  return 0;
}
