// chaos: the chaos soak. Starts real processes on 127.0.0.1 (redis-server, two registry
// replicas on it (--replicas), three edges behind nginx, the edges reaching each replica through
// a TCP relay in this process), runs a node fleet, an invoke driver and a presence watcher in this
// process, injects faults on a schedule drawn from --seed, then checks the logs of all three
// against the invariants of docs/architecture.md and prints a table. Exit status: 0 no violation, 1
// violations (each printed with the seed and its timeline), 2 the soak could not run.
//
// Phases: setup; ramp (every node connects); warm-up (RSS baselines); chaos (--seconds of
// faults, node churn and invokes); quiesce (invokes drained, no new churn, everything settles
// for lease + grace); checks. See tests/chaos/README.md for what is checked and how.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/child.h"
#include "nlohmann/json.hpp"
#include "proto/tether/v1/registry.grpc.pb.h"
#include "tests/chaos/relay.h"
#include "ws_edge/client/client_loop.h"
#include "ws_edge/client/node_client.h"

ABSL_FLAG(int64_t, seconds, 60, "length of the chaos phase");
ABSL_FLAG(uint64_t, seed, 1, "seed of the fault schedule, the node behaviours and the churn");
ABSL_FLAG(int, nodes, 500,
          "nodes in the fleet (500 by default; see tests/chaos/README.md for 1000)");
ABSL_FLAG(double, invoke_rate, 40, "invokes started per second (fixed rate)");
ABSL_FLAG(double, churn_per_node_s, 25,
          "mean seconds between two churn actions of one node (reconnect, close, go silent)");
ABSL_FLAG(double, fault_gap_s, 4, "mean seconds between the end of a fault and the next one");
ABSL_FLAG(std::string, faults,
          "edge_kill,edge_stop,registry_kill,registry_stop,link_cut,link_stall",
          "fault classes to inject");
ABSL_FLAG(int64_t, lease_ttl_ms, 5000, "the registry's edge lease");
ABSL_FLAG(int, replicas, 2,
          "registry replicas on the one Redis (1..3); the edges list all of them, each starting "
          "from its own, and callers balance over them (gRPC round_robin)");
ABSL_FLAG(int64_t, superseded_grace_ms, 2000, "the registry's grace for superseded sockets");
ABSL_FLAG(std::string, bin_dir, "bazel-bin", "where registry_service and ws_edge are built");
ABSL_FLAG(std::string, work_dir, "",
          "logs of every process (required; tests/chaos/run.sh makes a fresh one)");
ABSL_FLAG(double, rss_factor, 1.5, "end RSS must be <= factor * warm RSS + rss_slack_mb");
ABSL_FLAG(int64_t, rss_slack_mb, 48, "see --rss_factor");
ABSL_FLAG(int, max_timelines, 5, "timelines printed per violation kind");

namespace tether::chaos {
namespace {

using edge::client::ClientLoop;
using edge::client::CloseInfo;
using edge::client::DeviceCredentials;
using edge::client::InvokeReply;
using edge::client::NodeClient;
using edge::client::NodeClientOptions;
using json = nlohmann::json;

constexpr char kAdminToken[] = "chaos-admin-token";
constexpr char kSharedToken[] = "chaos-shared-token";
constexpr int kEdges = 3;

const auto kStart = std::chrono::steady_clock::now();
// Milliseconds since this process started (steady).
int64_t Ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                               kStart)
      .count();
}
void SleepMs(int64_t ms) {
  if (ms > 0) absl::SleepFor(absl::Milliseconds(ms));
}

void Say(const std::string& text) {
  std::fprintf(stderr, "[%7.3f] %s\n", Ms() / 1000.0, text.c_str());
}

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

bool CanConnect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  close(fd);
  return ok;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

int64_t SelfRss() {
  std::ifstream in("/proc/self/statm");
  int64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

// ---------------------------------------------------------------------------------------------
// Journal: every event of the run by subject ("node 17", "invoke 301"), for timelines.

class Journal {
 public:
  void Add(const std::string& subject, std::string text) { AddAt(subject, Ms(), std::move(text)); }
  void AddAt(const std::string& subject, int64_t ms, std::string text) {
    absl::MutexLock lock(&mu_);
    entries_[subject].push_back({ms, std::move(text)});
  }
  void Fault(std::string text) {
    Say("FAULT " + text);
    absl::MutexLock lock(&mu_);
    faults_.push_back({Ms(), std::move(text)});
  }
  std::string Timeline(const std::string& subject) {
    absl::MutexLock lock(&mu_);
    std::string out;
    std::stable_sort(entries_[subject].begin(), entries_[subject].end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    for (const auto& [t, text] : entries_[subject]) {
      absl::StrAppendFormat(&out, "      %9.3f %s: %s\n", t / 1000.0, subject, text);
    }
    return out;
  }
  std::string Faults() {
    absl::MutexLock lock(&mu_);
    std::string out;
    for (const auto& [t, text] : faults_)
      absl::StrAppendFormat(&out, "      %9.3f %s\n", t / 1000.0, text);
    return out;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, std::vector<std::pair<int64_t, std::string>>> entries_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<int64_t, std::string>> faults_ ABSL_GUARDED_BY(mu_);
};

std::string NodeSubject(int node) { return absl::StrCat("node ", node); }
std::string InvokeSubject(int64_t n) { return absl::StrCat("invoke ", n); }

// ---------------------------------------------------------------------------------------------
// Violations, by kind, each with the subjects whose timelines explain it.

struct Violation {
  std::string kind;
  std::string what;
  std::vector<std::string> subjects;
};

// ---------------------------------------------------------------------------------------------
// Processes.

struct Proc {
  std::string name;
  bench::ChildOptions options;
  std::string port_file;  // registry/edges: written once listening
  std::unique_ptr<bench::Child> child;
  int64_t started_ms = 0;
  int restarts = 0;
  int64_t warm_rss = -1;  // sampled once warm (after ramp, or 5 s after a restart)
  int64_t warm_ms = -1;

  absl::Status Start(const std::string& work_dir) {
    options.log_path =
        absl::StrCat(work_dir, "/", name, restarts == 0 ? "" : absl::StrCat(".", restarts), ".log");
    if (!port_file.empty()) std::remove(port_file.c_str());
    auto c = bench::Child::Start(options);
    if (!c.ok()) return c.status();
    child = *std::move(c);
    started_ms = Ms();
    warm_rss = -1;
    warm_ms = -1;
    if (!port_file.empty()) {
      auto p = bench::WaitForPortFile(*child, port_file, absl::Seconds(30));
      if (!p.ok())
        return absl::UnavailableError(
            absl::StrCat(name, ": ", p.status().message(), "\n", child->LogTail()));
    }
    return absl::OkStatus();
  }
  void Kill() {
    if (child == nullptr) return;
    child->Signal(SIGKILL);
    (void)child->Wait(absl::Seconds(10));
  }
};

// ---------------------------------------------------------------------------------------------
// Fleet: nodes with real identities and handshakes through nginx. Each node has a behaviour for
// invokes (fast, slow, never, error) and churns: reconnects with the old socket still open (closed
// late, or left for the edge to close), closes and comes back, goes silent (stops reading).

enum class Behaviour { kFast, kSlow, kNever, kError };
const char* BehaviourName(Behaviour b) {
  switch (b) {
    case Behaviour::kFast:
      return "fast";
    case Behaviour::kSlow:
      return "slow";
    case Behaviour::kNever:
      return "never";
    case Behaviour::kError:
      return "error";
  }
  return "?";
}

struct Sock {
  int node = 0;
  uint64_t serial = 0;
  std::unique_ptr<NodeClient> client;
  std::string conn_id;  // from hello-ok
  int64_t started_ms = 0;
  int64_t ready_ms = -1;
  int64_t closed_ms = -1;  // when this process saw it close (late while paused)
  CloseInfo close;
  int64_t close_at_ms = -1;         // an old socket we close late (-1: left for the edge)
  int64_t close_requested_ms = -1;  // when this process asked to close it
  bool paused = false;
  int64_t resume_at_ms = -1;
  std::vector<std::pair<int64_t, int64_t>> pauses;  // [from, to] it did not read (to -1: still)
};

struct Delivery {
  int64_t ms;
  int node;
  uint64_t serial;
  std::string invoke_id;
  std::string key;
};

class Fleet {
 public:
  Fleet(int nodes, int port, uint64_t seed, Journal& journal)
      : port_(port), rng_(seed), journal_(journal) {
    for (int i = 0; i < 2; ++i) loops_.push_back(std::make_unique<ClientLoop>());
    std::uniform_real_distribution<double> u(0, 1);
    for (int i = 0; i < nodes; ++i) {
      Node n;
      n.creds = std::make_unique<DeviceCredentials>();
      const double r = u(rng_);
      n.behaviour = r < 0.6   ? Behaviour::kFast
                    : r < 0.8 ? Behaviour::kSlow
                    : r < 0.9 ? Behaviour::kNever
                              : Behaviour::kError;
      nodes_.push_back(std::move(n));
    }
  }
  ~Fleet() { Stop(); }

  std::string node_id(int i) const { return nodes_[i].creds->node_id(); }
  Behaviour behaviour(int i) const { return nodes_[i].behaviour; }
  int size() const { return static_cast<int>(nodes_.size()); }

  // Connects every node, at most `window` handshakes in flight; returns how many are ready.
  int Ramp(int window, int64_t timeout_ms) {
    const int64_t deadline = Ms() + timeout_ms;
    int next = 0;
    for (;;) {
      int ready = 0, in_flight = 0;
      {
        absl::MutexLock lock(&mu_);
        Process();
        for (Node& n : nodes_) {
          Sock* s = Current(n);
          if (s == nullptr) continue;
          if (s->ready_ms >= 0 && s->closed_ms < 0) ++ready;
          if (s->ready_ms < 0 && s->closed_ms < 0) ++in_flight;
          if (s->closed_ms >= 0 && n.next_action_ms < 0) n.next_action_ms = Ms() + 200;
          if (s->closed_ms >= 0 && Ms() >= n.next_action_ms && in_flight < window) {
            ConnectLocked(static_cast<int>(&n - nodes_.data()), "ramp retry");
            ++in_flight;
          }
        }
        while (next < size() && in_flight < window) {
          ConnectLocked(next++, "ramp");
          ++in_flight;
        }
      }
      if (ready == size() || Ms() > deadline) return ready;
      SleepMs(20);
    }
  }

  // Runs churn and deferred answers on its own thread until Quiesce()/Stop().
  void StartChurn(double mean_gap_s) {
    churn_gap_s_ = mean_gap_s;
    churning_ = true;
    {
      absl::MutexLock lock(&mu_);
      std::exponential_distribution<double> gap(1.0 / mean_gap_s);
      for (Node& n : nodes_) n.next_action_ms = Ms() + static_cast<int64_t>(1000 * gap(rng_));
    }
    thread_ = std::thread([this] {
      while (!stop_) {
        {
          absl::MutexLock lock(&mu_);
          Process();
          Act();
        }
        SleepMs(5);
      }
    });
  }
  // No new churn: silent sockets resume, closed nodes still reconnect, late closes still happen.
  void Quiesce() { quiesce_ = true; }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    absl::MutexLock lock(&mu_);
    for (auto& [serial, s] : socks_) s.client.reset();
    loops_.clear();
  }

  // True when every node's current socket is ready and no socket is paused or connecting.
  bool Settled() {
    absl::MutexLock lock(&mu_);
    for (Node& n : nodes_) {
      Sock* s = Current(n);
      if (s == nullptr || s->ready_ms < 0 || s->closed_ms >= 0 || s->paused) return false;
    }
    return true;
  }

  // Read access for the checks (the churn thread must be quiesced; it keeps processing).
  template <typename F>
  void Inspect(F f) {
    absl::MutexLock lock(&mu_);
    Process();
    f(socks_, by_conn_);
  }
  std::vector<Delivery> deliveries() {
    absl::MutexLock lock(&ev_mu_);
    return deliveries_;
  }
  int64_t sockets_started() {
    absl::MutexLock lock(&mu_);
    return static_cast<int64_t>(socks_.size());
  }
  std::map<std::string, int64_t> actions() {
    absl::MutexLock lock(&mu_);
    return actions_;
  }

 private:
  struct Node {
    std::unique_ptr<DeviceCredentials> creds;
    Behaviour behaviour = Behaviour::kFast;
    uint64_t current = 0;  // serial of the newest socket
    int64_t next_action_ms = -1;
    int failures = 0;  // consecutive sockets that closed before hello-ok
  };
  struct Event {
    enum class Kind { kReady, kClosed, kAnswer } kind;
    uint64_t serial = 0;
    CloseInfo close;
    edge::protocol::InvokeRequest request;  // kAnswer
    int64_t due_ms = 0;                     // kAnswer
  };

  Sock* Current(Node& n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = socks_.find(n.current);
    return it == socks_.end() ? nullptr : &it->second;
  }

  std::string Payload(int node, uint64_t serial) {
    return json{{"node", node}, {"serial", serial}}.dump();
  }

  void ConnectLocked(int i, const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Node& n = nodes_[i];
    const uint64_t serial = ++next_serial_;
    NodeClientOptions o;
    o.host = "127.0.0.1";
    o.port = static_cast<uint16_t>(port_);
    o.source_address = absl::StrCat("127.0.0.", 2 + i % 4);
    o.shared_token = kSharedToken;
    o.record_frames = false;
    o.connect.display_name = absl::StrCat("chaos-", i);
    const Behaviour b = n.behaviour;
    const uint64_t delay_seed = serial;
    o.on_invoke = [this, i, serial, b, delay_seed](const edge::protocol::InvokeRequest& r) {
      std::string key;
      if (r.params_json) {
        const json p = json::parse(*r.params_json, nullptr, false);
        if (p.is_object() && p.contains("key") && p["key"].is_string()) key = p["key"];
      }
      absl::MutexLock lock(&ev_mu_);
      deliveries_.push_back({Ms(), i, serial, r.id, key});
      switch (b) {
        case Behaviour::kFast:
          return InvokeReply::Ok(Payload(i, serial));
        case Behaviour::kError:
          return InvokeReply::Error("CHAOS_ERROR", "this node always fails");
        case Behaviour::kNever:
          return InvokeReply::Deferred();
        case Behaviour::kSlow: {
          // 200..4000 ms: some answer before the caller's deadline, some after.
          const int64_t delay =
              200 +
              static_cast<int64_t>((delay_seed * 2654435761u + deliveries_.size() * 40503u) % 3800);
          events_.push_back({Event::Kind::kAnswer, serial, {}, r, Ms() + delay});
          return InvokeReply::Deferred();
        }
      }
      return InvokeReply::Deferred();
    };
    o.on_ready = [this, serial] {
      absl::MutexLock lock(&ev_mu_);
      events_.push_back({Event::Kind::kReady, serial, {}, {}, 0});
    };
    o.on_closed = [this, serial](const CloseInfo& info) {
      absl::MutexLock lock(&ev_mu_);
      events_.push_back({Event::Kind::kClosed, serial, info, {}, 0});
    };
    Sock& s = socks_[serial];
    s.node = i;
    s.serial = serial;
    s.started_ms = Ms();
    n.current = serial;
    n.next_action_ms = -1;
    journal_.Add(NodeSubject(i), absl::StrCat("socket #", serial, " opening (", why, ")"));
    s.client = std::make_unique<NodeClient>(*loops_[i % loops_.size()], *n.creds, std::move(o));
    s.client->Start();
    active_.insert(serial);
  }

  // Handles what the loop threads reported.
  void Process() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<Event> events;
    {
      absl::MutexLock lock(&ev_mu_);
      std::vector<Event> keep;
      for (Event& e : events_) {
        if (e.kind == Event::Kind::kAnswer && e.due_ms > Ms()) {
          keep.push_back(std::move(e));
        } else {
          events.push_back(std::move(e));
        }
      }
      events_ = std::move(keep);
    }
    for (Event& e : events) {
      auto it = socks_.find(e.serial);
      if (it == socks_.end()) continue;
      Sock& s = it->second;
      Node& n = nodes_[s.node];
      switch (e.kind) {
        case Event::Kind::kReady:
          s.ready_ms = Ms();
          s.conn_id = s.client->conn_id();
          by_conn_[s.conn_id] = s.serial;
          n.failures = 0;
          journal_.Add(NodeSubject(s.node),
                       absl::StrCat("socket #", s.serial, " ready conn=", s.conn_id));
          // The node's next churn counts from its newest socket being ready.
          if (n.current == s.serial && n.next_action_ms < 0 && churning_ && !quiesce_) {
            std::exponential_distribution<double> gap(1.0 / churn_gap_s_);
            n.next_action_ms = Ms() + static_cast<int64_t>(1000 * gap(rng_));
          }
          break;
        case Event::Kind::kClosed:
          s.closed_ms = Ms();
          s.close = e.close;
          journal_.Add(
              NodeSubject(s.node),
              absl::StrCat("socket #", s.serial, " closed code=", e.close.code, " reason=\"",
                           e.close.reason, "\"", e.close.closed_by_client ? " by us" : "",
                           e.close.error.empty() ? "" : " error=" + e.close.error));
          if (n.current == s.serial) {
            if (s.ready_ms < 0) ++n.failures;
            // Reconnect with a bounded, growing backoff.
            std::uniform_int_distribution<int64_t> d(200, 400 + 400 * std::min(n.failures, 6));
            n.next_action_ms = Ms() + d(rng_);
          }
          break;
        case Event::Kind::kAnswer:
          if (s.client != nullptr && s.closed_ms < 0) {
            (void)s.client->SendInvokeResult(e.request, InvokeReply::Ok(Payload(s.node, s.serial)));
          }
          break;
      }
    }
  }

  // Due churn, late closes and resumes.
  void Act() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int64_t now = Ms();
    std::uniform_real_distribution<double> u(0, 1);
    std::exponential_distribution<double> gap(1.0 / churn_gap_s_);
    for (uint64_t serial : std::vector<uint64_t>(active_.begin(), active_.end())) {
      Sock& s = socks_[serial];
      if (s.paused && (now >= s.resume_at_ms || quiesce_)) {
        s.paused = false;
        s.pauses.back().second = now;
        s.client->ResumeReading();
        journal_.Add(NodeSubject(s.node), absl::StrCat("socket #", serial, " reading again"));
      }
      if (s.close_at_ms >= 0 && now >= s.close_at_ms && s.closed_ms < 0) {
        s.close_at_ms = -1;
        journal_.Add(NodeSubject(s.node),
                     absl::StrCat("socket #", serial, " closing late (old socket)"));
        s.close_requested_ms = now;
        (void)s.client->Close(1000, "");
      }
    }
    for (int i = 0; i < size(); ++i) {
      Node& n = nodes_[i];
      if (n.next_action_ms < 0 || now < n.next_action_ms) continue;
      Sock* cur = Current(n);
      if (cur == nullptr || cur->closed_ms >= 0) {
        ConnectLocked(i, "reconnect after close");
        ++actions_["reconnect after close"];
        continue;
      }
      if (cur->ready_ms < 0) continue;  // a node waits for hello-ok before a new socket
      if (quiesce_) {
        n.next_action_ms = -1;
        continue;
      }
      n.next_action_ms = now + static_cast<int64_t>(1000 * gap(rng_));
      const double r = u(rng_);
      if (r < 0.45) {
        // Reconnect while the old socket stays open: closed late by us, or left to the edge.
        Sock& old = *cur;
        old.close_at_ms = u(rng_) < 0.75 ? now + static_cast<int64_t>(3000 * u(rng_)) : -1;
        journal_.Add(NodeSubject(i),
                     absl::StrCat("socket #", old.serial, " becomes old, ",
                                  old.close_at_ms < 0 ? "left open" : "closing late"));
        ConnectLocked(i, "reconnect with the old socket open");
        // The late close counts from when the new one is ready; approximate by its start.
        ++actions_["reconnect, old open"];
      } else if (r < 0.65) {
        journal_.Add(NodeSubject(i), absl::StrCat("socket #", cur->serial, " closing (churn)"));
        cur->close_requested_ms = now;
        (void)cur->client->Close(1000, "");
        ++actions_["close"];
      } else if (r < 0.85 && !cur->paused) {
        cur->paused = true;
        cur->pauses.push_back({now, -1});
        cur->resume_at_ms = now + 1000 + static_cast<int64_t>(6000 * u(rng_));
        journal_.Add(NodeSubject(i), absl::StrCat("socket #", cur->serial, " silent until ",
                                                  cur->resume_at_ms / 1000.0));
        cur->client->PauseReading();
        ++actions_["silent"];
      }
    }
    // Sockets closed long ago: free the client (its record stays for the checks).
    for (auto it = active_.begin(); it != active_.end();) {
      Sock& s = socks_[*it];
      if (s.closed_ms >= 0 && now - s.closed_ms > 1000) {
        s.client.reset();
        it = active_.erase(it);
      } else {
        ++it;
      }
    }
  }

  const int port_;
  std::mt19937_64 rng_;
  Journal& journal_;
  double churn_gap_s_ = 25;
  std::atomic<bool> stop_{false};
  std::atomic<bool> quiesce_{false};
  std::atomic<bool> churning_{false};
  std::thread thread_;
  std::vector<std::unique_ptr<ClientLoop>> loops_;

  absl::Mutex mu_;
  std::vector<Node> nodes_;
  std::map<uint64_t, Sock> socks_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<std::string, uint64_t> by_conn_ ABSL_GUARDED_BY(mu_);
  std::set<uint64_t> active_ ABSL_GUARDED_BY(mu_);  // sockets that still have a client
  uint64_t next_serial_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int64_t> actions_ ABSL_GUARDED_BY(mu_);

  absl::Mutex ev_mu_ ABSL_ACQUIRED_AFTER(mu_);
  std::vector<Event> events_ ABSL_GUARDED_BY(ev_mu_);
  std::vector<Delivery> deliveries_ ABSL_GUARDED_BY(ev_mu_);
};

// ---------------------------------------------------------------------------------------------
// Invoke driver: a fixed rate of InvokeNode calls to random nodes, random timeouts, idempotency
// keys (some calls repeat a recent call's key and request).

struct InvokeRec {
  int64_t n = 0;
  int node = 0;
  std::string key;
  int64_t repeat_of = -1;
  int64_t timeout_ms = 0;
  int64_t start_ms = 0;
  int64_t end_ms = -1;
  int ends = 0;
  std::string outcome;  // OK, a tether-error-code, or rpc:<gRPC code>
  std::string invoke_id;
  std::string conn_id;
  std::string payload;
};

struct InvokeCall {
  grpc::ClientContext ctx;
  v1::InvokeNodeRequest request;
  v1::InvokeNodeResponse response;
  grpc::Status status;
  std::unique_ptr<grpc::ClientAsyncResponseReader<v1::InvokeNodeResponse>> reader;
  int64_t n = 0;
};

class InvokeDriver {
 public:
  InvokeDriver(std::shared_ptr<grpc::Channel> channel, Fleet& fleet, uint64_t seed,
               Journal& journal)
      : stub_(v1::Registry::NewStub(channel)), fleet_(fleet), rng_(seed), journal_(journal) {
    poller_ = std::thread([this] {
      void* tag = nullptr;
      bool ok = false;
      while (cq_.Next(&tag, &ok)) Done(static_cast<InvokeCall*>(tag));
    });
  }
  ~InvokeDriver() {
    Stop();
    cq_.Shutdown();
    poller_.join();
  }

  void Start(double rate) {
    thread_ = std::thread([this, rate] {
      const int64_t start = Ms();
      std::uniform_real_distribution<double> u(0, 1);
      for (int64_t i = 0; !stop_; ++i) {
        SleepMs(start + static_cast<int64_t>(1000.0 * i / rate) - Ms());
        if (stop_) break;
        Issue(u);
      }
    });
  }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  // Waits until every call ended (bounded); the number still open.
  int64_t Drain(int64_t timeout_ms) {
    const int64_t deadline = Ms() + timeout_ms;
    for (;;) {
      {
        absl::MutexLock lock(&mu_);
        if (in_flight_ == 0 || Ms() > deadline) return in_flight_;
      }
      SleepMs(50);
    }
  }
  std::vector<InvokeRec> records() {
    absl::MutexLock lock(&mu_);
    return recs_;
  }

 private:
  void Issue(std::uniform_real_distribution<double>& u) {
    auto* call = new InvokeCall();
    InvokeRec rec;
    {
      absl::MutexLock lock(&mu_);
      rec.n = static_cast<int64_t>(recs_.size());
      if (recs_.size() > 50 && u(rng_) < 0.15) {
        // Repeat a recent call: same node, key and request.
        const InvokeRec& orig = recs_[recs_.size() - 1 - static_cast<size_t>(u(rng_) * 50)];
        rec.node = orig.node;
        rec.key = orig.key;
        rec.timeout_ms = orig.timeout_ms;
        rec.repeat_of = orig.repeat_of >= 0 ? orig.repeat_of : orig.n;
      } else {
        rec.node = static_cast<int>(u(rng_) * fleet_.size()) % fleet_.size();
        rec.key = absl::StrCat("chaos-", rec.n);
        rec.timeout_ms = 100 + static_cast<int64_t>(u(rng_) * 2900);
      }
      rec.start_ms = Ms();
      recs_.push_back(rec);
      ++in_flight_;
    }
    call->n = rec.n;
    call->request.set_node_id(fleet_.node_id(rec.node));
    call->request.set_command("system.which");
    call->request.set_params_json(json{{"key", rec.key}}.dump());
    call->request.set_timeout_ms(rec.timeout_ms);
    call->request.set_idempotency_key(rec.key);
    // The gRPC deadline is looser than the check (deadline + 1 s), so a late answer is seen as
    // late rather than cut off by the client.
    call->ctx.set_deadline(std::chrono::system_clock::now() +
                           std::chrono::milliseconds(rec.timeout_ms + 3000));
    call->ctx.AddMetadata("authorization", absl::StrCat("Bearer ", kAdminToken));
    journal_.Add(
        InvokeSubject(rec.n),
        absl::StrCat("start node=", rec.node, " key=", rec.key, " timeout_ms=", rec.timeout_ms,
                     rec.repeat_of >= 0 ? absl::StrCat(" repeats invoke ", rec.repeat_of) : ""));
    call->reader = stub_->PrepareAsyncInvokeNode(&call->ctx, call->request, &cq_);
    call->reader->StartCall();
    call->reader->Finish(&call->response, &call->status, call);
  }

  void Done(InvokeCall* call) {
    std::string outcome = "OK";
    if (!call->status.ok()) {
      const auto& md = call->ctx.GetServerTrailingMetadata();
      if (auto it = md.find("tether-error-code"); it != md.end()) {
        outcome.assign(it->second.data(), it->second.size());
      } else {
        outcome = absl::StrCat("rpc:", call->status.error_code());
        static const std::map<int, std::string> kNames = {
            {1, "CANCELLED"},          {2, "UNKNOWN"},   {4, "DEADLINE_EXCEEDED"},
            {8, "RESOURCE_EXHAUSTED"}, {13, "INTERNAL"}, {14, "UNAVAILABLE"}};
        if (auto n = kNames.find(call->status.error_code()); n != kNames.end())
          outcome = "rpc:" + n->second;
      }
    }
    journal_.Add(InvokeSubject(call->n),
                 absl::StrCat("end ", outcome, " invoke_id=", call->response.invoke_id(),
                              " conn=", call->response.conn_id(),
                              call->response.replayed() ? " replayed" : "",
                              call->status.ok() ? "" : " msg=" + call->status.error_message()));
    absl::MutexLock lock(&mu_);
    InvokeRec& r = recs_[static_cast<size_t>(call->n)];
    ++r.ends;
    r.end_ms = Ms();
    r.outcome = outcome;
    r.invoke_id = call->response.invoke_id();
    r.conn_id = call->response.conn_id();
    r.payload = call->response.payload_json();
    --in_flight_;
    delete call;
  }

  std::unique_ptr<v1::Registry::Stub> stub_;
  Fleet& fleet_;
  std::mt19937_64 rng_;
  Journal& journal_;
  grpc::CompletionQueue cq_;
  std::thread poller_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  absl::Mutex mu_;
  std::vector<InvokeRec> recs_ ABSL_GUARDED_BY(mu_);
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
};

// ---------------------------------------------------------------------------------------------
// Presence watcher: WatchPresence from the last revision it saw, again after every interruption
// (a stream error, a registry fault, or Interrupt()). Checks order online.

struct SeenEvent {
  int64_t ms;
  v1::PresenceEvent e;
};

class Watcher {
 public:
  Watcher(std::shared_ptr<grpc::Channel> channel, Journal& journal)
      : stub_(v1::Registry::NewStub(channel)), journal_(journal) {}
  ~Watcher() { Stop(); }

  void Start(uint64_t from) {
    last_ = from;
    thread_ = std::thread([this] { Run(); });
  }
  void Interrupt() {
    absl::MutexLock lock(&mu_);
    if (ctx_ != nullptr) ctx_->TryCancel();
    ++interrupts_;
  }
  void Stop() {
    stop_ = true;
    Interrupt();
    if (thread_.joinable()) thread_.join();
  }
  uint64_t last() {
    absl::MutexLock lock(&mu_);
    return last_;
  }
  std::vector<SeenEvent> events() {
    absl::MutexLock lock(&mu_);
    return events_;
  }
  std::vector<Violation> violations() {
    absl::MutexLock lock(&mu_);
    return violations_;
  }
  int64_t streams() {
    absl::MutexLock lock(&mu_);
    return streams_;
  }

 private:
  void Run() {
    while (!stop_) {
      auto ctx = std::make_unique<grpc::ClientContext>();
      ctx->AddMetadata("authorization", absl::StrCat("Bearer ", kAdminToken));
      uint64_t from;
      {
        absl::MutexLock lock(&mu_);
        ctx_ = ctx.get();
        from = last_;
        ++streams_;
      }
      v1::WatchPresenceRequest req;
      req.set_from_revision(from);
      auto stream = stub_->WatchPresence(ctx.get(), req);
      v1::PresenceEvent e;
      while (stream->Read(&e)) {
        absl::MutexLock lock(&mu_);
        Seen(e);
      }
      const grpc::Status s = stream->Finish();
      {
        absl::MutexLock lock(&mu_);
        ctx_ = nullptr;
        if (s.error_code() == grpc::StatusCode::OUT_OF_RANGE) {
          violations_.push_back(
              {"watch_compacted", absl::StrCat("resume from ", from, ": ", s.error_message()), {}});
        }
      }
      journal_.Add("watcher", absl::StrCat("stream from ", from, " ended: ", s.error_code(), " ",
                                           s.error_message()));
      SleepMs(150);
    }
  }

  void Seen(const v1::PresenceEvent& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    events_.push_back({Ms(), e});
    if (e.revision() != last_ + 1 && last_ != 0) {
      const char* kind = e.revision() <= last_ ? "watch_duplicate_or_reorder" : "watch_gap";
      violations_.push_back(
          {kind,
           absl::StrCat("after revision ", last_, " got ", e.revision(), " (", e.node_id(), ")"),
           {"watcher"}});
    }
    if (e.revision() > last_) last_ = e.revision();
  }

  std::unique_ptr<v1::Registry::Stub> stub_;
  Journal& journal_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  absl::Mutex mu_;
  grpc::ClientContext* ctx_ ABSL_GUARDED_BY(mu_) = nullptr;
  uint64_t last_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t interrupts_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t streams_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<SeenEvent> events_ ABSL_GUARDED_BY(mu_);
  std::vector<Violation> violations_ ABSL_GUARDED_BY(mu_);
};

// ---------------------------------------------------------------------------------------------
// Faults.

struct Fault {
  std::string kind;  // edge_kill, edge_stop, registry_kill, registry_stop, link_cut, link_stall
  int edge = -1;
  int replica = 0;           // registry_* and link_*: which replica (and the relay in front of it)
  int64_t duration_ms = 0;   // down / stopped / cut / stalled
  bool long_outage = false;  // long enough that leases may lapse
  int64_t start_ms = -1;     // when it was applied
  int64_t end_ms = -1;       // when the process was back (restarted, continued) / link restored
};

std::vector<Fault> Schedule(uint64_t seed, const std::vector<std::string>& kinds, int64_t lease_ms,
                            int replicas) {
  std::mt19937_64 rng(seed * 7919 + 17);
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<Fault> out;
  for (int i = 0; i < 1000 && !kinds.empty(); ++i) {
    Fault f;
    f.kind = kinds[static_cast<size_t>(u(rng) * kinds.size()) % kinds.size()];
    f.edge = static_cast<int>(u(rng) * kEdges) % kEdges;
    // No draw of its own, so a seed's schedule is the same whatever the replica count.
    f.replica = f.edge % replicas;
    const bool can_be_long = f.kind != "edge_kill";
    f.long_outage = can_be_long && u(rng) < 0.2;
    // Short outages stay well below the lease (0.3 s .. 0.3 x lease: nothing may lapse, even
    // with a restart, a reconnect and a heartbeat interval on top); long ones exceed it.
    f.duration_ms = f.long_outage ? lease_ms + 500 + static_cast<int64_t>(1500 * u(rng))
                                  : 300 + static_cast<int64_t>((0.3 * lease_ms - 300) * u(rng));
    out.push_back(f);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The soak.

// How late this process's threads wake (the fleet, driver and watcher share it): a sleeping
// thread that oversleeps by L ms means everything here was starved for about L ms. Recorded so
// a late invoke can be told apart from a slow driver.
class LagProbe {
 public:
  LagProbe() {
    thread_ = std::thread([this] {
      while (!stop_) {
        const int64_t before = Ms();
        SleepMs(10);
        const int64_t lag = Ms() - before - 10;
        if (lag > 50) {
          absl::MutexLock lock(&mu_);
          lags_.push_back({before, lag});
        }
      }
    });
  }
  ~LagProbe() {
    stop_ = true;
    thread_.join();
  }
  // The largest lag of a wake-up in [from, to].
  int64_t MaxLag(int64_t from, int64_t to) {
    absl::MutexLock lock(&mu_);
    int64_t m = 0;
    for (const auto& [t, lag] : lags_) {
      if (t + lag >= from && t <= to) m = std::max(m, lag);
    }
    return m;
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<std::pair<int64_t, int64_t>> lags_ ABSL_GUARDED_BY(mu_);
};

class Soak {
 public:
  int Run();

 private:
  absl::Status Setup();
  absl::Status StartEdge(int i);
  void Inject(Fault& f);
  bool RegistryDownDuring(int64_t from, int64_t to) const;
  void SampleWarmRss();
  void Check();
  void Report();
  void Add(std::string kind, std::string what, std::vector<std::string> subjects = {}) {
    violations_.push_back({std::move(kind), std::move(what), std::move(subjects)});
  }
  void KillAll() {
    for (auto* p : AllProcs()) {
      if (p->child != nullptr) p->child->Signal(SIGCONT);
      p->Kill();
    }
  }
  // In the order they are stopped: the edges first, Redis last.
  std::vector<Proc*> AllProcs() {
    std::vector<Proc*> out;
    for (auto& e : edges_) out.push_back(&e);
    out.push_back(&nginx_);
    for (auto& r : registries_) out.push_back(&r);
    out.push_back(&redis_);
    return out;
  }

  const uint64_t seed_ = absl::GetFlag(FLAGS_seed);
  const int64_t lease_ms_ = absl::GetFlag(FLAGS_lease_ttl_ms);
  const int64_t heartbeat_ms_ = std::max<int64_t>(lease_ms_ / 4, 100);
  std::string work_;
  std::string bin_;
  Journal journal_;
  LagProbe lag_;
  const int replicas_ = std::clamp(absl::GetFlag(FLAGS_replicas), 1, 3);
  Proc redis_, nginx_;
  std::vector<Proc> registries_ = std::vector<Proc>(replicas_);
  std::vector<Proc> edges_ = std::vector<Proc>(kEdges);
  int balancer_port_ = 0;
  // One relay in front of each replica: the edges reach replica r through relays_[r].
  std::vector<std::unique_ptr<Relay>> relays_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Registry::Stub> api_;
  std::unique_ptr<Fleet> fleet_;
  std::unique_ptr<InvokeDriver> driver_;
  std::unique_ptr<Watcher> watcher_;
  std::vector<Fault> done_faults_;
  // When a replica was down: [from, to) incl. 1 s of recovery. With several replicas any one
  // counts: a caller's call balanced onto it fails or is late, and so may an invoke routed
  // through an edge it held (until the edge fails over).
  std::vector<std::pair<int64_t, int64_t>> registry_down_;
  std::vector<Violation> violations_;
  std::map<std::string, int64_t> outcomes_;
  int64_t excused_ = 0;  // untyped/late invokes while the registry was down
  int64_t exempt_disconnects_ = 0;
  int64_t self_warm_rss_ = 0;
  int64_t chaos_start_ms_ = 0, chaos_end_ms_ = 0;
  struct RssRow {
    std::string name;
    int64_t warm;
    int64_t end;
  };
  std::vector<RssRow> rss_;
};

absl::Status Soak::StartEdge(int i) {
  Proc& e = edges_[i];
  absl::Status s = e.Start(work_);
  if (!s.ok()) return s;
  // Attached: the edge logs registry_link_up (bounded wait; the link may be faulted).
  const int64_t deadline = Ms() + 15000;
  while (Ms() < deadline) {
    if (ReadFile(e.options.log_path).find("registry_link_up") != std::string::npos)
      return absl::OkStatus();
    SleepMs(50);
  }
  return absl::UnavailableError(
      absl::StrCat(e.name, " did not attach to the registry\n", e.child->LogTail()));
}

// The first executable `name` on PATH, as the shell would run it; `name` itself if none (the
// start then fails with a message naming it).
std::string FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  for (absl::string_view dir :
       absl::StrSplit(path != nullptr ? path : "", ':', absl::SkipEmpty())) {
    std::string candidate = absl::StrCat(dir, "/", name);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return name;
}

absl::Status Soak::Setup() {
  work_ = absl::GetFlag(FLAGS_work_dir);
  if (work_.empty()) return absl::InvalidArgumentError("--work_dir is required");
  bin_ = absl::GetFlag(FLAGS_bin_dir);
  std::system(absl::StrCat("rm -rf '", work_, "' && mkdir -p '", work_, "/nginx'").c_str());
  std::ofstream(work_ + "/api-tokens") << kAdminToken << " admin chaos\n";
  std::ofstream(work_ + "/edge-secret") << "chaos-edge-secret\n";

  const int redis_port = FreePort();
  redis_.name = "redis";
  redis_.options.binary = FindOnPath("redis-server");
  redis_.options.args = {"--port",       std::to_string(redis_port),
                         "--bind",       "127.0.0.1",
                         "--save",       "",
                         "--appendonly", "no",
                         "--dir",        work_};
  if (absl::Status s = redis_.Start(work_); !s.ok()) return s;
  for (int i = 0; i < 200 && !CanConnect(redis_port); ++i) SleepMs(50);
  if (!CanConnect(redis_port))
    return absl::UnavailableError("redis-server did not start: " + redis_.child->LogTail());

  std::vector<std::string> api_addresses, relay_addresses;
  for (int r = 0; r < replicas_; ++r) {
    Proc& reg = registries_[r];
    const int port = FreePort();
    reg.name = replicas_ == 1 ? "registry" : absl::StrCat("registry", r);
    reg.port_file = absl::StrCat(work_, "/", reg.name, ".port");
    reg.options.binary = bin_ + "/registry_service/server/registry_service";
    reg.options.args = {
        absl::StrCat("--listen=127.0.0.1:", port),
        absl::StrCat("--store=redis://127.0.0.1:", redis_port),
        absl::StrCat("--lease_ttl_ms=", lease_ms_),
        absl::StrCat("--superseded_grace_ms=", absl::GetFlag(FLAGS_superseded_grace_ms)),
        "--auto_approve",
        // A fresh Redis has no table: without this the registry would first sit in its
        // recovery phase (not what this soak is about); restarts reuse the same Redis and its
        // table, so they never recover.
        "--recovery_grace_ms=0", "--tick_ms=50", "--presence_history=2000000",
        "--api_tokens_file=" + work_ + "/api-tokens",
        "--edge_secret_file=" + work_ + "/edge-secret", "--port_file=" + reg.port_file};
    if (absl::Status s = reg.Start(work_); !s.ok()) return s;
    auto relay = Relay::Start(port);
    if (!relay.ok()) return relay.status();
    relays_.push_back(*std::move(relay));
    api_addresses.push_back(absl::StrCat("127.0.0.1:", port));
    relay_addresses.push_back(absl::StrCat("127.0.0.1:", relays_.back()->port()));
  }

  std::vector<std::string> edge_ports;
  for (int i = 0; i < kEdges; ++i) {
    Proc& e = edges_[i];
    const int port = FreePort();
    edge_ports.push_back(std::to_string(port));
    e.name = absl::StrCat("edge", i);
    e.port_file = absl::StrCat(work_, "/edge", i, ".port");
    e.options.binary = bin_ + "/ws_edge/ws_edge";
    e.options.env = {absl::StrCat("TETHER_SHARED_TOKEN=", kSharedToken)};
    // Edge i lists the replicas starting from replica i: edges spread over them and fail over.
    std::vector<std::string> mine;
    for (int r = 0; r < replicas_; ++r) mine.push_back(relay_addresses[(i + r) % replicas_]);
    e.options.args = {absl::StrCat("--listen=127.0.0.1:", port),
                      "--registry=" + absl::StrJoin(mine, ","),
                      absl::StrCat("--edge_id=edge", i),
                      "--edge_secret_file=" + work_ + "/edge-secret",
                      "--handshake_rate_per_ip=0",
                      "--handshake_timeout_ms=5000",
                      "--ping_interval_ms=2000",
                      "--pong_timeout_ms=3000",
                      "--port_file=" + e.port_file};
    if (absl::Status s = StartEdge(i); !s.ok()) return s;
  }

  balancer_port_ = FreePort();
  const std::string conf = work_ + "/nginx/nginx.conf";
  const std::string render = absl::StrCat("deploy/nginx/render.sh --foreground --out '", conf, "' ",
                                          balancer_port_, " ", absl::StrJoin(edge_ports, " "));
  if (std::system(render.c_str()) != 0) return absl::UnavailableError("failed: " + render);
  if (geteuid() == 0) {
    const std::string text = ReadFile(conf);
    std::ofstream(conf) << "user root;\n" << text;
  }
  nginx_.name = "nginx";
  nginx_.options.binary = FindOnPath("nginx");
  nginx_.options.args = {"-p", work_ + "/nginx", "-c", conf, "-e", "stderr"};
  if (absl::Status s = nginx_.Start(work_); !s.ok()) return s;
  for (int i = 0; i < 200 && !CanConnect(balancer_port_); ++i) SleepMs(50);
  if (!CanConnect(balancer_port_))
    return absl::UnavailableError("nginx did not start: " + nginx_.child->LogTail());

  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  // Callers balance over every replica; a dead one is skipped once its connection fails.
  args.SetLoadBalancingPolicyName("round_robin");
  channel_ = grpc::CreateCustomChannel("ipv4:" + absl::StrJoin(api_addresses, ","),
                                       grpc::InsecureChannelCredentials(), args);
  api_ = v1::Registry::NewStub(channel_);
  return absl::OkStatus();
}

bool Soak::RegistryDownDuring(int64_t from, int64_t to) const {
  for (const auto& [a, b] : registry_down_) {
    if (from < b && to >= a) return true;
  }
  return false;
}

void Soak::Inject(Fault& f) {
  f.start_ms = Ms();
  const bool on_edge = f.kind.rfind("edge", 0) == 0;
  const std::string what =
      absl::StrCat(f.kind, on_edge ? absl::StrCat(" edge", f.edge) : "",
                   !on_edge && replicas_ > 1 ? absl::StrCat(" replica ", f.replica) : "", " for ",
                   f.duration_ms, " ms", f.long_outage ? " (long: leases may lapse)" : "");
  journal_.Fault("begin " + what);
  if (f.kind == "edge_kill") {
    Proc& e = edges_[f.edge];
    e.Kill();
    SleepMs(f.duration_ms);
    ++e.restarts;
    if (absl::Status s = StartEdge(f.edge); !s.ok())
      Add("setup", absl::StrCat("edge restart failed: ", s.message()));
  } else if (f.kind == "edge_stop") {
    edges_[f.edge].child->Signal(SIGSTOP);
    SleepMs(f.duration_ms);
    edges_[f.edge].child->Signal(SIGCONT);
  } else if (f.kind == "registry_kill") {
    Proc& registry = registries_[f.replica];
    registry.Kill();
    SleepMs(f.duration_ms);
    ++registry.restarts;
    if (absl::Status s = registry.Start(work_); !s.ok())
      Add("setup", absl::StrCat("registry restart failed: ", s.message()));
    watcher_->Interrupt();  // its stream died with the process; resume at once
  } else if (f.kind == "registry_stop") {
    registries_[f.replica].child->Signal(SIGSTOP);
    SleepMs(f.duration_ms);
    registries_[f.replica].child->Signal(SIGCONT);
  } else if (f.kind == "link_cut") {
    relays_[f.replica]->Cut(f.duration_ms);
    SleepMs(f.duration_ms);
  } else if (f.kind == "link_stall") {
    relays_[f.replica]->Stall(f.duration_ms);
    SleepMs(f.duration_ms);
  }
  f.end_ms = Ms();
  if (f.kind == "registry_kill" || f.kind == "registry_stop")
    registry_down_.push_back({f.start_ms, f.end_ms + 1000});
  journal_.Fault(absl::StrCat("end   ", what, " (took ", f.end_ms - f.start_ms, " ms)"));
  done_faults_.push_back(f);
}

void Soak::SampleWarmRss() {
  for (Proc* p : AllProcs()) {
    if (p->child != nullptr && p->warm_rss < 0 && Ms() - p->started_ms >= 5000) {
      p->warm_rss = p->child->RssBytes();
      p->warm_ms = Ms();
    }
  }
}

int Soak::Run() {
  signal(SIGPIPE, SIG_IGN);
  if (absl::Status s = Setup(); !s.ok()) {
    Say(absl::StrCat("setup failed: ", s.message()));
    KillAll();
    return 2;
  }
  Say(absl::StrCat("processes up; logs in ", work_, "; seed ", seed_));

  // The watcher starts before any node: it must see every revision from here on.
  v1::GetPresenceResponse presence;
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", absl::StrCat("Bearer ", kAdminToken));
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (grpc::Status s = api_->GetPresence(&ctx, {}, &presence); !s.ok()) {
      Say("GetPresence failed: " + s.error_message());
      KillAll();
      return 2;
    }
  }
  watcher_ = std::make_unique<Watcher>(channel_, journal_);
  watcher_->Start(presence.revision());

  const int nodes = absl::GetFlag(FLAGS_nodes);
  Say(absl::StrCat("creating ", nodes, " node identities"));
  fleet_ = std::make_unique<Fleet>(nodes, balancer_port_, seed_, journal_);
  const int ready = fleet_->Ramp(200, 120000);
  Say(absl::StrCat("ramp: ", ready, "/", nodes, " nodes ready"));
  if (ready < nodes * 95 / 100) {
    Say("fewer than 95 % of the nodes connected; giving up");
    fleet_->Stop();
    watcher_->Stop();
    KillAll();
    return 2;
  }
  // Warm-up: RSS baselines of every process (and of this one) once the fleet is up.
  SleepMs(2000);
  for (Proc* p : AllProcs()) {
    p->warm_rss = p->child->RssBytes();
    p->warm_ms = Ms();
  }
  self_warm_rss_ = SelfRss();

  fleet_->StartChurn(absl::GetFlag(FLAGS_churn_per_node_s));
  driver_ = std::make_unique<InvokeDriver>(channel_, *fleet_, seed_ + 1, journal_);
  driver_->Start(absl::GetFlag(FLAGS_invoke_rate));

  std::vector<std::string> kinds =
      absl::StrSplit(absl::GetFlag(FLAGS_faults), ',', absl::SkipEmpty());
  std::vector<Fault> schedule = Schedule(seed_, kinds, lease_ms_, replicas_);
  std::mt19937_64 rng(seed_ + 2);
  std::exponential_distribution<double> gap(1.0 / absl::GetFlag(FLAGS_fault_gap_s));
  chaos_start_ms_ = Ms();
  chaos_end_ms_ = chaos_start_ms_ + 1000 * absl::GetFlag(FLAGS_seconds);
  int64_t next_fault = chaos_start_ms_ + 2000;
  int64_t next_interrupt = chaos_start_ms_ + 3000;
  size_t fi = 0;
  while (Ms() < chaos_end_ms_) {
    SampleWarmRss();
    if (Ms() >= next_interrupt) {
      journal_.Add("watcher", "interrupted by the soak");
      watcher_->Interrupt();
      next_interrupt =
          Ms() + 2000 +
          static_cast<int64_t>(4000 * std::uniform_real_distribution<double>(0, 1)(rng));
    }
    if (Ms() >= next_fault && fi < schedule.size()) {
      Fault& f = schedule[fi++];
      if (Ms() + f.duration_ms + 3000 < chaos_end_ms_) Inject(f);
      next_fault = Ms() + 500 + static_cast<int64_t>(1000 * gap(rng));
    }
    SleepMs(50);
  }
  Say("chaos over; draining invokes and letting everything settle");
  driver_->Stop();
  const int64_t open_calls = driver_->Drain(3000 + 3000 + 2000);
  if (open_calls > 0)
    Add("invoke_never_ended",
        absl::StrCat(open_calls, " calls still open 8 s after the last start"));
  fleet_->Quiesce();
  // Settle: superseded grace, lease + heartbeat (an edge's expiry), reconnect backoff; then wait
  // (bounded) for every node to be ready again.
  const int64_t settle_until =
      Ms() + absl::GetFlag(FLAGS_superseded_grace_ms) + lease_ms_ + heartbeat_ms_ + 3000;
  while (Ms() < settle_until) {
    SampleWarmRss();
    SleepMs(100);
  }
  for (int i = 0; i < 200 && !fleet_->Settled(); ++i) SleepMs(100);
  if (!fleet_->Settled()) Say("warning: not every node is ready again after settling");

  Check();
  Report();

  driver_.reset();
  watcher_->Stop();
  fleet_->Stop();
  KillAll();
  relays_.clear();
  return violations_.empty() ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------
// Checks.

void Soak::Check() {
  const std::vector<InvokeRec> invokes = driver_->records();
  const std::vector<Delivery> deliveries = fleet_->deliveries();

  // 1. Invokes: each ended exactly once, typed, by its deadline + 1 s; OK answers come from the
  // invoked node on the connection named; no invoke id reaches a node twice and no key runs
  // twice at a node.
  std::map<std::string, int> deliveries_by_id;
  for (const Delivery& d : deliveries) ++deliveries_by_id[d.invoke_id];
  std::map<std::string, std::vector<int64_t>> invokes_by_key;
  for (const InvokeRec& r : invokes) invokes_by_key[r.key].push_back(r.n);
  for (const InvokeRec& r : invokes) {
    const std::vector<std::string> subjects = {InvokeSubject(r.n), NodeSubject(r.node)};
    ++outcomes_[r.ends == 0 ? "(never ended)" : r.outcome];
    if (r.ends != 1) {
      Add(r.ends == 0 ? "invoke_never_ended" : "invoke_ended_twice",
          absl::StrCat("invoke ", r.n, " ended ", r.ends, " times"), subjects);
      continue;
    }
    const int64_t took = r.end_ms - r.start_ms;
    const bool untyped = absl::StartsWith(r.outcome, "rpc:");
    const bool late = took > r.timeout_ms + 1000;
    if ((untyped || late) && RegistryDownDuring(r.start_ms, r.end_ms)) {
      ++excused_;
      continue;
    }
    if (untyped)
      Add("invoke_untyped",
          absl::StrCat("invoke ", r.n, " ended ", r.outcome, " with the registry up"), subjects);
    if (late)
      Add("invoke_late",
          absl::StrCat("invoke ", r.n, " took ", took, " ms, timeout ", r.timeout_ms,
                       " ms (this process's worst wake-up lag meanwhile: ",
                       lag_.MaxLag(r.start_ms, r.end_ms), " ms)"),
          subjects);
    if (r.outcome == "OK") {
      const json p = json::parse(r.payload, nullptr, false);
      bool right = p.is_object() && p.value("node", -1) == r.node;
      fleet_->Inspect([&](const std::map<uint64_t, Sock>& socks,
                          const std::unordered_map<std::string, uint64_t>&) {
        auto it = p.is_object() ? socks.find(p.value("serial", uint64_t{0})) : socks.end();
        right = right && it != socks.end() && it->second.conn_id == r.conn_id;
      });
      if (!right)
        Add("invoke_wrong_answer",
            absl::StrCat("invoke ", r.n, " OK with payload ", r.payload, " conn ", r.conn_id),
            subjects);
    }
  }
  for (const auto& [id, count] : deliveries_by_id) {
    if (count > 1)
      Add("invoke_delivered_twice",
          absl::StrCat("invoke id ", id, " reached a node ", count, " times"));
  }
  // A key may reach a node again only after an earlier call with it ended with an outcome the
  // registry does not replay (TIMEOUT, DISCONNECTED, CANCELLED, NOT_CONNECTED, a transport
  // error): a repeat while the first is in flight joins it, a repeat after a result or
  // NODE_ERROR replays it.
  std::map<std::string, std::vector<const Delivery*>> deliveries_by_key;
  for (const Delivery& d : deliveries) deliveries_by_key[d.key].push_back(&d);
  for (const auto& [key, ds] : deliveries_by_key) {
    for (size_t j = 1; j < ds.size(); ++j) {
      if (ds[j]->invoke_id == ds[0]->invoke_id) continue;
      bool rerun_allowed = false;
      for (int64_t n : invokes_by_key[key]) {
        const InvokeRec& r = invokes[static_cast<size_t>(n)];
        if (r.ends > 0 && r.end_ms <= ds[j]->ms && r.outcome != "OK" && r.outcome != "NODE_ERROR")
          rerun_allowed = true;
      }
      if (rerun_allowed) continue;
      std::vector<std::string> subjects;
      for (int64_t n : invokes_by_key[key]) subjects.push_back(InvokeSubject(n));
      subjects.push_back(NodeSubject(ds[j]->node));
      Add("idempotency_key_ran_twice",
          absl::StrCat("key ", key, " reached a node as ", ds[0]->invoke_id, " and again as ",
                       ds[j]->invoke_id, " at ", ds[j]->ms / 1000.0,
                       " s with no earlier call of it ended un-replayable"),
          subjects);
      break;
    }
  }

  // 2. Watcher: every revision once, in order, after every resume (checked as events came), and
  // it caught up with the registry's revision at the end.
  for (const Violation& v : watcher_->violations()) violations_.push_back(v);
  uint64_t final_revision = 0;
  std::vector<v1::Node> listed;
  for (int attempt = 0; attempt < 5; ++attempt) {
    listed.clear();
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", absl::StrCat("Bearer ", kAdminToken));
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::GetPresenceResponse resp;
    if (grpc::Status s = api_->GetPresence(&ctx, {}, &resp); !s.ok()) {
      Say("GetPresence: " + s.error_message());
      SleepMs(1000);
      continue;
    }
    final_revision = resp.revision();
    listed.assign(resp.nodes().begin(), resp.nodes().end());
    for (int i = 0; i < 50 && watcher_->last() < final_revision; ++i) SleepMs(100);
    // 3. No ghost: every node listed connected has a live socket with that connection id (in
    // this process, the fleet). And the reverse (invariant 6): a node whose newest socket is
    // ready and open is listed with that connection. Repeated while it changes, since a close in
    // flight makes a passing difference.
    std::map<std::string, int> index;
    for (int i = 0; i < fleet_->size(); ++i) index[fleet_->node_id(i)] = i;
    std::vector<Violation> found;
    fleet_->Inspect([&](const std::map<uint64_t, Sock>& socks,
                        const std::unordered_map<std::string, uint64_t>& by_conn) {
      std::map<std::string, std::string> listed_conn;
      for (const v1::Node& n : listed) {
        listed_conn[n.node_id()] = n.conn_id();
        auto it = by_conn.find(n.conn_id());
        const Sock* s = it == by_conn.end() ? nullptr : &socks.at(it->second);
        if (s == nullptr || s->closed_ms >= 0) {
          const int node = index.count(n.node_id()) ? index[n.node_id()] : -1;
          found.push_back(
              {"ghost",
               absl::StrCat("node ", node, " listed connected on ", n.edge_id(), " conn ",
                            n.conn_id(),
                            s == nullptr ? " (no such socket)" : " but that socket closed"),
               {NodeSubject(node)}});
        }
      }
      std::map<int, const Sock*> newest;
      for (const auto& [serial, s] : socks) newest[s.node] = &s;
      for (const auto& [node, s] : newest) {
        if (s->ready_ms < 0 || s->closed_ms >= 0) continue;
        auto it = listed_conn.find(fleet_->node_id(node));
        if (it == listed_conn.end() || it->second != s->conn_id) {
          found.push_back({"ready_socket_not_listed",
                           absl::StrCat("node ", node, " socket #", s->serial, " conn ", s->conn_id,
                                        " is ready and open but the registry lists ",
                                        it == listed_conn.end() ? "no connection" : it->second),
                           {NodeSubject(node)}});
        }
      }
    });
    if (found.empty() || attempt == 4) {
      for (Violation& v : found) violations_.push_back(std::move(v));
      break;
    }
    SleepMs(1000);
  }
  if (watcher_->last() < final_revision) {
    Add("watch_behind",
        absl::StrCat("watcher at revision ", watcher_->last(), ", registry at ", final_revision),
        {"watcher"});
  }

  // 4. The watcher's view replayed must equal the registry's list.
  const std::vector<SeenEvent> seen = watcher_->events();
  {
    std::map<std::string, int> index;
    for (int i = 0; i < fleet_->size(); ++i) index[fleet_->node_id(i)] = i;
    for (const SeenEvent& s : seen) {
      auto it = index.find(s.e.node_id());
      if (it == index.end()) continue;
      journal_.AddAt(NodeSubject(it->second), s.ms,
                     absl::StrCat("watcher: revision ", s.e.revision(), " ",
                                  v1::PresenceEvent::Kind_Name(s.e.kind()), " conn=", s.e.conn_id(),
                                  " edge=", s.e.edge_id(), " generation=", s.e.generation(),
                                  s.e.reason().empty() ? "" : " reason=" + s.e.reason()));
    }
  }
  {
    std::map<std::string, std::string> state;  // node id -> conn id
    for (const SeenEvent& s : seen) {
      if (s.e.kind() == v1::PresenceEvent::DISCONNECTED) {
        state.erase(s.e.node_id());
      } else {
        state[s.e.node_id()] = s.e.conn_id();
      }
    }
    std::map<std::string, std::string> listed_state;
    for (const v1::Node& n : listed) listed_state[n.node_id()] = n.conn_id();
    if (state != listed_state) {
      int diff = 0;
      for (const auto& [node, conn] : listed_state)
        diff += state.count(node) == 0 || state[node] != conn;
      for (const auto& [node, conn] : state) diff += listed_state.count(node) == 0;
      Add("watch_state_mismatch",
          absl::StrCat(diff, " nodes differ between the watcher's replay and GetPresence"),
          {"watcher"});
    }
  }

  // 5. No false disconnect: a DISCONNECTED (seen by the watcher at t) for a connection whose
  // socket stayed open throughout: ready before t, not closed by t + 2 s (this process sees a
  // close on loopback at once) unless the edge closed it carrying out that very decision (code
  // 1012 with the same reason), and reading all along (a silent socket may have been dropped by
  // the edge's ping timeout, a close this process sees only when it reads again).
  // Exempt: reason edge_lost seen within [start, end + heartbeat + 2 s] of a long outage (an edge
  // stopped, the link cut or stalled, the registry stopped or killed, for longer than the lease,
  // so the lease lapsed by design); for an edge stop only that edge's connections.
  fleet_->Inspect([&](const std::map<uint64_t, Sock>& socks,
                      const std::unordered_map<std::string, uint64_t>& by_conn) {
    for (const SeenEvent& s : seen) {
      if (s.e.kind() != v1::PresenceEvent::DISCONNECTED) continue;
      auto it = by_conn.find(s.e.conn_id());
      if (it == by_conn.end()) continue;  // a socket that never saw hello-ok: it did not stay open
      const Sock& sock = socks.at(it->second);
      const bool closed_for_it = !sock.close.closed_by_client && sock.close.code == 1012 &&
                                 sock.close.reason == s.e.reason();
      const bool open_after = sock.closed_ms < 0 || sock.closed_ms > s.ms + 2000;
      bool reading = true;
      for (const auto& [from, to] : sock.pauses) {
        if (from <= s.ms + 2000 && (to < 0 || to >= s.ms - 8000)) reading = false;
      }
      // The node asked to close it (its close completes when the edge answers): not open.
      const bool closing = sock.close_requested_ms >= 0 && sock.close_requested_ms <= s.ms;
      if (sock.ready_ms < 0 || sock.ready_ms > s.ms || !(open_after || closed_for_it) || !reading ||
          closing)
        continue;
      bool exempt = false;
      for (const Fault& f : done_faults_) {
        if (!f.long_outage || s.e.reason() != "edge_lost") continue;
        if (f.kind == "edge_stop" && s.e.edge_id() != absl::StrCat("edge", f.edge)) continue;
        if (s.ms >= f.start_ms && s.ms <= f.end_ms + heartbeat_ms_ + 2000) exempt = true;
      }
      if (exempt) {
        ++exempt_disconnects_;
        continue;
      }
      Add("false_disconnect",
          absl::StrCat("node ", sock.node, " conn ", s.e.conn_id(), " DISCONNECTED (", s.e.reason(),
                       ", revision ", s.e.revision(), ") seen at ", s.ms / 1000.0,
                       " s but its socket ",
                       sock.closed_ms < 0 ? "is still open"
                       : closed_for_it    ? "was open until the edge closed it for that"
                                          : "stayed open"),
          {NodeSubject(sock.node)});
    }
  });

  // 6. A killed edge's connections go offline within lease + heartbeat (+ 2 s of slack, + any
  // registry outage in between): every connection the watcher had on that edge at the kill
  // gets a later DISCONNECTED or REPLACED.
  for (const Fault& f : done_faults_) {
    if (f.kind != "edge_kill") continue;
    const std::string edge_id = absl::StrCat("edge", f.edge);
    std::map<std::string, std::string> owner_edge;  // node id -> edge of the owner, at the kill
    size_t i = 0;
    for (; i < seen.size() && seen[i].ms <= f.start_ms; ++i) {
      if (seen[i].e.kind() == v1::PresenceEvent::DISCONNECTED) {
        owner_edge.erase(seen[i].e.node_id());
      } else {
        owner_edge[seen[i].e.node_id()] = seen[i].e.edge_id();
      }
    }
    int64_t allowed = f.start_ms + lease_ms_ + heartbeat_ms_ + 2000;
    for (const auto& [a, b] : registry_down_) {
      if (a < allowed && b > f.start_ms) allowed += b - a;
    }
    std::map<std::string, int64_t> gone;  // node id -> when the watcher saw it leave that owner
    for (; i < seen.size(); ++i) {
      if (owner_edge.count(seen[i].e.node_id()) && !gone.count(seen[i].e.node_id()))
        gone[seen[i].e.node_id()] = seen[i].ms;
    }
    for (const auto& [node_id, e] : owner_edge) {
      if (e != edge_id) continue;
      auto g = gone.find(node_id);
      if (g == gone.end() || g->second > allowed) {
        Add("killed_edge_slow_offline",
            absl::StrCat("node ", node_id, " owned on killed ", edge_id, " (kill at ",
                         f.start_ms / 1000.0, " s) ",
                         g == gone.end() ? "never left"
                                         : absl::StrCat("left at ", g->second / 1000.0, " s")),
            {"watcher"});
      }
    }
  }

  // 7. RSS at the end within rss_factor * warm + rss_slack of its warm value.
  const double factor = absl::GetFlag(FLAGS_rss_factor);
  const int64_t slack = absl::GetFlag(FLAGS_rss_slack_mb) << 20;
  auto rss_check = [&](const std::string& name, int64_t warm, int64_t now) {
    rss_.push_back({name, warm, now});
    if (warm > 0 && now > static_cast<int64_t>(factor * warm) + slack) {
      Add("rss_growth", absl::StrFormat("%s: %.1f MiB warm, %.1f MiB at the end", name,
                                        warm / 1048576.0, now / 1048576.0));
    }
  };
  for (Proc* p : AllProcs())
    rss_check(p->name, p->warm_rss, p->child != nullptr ? p->child->RssBytes() : 0);
  // This process keeps every record of the run for the checks (sockets, invokes, deliveries,
  // presence events, timelines), so it grows with the run's length by design: reported, not
  // bounded.
  rss_.push_back({"chaos driver (not bounded: keeps every record)", self_warm_rss_, SelfRss()});
}

void Soak::Report() {
  std::map<std::string, int> faults;
  for (const Fault& f : done_faults_) ++faults[f.kind + (f.long_outage ? " (long)" : "")];
  std::map<std::string, int> kinds;
  for (const Violation& v : violations_) ++kinds[v.kind];
  int64_t invokes = 0;
  for (const auto& [o, c] : outcomes_) invokes += c;

  std::string out;
  absl::StrAppendFormat(
      &out,
      "\n### Chaos soak: seed %d, %d s of chaos, %d nodes, %.0f invokes/s, lease %d ms, %d "
      "registry replica(s)\n\n",
      seed_, absl::GetFlag(FLAGS_seconds), fleet_->size(), absl::GetFlag(FLAGS_invoke_rate),
      lease_ms_, replicas_);
  absl::StrAppend(&out, "| faults injected | count |\n|---|---|\n");
  for (const auto& [k, c] : faults) absl::StrAppend(&out, "| ", k, " | ", c, " |\n");
  absl::StrAppend(&out, "| watcher streams (resumes + 1) | ", watcher_->streams(), " |\n");
  absl::StrAppend(&out, "\n| node churn | count |\n|---|---|\n");
  for (const auto& [k, c] : fleet_->actions()) absl::StrAppend(&out, "| ", k, " | ", c, " |\n");
  absl::StrAppend(&out, "| sockets opened | ", fleet_->sockets_started(), " |\n");
  absl::StrAppend(&out, "\n| invokes by outcome | count |\n|---|---|\n");
  for (const auto& [k, c] : outcomes_) absl::StrAppend(&out, "| ", k, " | ", c, " |\n");
  absl::StrAppend(&out, "| total | ", invokes, " |\n");
  absl::StrAppend(&out, "| of which untyped/late excused (registry down during the call) | ",
                  excused_, " |\n");
  absl::StrAppend(&out, "\n| violations by kind | count |\n|---|---|\n");
  for (const auto& [k, c] : kinds) absl::StrAppend(&out, "| ", k, " | ", c, " |\n");
  if (kinds.empty()) absl::StrAppend(&out, "| (none) | 0 |\n");
  absl::StrAppend(&out, "| (exempt DISCONNECTED edge_lost after a long outage) | ",
                  exempt_disconnects_, " |\n");
  absl::StrAppend(&out, "\n| RSS (MiB) | warm | end |\n|---|---|---|\n");
  for (const auto& r : rss_)
    absl::StrAppendFormat(&out, "| %s | %.1f | %.1f |\n", r.name, r.warm / 1048576.0,
                          r.end / 1048576.0);
  absl::StrAppendFormat(&out,
                        "\nRSS bound: end <= %.2f x warm + %d MiB (warm: 2 s after the ramp, or 5 "
                        "s after a restart).\n",
                        absl::GetFlag(FLAGS_rss_factor), absl::GetFlag(FLAGS_rss_slack_mb));
  absl::StrAppend(&out, violations_.empty() ? "Result: PASS\n" : "Result: FAIL\n");
  std::printf("%s", out.c_str());
  std::fflush(stdout);

  if (violations_.empty()) return;
  std::fprintf(
      stderr, "\nVIOLATIONS (seed %llu; replay: tests/chaos/run.sh --seconds %lld --seed %llu)\n",
      static_cast<unsigned long long>(seed_), static_cast<long long>(absl::GetFlag(FLAGS_seconds)),
      static_cast<unsigned long long>(seed_));
  std::fprintf(stderr, "  faults:\n%s", journal_.Faults().c_str());
  std::map<std::string, int> printed;
  for (const Violation& v : violations_) {
    if (++printed[v.kind] > absl::GetFlag(FLAGS_max_timelines)) continue;
    std::fprintf(stderr, "  [%s] %s\n", v.kind.c_str(), v.what.c_str());
    for (const std::string& s : v.subjects) {
      std::fprintf(stderr, "%s", journal_.Timeline(s).c_str());
    }
  }
}

}  // namespace
}  // namespace tether::chaos

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "The chaos soak (see tests/chaos/README.md); run it with tests/chaos/run.sh.");
  absl::ParseCommandLine(argc, argv);
  // Its own process group, so the watchdog (and run.sh) can end it with every child it started.
  setpgid(0, 0);
  // Bounded whatever happens: the children die with this process (the Child destructors), and
  // this watchdog ends it.
  const int64_t limit_s = absl::GetFlag(FLAGS_seconds) + 240;
  std::thread([limit_s] {
    absl::SleepFor(absl::Seconds(limit_s));
    std::fprintf(stderr, "chaos: over its time limit (%lld s); exiting\n",
                 static_cast<long long>(limit_s));
    kill(0, SIGKILL);
  }).detach();
  tether::chaos::Soak soak;
  return soak.Run();
}
