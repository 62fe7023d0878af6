#include "bench/scenarios.h"

#include <grpcpp/grpcpp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "bench/child.h"
#include "bench/invoke_load.h"
#include "proto/tether/v1/registry.grpc.pb.h"

namespace tether::bench {
namespace {

constexpr char kToken[] = "bench-shared-token";
constexpr int64_t kFdsReserved = 200;  // per process: listeners, gRPC, logs, pipes
constexpr absl::Duration kPhaseTimeout = absl::Seconds(600);

std::string Thousands(int64_t n) {
  std::string digits = absl::StrCat(n < 0 ? -n : n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return n < 0 ? "-" + out : out;
}

std::string YesNo(bool ok) { return ok ? "yes" : "no"; }

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

double SelfCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// Streams WatchPresence into a list with the time each event arrived. Thread-safe.
class PresenceLog {
 public:
  struct Entry {
    v1::PresenceEvent event;
    absl::Time received;
  };

  explicit PresenceLog(v1::Registry::Stub& api) {
    reader_ = std::thread([this, &api] {
      v1::WatchPresenceRequest req;  // from_revision 0: every change from now on
      auto stream = api.WatchPresence(&ctx_, req);
      v1::PresenceEvent e;
      while (stream->Read(&e)) {
        absl::MutexLock lock(&mu_);
        entries_.push_back({e, absl::Now()});
      }
      grpc::Status s = stream->Finish();
      absl::MutexLock lock(&mu_);
      ended_ = true;
      status_ = s;
    });
  }

  ~PresenceLog() {
    ctx_.TryCancel();
    reader_.join();
  }

  // Entries [from, end).
  std::vector<Entry> Since(size_t from) {
    absl::MutexLock lock(&mu_);
    if (from >= entries_.size()) return {};
    return std::vector<Entry>(entries_.begin() + static_cast<ptrdiff_t>(from), entries_.end());
  }
  size_t size() {
    absl::MutexLock lock(&mu_);
    return entries_.size();
  }
  // Nonempty if the stream ended early.
  std::string error() {
    absl::MutexLock lock(&mu_);
    return ended_ ? absl::StrCat("presence watch ended: ", status_.error_message()) : "";
  }

 private:
  grpc::ClientContext ctx_;
  std::thread reader_;
  absl::Mutex mu_;
  std::vector<Entry> entries_ ABSL_GUARDED_BY(mu_);
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
};

// node id -> owning conn id, for every connected node (ListNodes, paged).
absl::StatusOr<std::map<std::string, std::string>> ConnectedNodes(v1::Registry::Stub& api) {
  std::map<std::string, std::string> out;
  v1::ListNodesRequest req;
  req.set_connected(v1::ListNodesRequest::CONNECTED_ONLY);
  req.set_page_size(1000);
  for (;;) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::ListNodesResponse resp;
    grpc::Status s = api.ListNodes(&ctx, req, &resp);
    if (!s.ok()) return absl::UnavailableError("ListNodes: " + s.error_message());
    for (const v1::Node& n : resp.nodes()) out[n.node_id()] = n.conn_id();
    if (resp.next_page_token().empty()) return out;
    req.set_page_token(resp.next_page_token());
  }
}

bool AnyConnected(v1::Registry::Stub& api) {
  v1::ListNodesRequest req;
  req.set_connected(v1::ListNodesRequest::CONNECTED_ONLY);
  req.set_page_size(1);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ListNodesResponse resp;
  return !api.ListNodes(&ctx, req, &resp).ok() || resp.nodes_size() > 0;
}

// The processes of one scenario: a registry, edges and fleets, killed on destruction.
class Stack {
 public:
  explicit Stack(const BenchConfig& config) : config_(config), file_limit_(RaiseFileLimit()) {}

  ~Stack() {
    for (auto& f : fleets_) (void)f->WriteLine("quit");
    for (auto& f : fleets_) (void)f->Wait(absl::Seconds(20));
    fleets_.clear();
    edges_.clear();
    registry_.reset();
  }

  // Sockets one process may hold.
  int64_t socket_budget() const { return file_limit_ - kFdsReserved; }
  int64_t file_limit() const { return file_limit_; }

  absl::Status StartRegistry(const std::vector<std::string>& flags = {}) {
    const std::string port_file = Path("registry.port");
    std::remove(port_file.c_str());
    ChildOptions o;
    o.binary = config_.registry_binary;
    // A fresh memory-store registry has nothing to recover: serve at once.
    o.args = {"--listen=127.0.0.1:0", "--port_file=" + port_file, "--auto_approve",
              "--recovery_grace_ms=0"};
    o.args.insert(o.args.end(), config_.registry_flags.begin(), config_.registry_flags.end());
    o.args.insert(o.args.end(), flags.begin(), flags.end());
    o.log_path = Path("registry.log");
    auto child = Child::Start(o);
    if (!child.ok()) return child.status();
    registry_ = *std::move(child);
    auto port = WaitForPortFile(*registry_, port_file, absl::Seconds(30));
    if (!port.ok()) return port.status();
    registry_port_ = *port;
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(256 << 20);
    api_ = v1::Registry::NewStub(grpc::CreateCustomChannel(
        absl::StrCat("127.0.0.1:", registry_port_), grpc::InsecureChannelCredentials(), args));
    return absl::OkStatus();
  }

  absl::Status StartEdges(int count, const std::vector<std::string>& flags = {}) {
    for (int i = 0; i < count; ++i) {
      const std::string port_file = Path(absl::StrCat("edge", i, ".port"));
      std::remove(port_file.c_str());
      ChildOptions o;
      o.binary = config_.edge_binary;
      o.args = {"--listen=127.0.0.1:0", absl::StrCat("--registry=127.0.0.1:", registry_port_),
                absl::StrCat("--edge_id=bench-edge-", i), "--port_file=" + port_file};
      o.args.insert(o.args.end(), config_.edge_flags.begin(), config_.edge_flags.end());
      o.args.insert(o.args.end(), flags.begin(), flags.end());
      o.env = {absl::StrCat("TETHER_SHARED_TOKEN=", kToken)};
      o.log_path = Path(absl::StrCat("edge", i, ".log"));
      auto child = Child::Start(o);
      if (!child.ok()) return child.status();
      edges_.push_back(*std::move(child));
      auto port = WaitForPortFile(*edges_.back(), port_file, absl::Seconds(30));
      if (!port.ok()) return port.status();
      edge_ports_.push_back(*port);
    }
    // A node can only register through an attached edge.
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    for (auto& edge : edges_) {
      for (;;) {
        const std::string log = edge->LogTail(100'000);
        if (log.find("link up") != std::string::npos || log.find("link_up") != std::string::npos) {
          break;
        }
        if (absl::Now() > deadline || !edge->Running()) {
          return absl::UnavailableError("edge did not attach:\n" + edge->LogTail());
        }
        absl::SleepFor(absl::Milliseconds(20));
      }
    }
    return absl::OkStatus();
  }

  // `count` fleets sharing `nodes`; fleet i connects to edge i % edges and binds to its own
  // four source addresses 127.0.0.(2+4i) .. 127.0.0.(5+4i).
  absl::Status StartFleets(int count, int nodes, int loops, int payload_bytes,
                           const std::vector<std::string>& flags = {}) {
    for (int i = 0; i < count; ++i) {
      const int share = nodes / count + (i < nodes % count ? 1 : 0);
      std::vector<std::string> sources;
      for (int k = 0; k < 4; ++k) sources.push_back(absl::StrCat("127.0.0.", 2 + 4 * i + k));
      ChildOptions o;
      o.binary = config_.fleet_binary;
      o.args = {absl::StrCat("--edges=127.0.0.1:", edge_ports_[i % edge_ports_.size()]),
                "--source_addresses=" + absl::StrJoin(sources, ","),
                absl::StrCat("--nodes=", share),
                absl::StrCat("--loops=", loops),
                absl::StrCat("--payload_bytes=", payload_bytes),
                absl::StrCat("--max_runtime_s=", config_.max_runtime_s),
                absl::StrCat("--name=fleet", i)};
      o.args.insert(o.args.end(), flags.begin(), flags.end());
      o.env = {absl::StrCat("TETHER_SHARED_TOKEN=", kToken)};
      o.pipe_stdio = true;
      o.inherit_stderr = config_.fleet_progress;
      o.log_path = Path(absl::StrCat("fleet", i, ".log"));
      auto child = Child::Start(o);
      if (!child.ok()) return child.status();
      fleets_.push_back(*std::move(child));
      fleet_nodes_.push_back(share);
      fleet_edge_.push_back(i % static_cast<int>(edge_ports_.size()));
    }
    for (auto& f : fleets_) {
      auto line = f->ReadLine(absl::Seconds(120));
      if (!line.ok())
        return absl::UnavailableError(absl::StrCat(line.status().message(), "\n", f->LogTail()));
      if (line->rfind("started", 0) != 0) return absl::InternalError("fleet: " + *line);
    }
    return absl::OkStatus();
  }

  // Sends `command` to every fleet at once and returns each fleet's answer.
  absl::StatusOr<std::vector<std::string>> CommandAll(const std::string& command,
                                                      absl::Duration timeout = kPhaseTimeout) {
    for (auto& f : fleets_) {
      if (absl::Status s = f->WriteLine(command); !s.ok()) return s;
    }
    std::vector<std::string> answers;
    for (auto& f : fleets_) {
      auto line = f->ReadLine(timeout);
      if (!line.ok())
        return absl::UnavailableError(absl::StrCat(line.status().message(), "\n", f->LogTail()));
      if (line->rfind("error", 0) == 0) return absl::InternalError("fleet: " + *line);
      answers.push_back(*line);
    }
    return answers;
  }

  v1::Registry::Stub& api() { return *api_; }
  Child& registry() { return *registry_; }
  std::vector<std::unique_ptr<Child>>& edges() { return edges_; }
  std::vector<std::unique_ptr<Child>>& fleets() { return fleets_; }
  int fleet_nodes(int i) const { return fleet_nodes_[i]; }
  int fleet_edge(int i) const { return fleet_edge_[i]; }

  std::string CpuSplit(double since_wall_s, const std::vector<double>& before) {
    std::vector<double> now = CpuTimes();
    std::string out = absl::StrFormat("CPU seconds over %.1f s wall:", since_wall_s);
    std::vector<std::string> names = Names();
    for (size_t i = 0; i < now.size() && i < before.size(); ++i) {
      absl::StrAppendFormat(&out, " %s %.1f", names[i], now[i] - before[i]);
    }
    return out;
  }
  std::vector<double> CpuTimes() {
    std::vector<double> out = {SelfCpuSeconds(), registry_->CpuSeconds()};
    for (auto& e : edges_) out.push_back(e->CpuSeconds());
    for (auto& f : fleets_) out.push_back(f->CpuSeconds());
    return out;
  }

 private:
  std::string Path(const std::string& name) const {
    return absl::StrCat(config_.work_dir, "/", name);
  }
  std::vector<std::string> Names() const {
    std::vector<std::string> out = {"bench (load driver)", "registry"};
    for (size_t i = 0; i < edges_.size(); ++i) out.push_back(absl::StrCat("edge", i));
    for (size_t i = 0; i < fleets_.size(); ++i) out.push_back(absl::StrCat("fleet", i));
    return out;
  }

  const BenchConfig config_;
  const int64_t file_limit_;
  std::unique_ptr<Child> registry_;
  int registry_port_ = 0;
  std::unique_ptr<v1::Registry::Stub> api_;
  std::vector<std::unique_ptr<Child>> edges_;
  std::vector<int> edge_ports_;
  std::vector<std::unique_ptr<Child>> fleets_;
  std::vector<int> fleet_nodes_;
  std::vector<int> fleet_edge_;
};

double Sum(const std::vector<std::string>& lines, const std::string& key) {
  double s = 0;
  for (const std::string& l : lines) s += Field(l, key);
  return s;
}

double Max(const std::vector<std::string>& lines, const std::string& key) {
  double m = 0;
  for (const std::string& l : lines) m = std::max(m, Field(l, key));
  return m;
}

// Ramps every fleet; problems for nodes that did not connect. Returns the answers.
absl::StatusOr<std::vector<std::string>> RampAll(Stack& stack, int window, int nodes,
                                                 ScenarioReport& report) {
  auto answers = stack.CommandAll(absl::StrCat("ramp ", window));
  if (!answers.ok()) return answers.status();
  const int ready = static_cast<int>(Sum(*answers, "ready"));
  if (ready != nodes) {
    report.problems.push_back(absl::StrCat("ramp: ", ready, " of ", nodes, " nodes connected (",
                                           absl::StrJoin(*answers, " | "), ")"));
  }
  return answers;
}

void CheckNoDisconnects(PresenceLog& presence, ScenarioReport& report) {
  int disconnects = 0;
  for (const auto& e : presence.Since(0)) {
    disconnects += e.event.kind() == v1::PresenceEvent::DISCONNECTED;
  }
  if (disconnects > 0) {
    report.problems.push_back(absl::StrCat(disconnects, " DISCONNECTED presence events"));
  }
  if (std::string err = presence.error(); !err.empty()) report.problems.push_back(err);
}

void CheckFleetStats(Stack& stack, ScenarioReport& report) {
  auto stats = stack.CommandAll("stats", absl::Seconds(30));
  if (!stats.ok()) {
    report.problems.push_back(std::string(stats.status().message()));
    return;
  }
  if (const double dropped = Sum(*stats, "dropped"); dropped > 0) {
    report.problems.push_back(absl::StrCat(dropped, " live node sockets were closed by the edge"));
  }
}

}  // namespace

std::string ScenarioReport::Markdown() const {
  std::string out = absl::StrCat("### ", scenario, "\n\n", setup, "\n\n");
  absl::StrAppend(&out, "| metric | value | target | met |\n| --- | --- | --- | --- |\n");
  for (const Row& r : rows) {
    absl::StrAppend(&out, "| ", r.metric, " | ", r.value, " | ", r.target.empty() ? "" : r.target,
                    " | ", r.met, " |\n");
  }
  absl::StrAppend(&out, "\nCorrectness: ",
                  problems.empty() ? "no problems." : absl::StrJoin(problems, "; "), "\n");
  for (const std::string& n : notes) absl::StrAppend(&out, "\n- ", n);
  if (!notes.empty()) absl::StrAppend(&out, "\n");
  return out;
}

absl::StatusOr<ScenarioReport> RunIdle(const BenchConfig& config, const IdleParams& p) {
  ScenarioReport report;
  report.scenario = "idle";
  Stack stack(config);
  const int64_t budget = stack.socket_budget();
  const int edges = p.edges > 0 ? p.edges : static_cast<int>(CeilDiv(p.nodes, budget));
  const int fleets = static_cast<int>(std::max<int64_t>(edges, CeilDiv(p.nodes, budget)));
  if (CeilDiv(p.nodes, edges) > budget) {
    return absl::InvalidArgumentError(absl::StrCat("idle: ", p.nodes, " nodes on ", edges,
                                                   " edges exceed the file limit ",
                                                   stack.file_limit()));
  }
  report.setup = absl::StrFormat(
      "%s idle node connections over %d edge(s) from %d fleet process(es); open-file limit %s "
      "per process (hard limit; it cannot be raised here).",
      Thousands(p.nodes), edges, fleets, Thousands(stack.file_limit()));
  if (!p.handshake) {
    report.scenario = "idle, sockets without a handshake";
    absl::StrAppend(&report.setup,
                    " The nodes stop after the challenge: no connect, no registration (the "
                    "edge's handshake timeout is raised to an hour).");
  }
  if (auto s = stack.StartRegistry(); !s.ok()) return s;
  std::vector<std::string> edge_flags;
  if (!p.handshake) edge_flags.push_back("--handshake_timeout_ms=3600000");
  if (auto s = stack.StartEdges(edges, edge_flags); !s.ok()) return s;
  PresenceLog presence(stack.api());
  absl::SleepFor(absl::Seconds(1));
  const int64_t registry_before = stack.registry().RssBytes();
  std::vector<int64_t> edge_before;
  for (auto& e : stack.edges()) edge_before.push_back(e->RssBytes());

  std::vector<std::string> fleet_flags;
  if (!p.handshake) fleet_flags.push_back("--handshake=false");
  if (auto s = stack.StartFleets(fleets, p.nodes, 1, 64, fleet_flags); !s.ok()) return s;
  auto answers = RampAll(stack, p.window, p.nodes, report);
  if (!answers.ok()) return answers.status();
  absl::SleepFor(p.settle);

  const int64_t registry_after = stack.registry().RssBytes();
  std::vector<int> per_edge(static_cast<size_t>(edges), 0);
  for (int i = 0; i < fleets; ++i) per_edge[stack.fleet_edge(i)] += Field((*answers)[i], "ready");
  double worst_edge = 0;
  int64_t largest_edge = 0;
  std::vector<std::string> edge_figures;
  for (int i = 0; i < edges; ++i) {
    const int64_t grown = stack.edges()[i]->RssBytes() - edge_before[i];
    const double per = per_edge[i] > 0 ? static_cast<double>(grown) / per_edge[i] : 0;
    worst_edge = std::max(worst_edge, per);
    largest_edge = std::max<int64_t>(largest_edge, per_edge[i]);
    edge_figures.push_back(
        absl::StrFormat("edge%d: +%.1f MiB for %s", i, grown / 1048576.0, Thousands(per_edge[i])));
  }
  const int ready = static_cast<int>(Sum(*answers, "ready"));
  auto connected = ConnectedNodes(stack.api());
  if (!connected.ok()) return connected.status();
  const int expect_connected = p.handshake ? p.nodes : 0;
  if (static_cast<int>(connected->size()) != expect_connected) {
    report.problems.push_back(absl::StrCat("registry shows ", connected->size(),
                                           " nodes connected, expected ", expect_connected));
  }
  CheckNoDisconnects(presence, report);
  CheckFleetStats(stack, report);
  const double registry_per =
      ready > 0 ? static_cast<double>(registry_after - registry_before) / ready : 0;
  report.rows.push_back(
      {p.handshake ? "idle connections" : "idle sockets (no handshake)",
       absl::StrFormat("%s (largest edge: %s)", Thousands(ready), Thousands(largest_edge)),
       p.handshake ? "50,000 on one edge" : "",
       p.handshake ? YesNo(edges == 1 && ready >= 50'000) : ""});
  if (p.handshake) {
    report.rows.push_back({"edge memory per connection (RSS growth / connections)",
                           absl::StrFormat("%.0f B", worst_edge), "<= 8 KB",
                           YesNo(worst_edge <= 8192 && ready > 0)});
    report.rows.push_back({"registry memory per session (RSS growth / sessions)",
                           absl::StrFormat("%.0f B", registry_per), "<= 512 B",
                           YesNo(registry_per <= 512 && ready > 0)});
  } else {
    report.rows.push_back({"edge memory per bare socket (RSS growth / sockets)",
                           absl::StrFormat("%.0f B", worst_edge), "", ""});
  }
  const double ramp_s = std::max(1e-3, Max(*answers, "elapsed_ms") / 1000);
  report.rows.push_back(
      {"ramp rate (all fleets)", absl::StrFormat("%.0f connections/s", ready / ramp_s), "", ""});
  report.notes.push_back(absl::StrCat(
      "RSS growth: ", absl::StrJoin(edge_figures, ", "),
      absl::StrFormat("; registry +%.1f MiB for %s sessions",
                      (registry_after - registry_before) / 1048576.0, Thousands(ready))));
  return report;
}

absl::StatusOr<ScenarioReport> RunHandshake(const BenchConfig& config, const HandshakeParams& p) {
  ScenarioReport report;
  report.scenario = "handshake";
  Stack stack(config);
  const int nodes = static_cast<int>(std::min<int64_t>(p.nodes, stack.socket_budget()));
  report.setup = absl::StrFormat(
      "Rounds of %s new node connections (fresh sockets, known identities) to one edge, each "
      "with a fixed number of handshakes in flight; a handshake counts when hello-ok arrives "
      "(signature verified, registered). Fleet: 1 process, %d client threads. All sockets are "
      "closed between rounds.",
      Thousands(nodes), p.fleet_loops);
  if (auto s = stack.StartRegistry(); !s.ok()) return s;
  if (auto s = stack.StartEdges(1); !s.ok()) return s;
  if (auto s = stack.StartFleets(1, nodes, p.fleet_loops, 64); !s.ok()) return s;
  double peak = 0;
  for (int window : p.windows) {
    const std::vector<double> cpu = stack.CpuTimes();
    auto answers = RampAll(stack, window, nodes, report);
    if (!answers.ok()) return answers.status();
    const double rate = Field((*answers)[0], "rate");
    const double secs = Field((*answers)[0], "elapsed_ms") / 1000;
    peak = std::max(peak, rate);
    report.rows.push_back({absl::StrFormat("handshakes/s, %d in flight", window),
                           absl::StrFormat("%.0f", rate), "", ""});
    report.notes.push_back(absl::StrFormat("%d in flight: %s", window, stack.CpuSplit(secs, cpu)));
    auto closed = stack.CommandAll("close");
    if (!closed.ok()) return closed.status();
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (AnyConnected(stack.api()) && absl::Now() < deadline)
      absl::SleepFor(absl::Milliseconds(100));
  }
  report.rows.push_back({"peak verified handshakes + registrations/s, one edge",
                         absl::StrFormat("%.0f", peak), ">= 5,000/s", YesNo(peak >= 5000)});
  return report;
}

absl::StatusOr<ScenarioReport> RunInvoke(const BenchConfig& config, const InvokeParams& p) {
  ScenarioReport report;
  report.scenario = "invoke";
  report.setup = absl::StrFormat(
      "%s nodes on one edge answering every invoke with a %d-byte payload; invokes through the "
      "registry's public gRPC API (InvokeNode, async API, one channel) to random nodes; "
      "%s per step. Fixed rates are open loop: latency counts from each call's scheduled start.",
      Thousands(p.nodes), p.payload_bytes, absl::FormatDuration(p.duration));
  Stack stack(config);
  if (auto s = stack.StartRegistry(); !s.ok()) return s;
  if (auto s = stack.StartEdges(1); !s.ok()) return s;
  if (auto s = stack.StartFleets(1, p.nodes, 1, p.payload_bytes); !s.ok()) return s;
  if (auto a = RampAll(stack, 500, p.nodes, report); !a.ok()) return a.status();
  auto connected = ConnectedNodes(stack.api());
  if (!connected.ok()) return connected.status();
  InvokeLoadOptions base;
  for (const auto& [node, conn] : *connected) base.node_ids.push_back(node);
  base.expect_payload_bytes = static_cast<size_t>(p.payload_bytes);
  base.duration = p.duration;
  base.max_invokes = p.max_invokes_per_step;

  int64_t sent = 0, answered = 0;
  const auto record = [&](const InvokeLoadResult& r, const std::string& step) {
    sent += r.started;
    answered += r.ok;
    if (r.ok != r.started) {
      report.problems.push_back(absl::StrCat(step, ": ", r.Summary()));
    }
  };
  {
    InvokeLoadOptions warm = base;
    warm.rate = 500;
    warm.duration = std::min(p.duration, absl::Seconds(2));
    auto r = RunInvokeLoad(stack.api(), warm);
    if (!r.ok()) return r.status();
    record(*r, "warm-up");
  }
  for (double rate : p.rates) {
    InvokeLoadOptions o = base;
    o.rate = rate;
    o.concurrency = 2000;
    const std::vector<double> cpu = stack.CpuTimes();
    auto r = RunInvokeLoad(stack.api(), o);
    if (!r.ok()) return r.status();
    report.notes.push_back(absl::StrFormat("%.0f/s: %s", rate, stack.CpuSplit(r->elapsed_s, cpu)));
    record(*r, absl::StrCat(rate, "/s"));
    const bool target = std::fabs(rate - 2000) < 1;
    report.rows.push_back(
        {absl::StrFormat("latency at %.0f/s (p50 / p90 / p99 / p99.9 / max)", rate),
         absl::StrFormat("%.2f / %.2f / %.2f / %.2f / %.2f ms (achieved %.0f/s, %d late starts)",
                         r->latency.p50, r->latency.p90, r->latency.p99, r->latency.p999,
                         r->latency.max, r->achieved_rate, r->late_starts),
         target ? "p99 <= 2 ms" : "", target ? YesNo(r->latency.p99 <= 2.0) : ""});
  }
  double peak = 0;
  for (int c : p.flat_out_concurrency) {
    InvokeLoadOptions o = base;
    o.rate = 0;
    o.concurrency = c;
    const std::vector<double> cpu = stack.CpuTimes();
    const int64_t registry_switches = stack.registry().ContextSwitches();
    const int64_t edge_switches = stack.edges()[0]->ContextSwitches();
    auto r = RunInvokeLoad(stack.api(), o);
    if (!r.ok()) return r.status();
    record(*r, absl::StrCat("flat out x", c));
    peak = std::max(peak, r->achieved_rate);
    report.rows.push_back(
        {absl::StrFormat("flat out, %d callers", c),
         absl::StrFormat("%.0f/s (p50 %.2f ms, p99 %.2f ms, max %.2f ms)", r->achieved_rate,
                         r->latency.p50, r->latency.p99, r->latency.max),
         "", ""});
    // Thread wake-ups per invoke (issue 12): what the gRPC callback API and the edge's hops
    // cost, counted by the kernel over the threads alive at the end of the step.
    const double invokes = std::max<double>(1, static_cast<double>(r->started));
    report.rows.push_back(
        {absl::StrFormat("context switches per invoke, flat out x%d: registry", c),
         absl::StrFormat("%.1f",
                         (stack.registry().ContextSwitches() - registry_switches) / invokes),
         "", ""});
    report.rows.push_back(
        {absl::StrFormat("context switches per invoke, flat out x%d: edge", c),
         absl::StrFormat("%.1f", (stack.edges()[0]->ContextSwitches() - edge_switches) / invokes),
         "", ""});
    report.notes.push_back(
        absl::StrFormat("flat out x%d: %s", c, stack.CpuSplit(r->elapsed_s, cpu)));
  }
  report.rows.push_back({"peak invokes/s through one edge", absl::StrFormat("%.0f", peak),
                         ">= 20,000/s", YesNo(peak >= 20'000)});
  auto stats = stack.CommandAll("stats", absl::Seconds(30));
  if (!stats.ok()) return stats.status();
  const double fleet_invokes = Sum(*stats, "invokes");
  if (fleet_invokes != static_cast<double>(sent)) {
    report.problems.push_back(
        absl::StrFormat("the fleet answered %.0f invokes, %d were sent", fleet_invokes, sent));
  }
  report.rows.push_back({"invokes sent / answered OK",
                         absl::StrCat(Thousands(sent), " / ", Thousands(answered)),
                         "every invoke answered", YesNo(sent == answered)});
  return report;
}

absl::StatusOr<ScenarioReport> RunStorm(const BenchConfig& config, const StormParams& p) {
  ScenarioReport report;
  report.scenario = "storm";
  Stack stack(config);
  const int64_t budget = stack.socket_budget();
  // Each node holds two sockets during the storm, in the fleet and on the edge.
  const int fleets = static_cast<int>(CeilDiv(2LL * p.nodes, budget));
  const int edges = p.edges > 0 ? p.edges : fleets;
  if (CeilDiv(2LL * p.nodes, edges) > budget) {
    return absl::InvalidArgumentError(absl::StrCat("storm: ", p.nodes, " nodes on ", edges,
                                                   " edges exceed the file limit ",
                                                   stack.file_limit()));
  }
  report.setup = absl::StrFormat(
      "%s connected nodes over %d edge(s) from %d fleet process(es) (open-file limit %s per "
      "process; a storm holds two sockets per node) all open a new socket at once while the "
      "old one stays open; once a node's new socket has hello-ok its old socket is closed by "
      "the node at a random time within %d ms (unless the edge already closed it as replaced). "
      "Meanwhile %.0f invokes/s go to random nodes.",
      Thousands(p.nodes), edges, fleets, Thousands(stack.file_limit()), p.spread_ms, p.invoke_rate);
  if (auto s = stack.StartRegistry(); !s.ok()) return s;
  if (auto s = stack.StartEdges(edges); !s.ok()) return s;
  PresenceLog presence(stack.api());
  // A refused new socket is retried as a real node retries (backoff from 1 s, retryAfterMs
  // honoured), up to 8 times (a real node never stops; the bound keeps the run finite).
  if (auto s = stack.StartFleets(fleets, p.nodes, 1, 64, {"--retries=8"}); !s.ok()) return s;
  if (auto a = RampAll(stack, 1000, p.nodes, report); !a.ok()) return a.status();
  auto before = ConnectedNodes(stack.api());
  if (!before.ok()) return before.status();
  if (static_cast<int>(before->size()) != p.nodes) {
    report.problems.push_back(
        absl::StrCat("before the storm ", before->size(), " of ", p.nodes, " nodes are connected"));
  }

  absl::StatusOr<InvokeLoadResult> load;
  InvokeLoadOptions lo;
  for (const auto& [node, conn] : *before) lo.node_ids.push_back(node);
  lo.rate = p.invoke_rate;
  lo.concurrency = 5000;
  lo.expect_payload_bytes = 64;
  std::unique_ptr<std::atomic<bool>> stop_flag = std::make_unique<std::atomic<bool>>(false);
  lo.stop = stop_flag.get();
  lo.duration = kPhaseTimeout;
  std::thread load_thread([&] { load = RunInvokeLoad(stack.api(), lo); });
  absl::SleepFor(absl::Seconds(1));

  const size_t mark = presence.size();
  const absl::Time start = absl::Now();
  const std::vector<double> cpu = stack.CpuTimes();
  auto answers = stack.CommandAll(absl::StrCat("storm ", p.spread_ms));
  const double storm_secs = absl::ToDoubleSeconds(absl::Now() - start);
  const std::string cpu_split = stack.CpuSplit(storm_secs, cpu);
  absl::SleepFor(p.settle);
  stop_flag->store(true);
  load_thread.join();
  if (!answers.ok()) return answers.status();
  if (!load.ok()) return load.status();
  report.notes.push_back(cpu_split);

  // Presence after the storm started: when did each node get its new owner, and did any
  // node look disconnected?
  std::map<std::string, absl::Time> new_owner_at;
  std::map<std::string, std::string> last_owner;
  int false_disconnects = 0;
  for (const auto& e : presence.Since(mark)) {
    const std::string& node = e.event.node_id();
    auto old = before->find(node);
    if (old == before->end()) continue;
    if (e.event.kind() == v1::PresenceEvent::DISCONNECTED) {
      ++false_disconnects;
      last_owner.erase(node);
      continue;
    }
    last_owner[node] = e.event.conn_id();
    if (e.event.conn_id() != old->second && new_owner_at.count(node) == 0) {
      new_owner_at[node] = e.received;
    }
  }
  absl::Time last = start;
  for (const auto& [node, at] : new_owner_at) last = std::max(last, at);
  const bool all_owned = static_cast<int>(new_owner_at.size()) == p.nodes;
  const double owned_s = absl::ToDoubleSeconds(last - start);

  auto after = ConnectedNodes(stack.api());
  if (!after.ok()) return after.status();
  int stale_owner = 0, missing = 0, mismatched = 0;
  for (const auto& [node, old_conn] : *before) {
    auto it = after->find(node);
    if (it == after->end()) {
      ++missing;
    } else if (it->second == old_conn) {
      ++stale_owner;
    } else if (last_owner[node] != it->second) {
      ++mismatched;
    }
  }
  if (!all_owned) {
    report.problems.push_back(
        absl::StrCat(p.nodes - new_owner_at.size(), " nodes never got a new owner in presence"));
  }
  if (missing + stale_owner + mismatched > 0) {
    report.problems.push_back(absl::StrFormat(
        "after the storm: %d nodes not connected, %d still owned by the old socket, %d owners "
        "differ from the last presence event",
        missing, stale_owner, mismatched));
  }
  if (false_disconnects > 0) {
    report.problems.push_back(absl::StrCat(false_disconnects, " false DISCONNECTED events"));
  }
  if (load->untyped_error_count() + load->bad_payload > 0) {
    report.problems.push_back("invokes lost without a typed error: " + load->Summary());
  }
  if (const double failed = Sum(*answers, "failed"); failed > 0) {
    report.problems.push_back(
        absl::StrCat(failed, " nodes could not reconnect: ", absl::StrJoin(*answers, " | ")));
  }
  if (std::string err = presence.error(); !err.empty()) report.problems.push_back(err);
  CheckFleetStats(stack, report);

  report.rows.push_back(
      {"nodes reconnecting at once", Thousands(p.nodes), "20,000", YesNo(p.nodes >= 20'000)});
  report.rows.push_back({"time until every node is owned by its new connection (presence)",
                         all_owned
                             ? absl::StrFormat("%.2f s", owned_s)
                             : absl::StrCat("not all: ", new_owner_at.size(), " of ", p.nodes),
                         "<= 10 s", YesNo(all_owned && owned_s <= 10)});
  report.rows.push_back({"false disconnect events", Thousands(false_disconnects), "0",
                         YesNo(false_disconnects == 0)});
  report.rows.push_back({"invokes lost without a typed error",
                         Thousands(load->untyped_error_count() + load->bad_payload), "0",
                         YesNo(load->untyped_error_count() + load->bad_payload == 0)});
  std::string typed;
  for (const auto& [code, n] : load->typed_errors) absl::StrAppend(&typed, " ", code, " ", n);
  report.rows.push_back({"invokes during the storm: sent / OK / failed with a typed error",
                         absl::StrCat(Thousands(load->started), " / ", Thousands(load->ok), " / ",
                                      Thousands(load->typed_error_count()),
                                      typed.empty() ? "" : " (" + typed.substr(1) + ")"),
                         "", ""});
  report.rows.push_back({"fleet: last new socket hello-ok after",
                         absl::StrFormat("%.2f s", Max(*answers, "all_ready_ms") / 1000), "", ""});
  report.rows.push_back(
      {"old sockets closed late by the node / by the edge as replaced / otherwise",
       absl::StrFormat("%.0f / %.0f / %.0f", Sum(*answers, "old_closed_by_us"),
                       Sum(*answers, "old_replaced"), Sum(*answers, "old_other")),
       "", ""});
  report.rows.push_back({"connection retries during the storm",
                         absl::StrFormat("%.0f", Sum(*answers, "retries")), "", ""});
  return report;
}

absl::StatusOr<ScenarioReport> RunCore(const BenchConfig& config, const CoreParams& p) {
  ScenarioReport report;
  report.scenario = "core";
  report.setup =
      absl::StrCat("bench/core_bench: ", Thousands(p.ops),
                   " ownership decisions through Registry over MemoryStore on one thread (register "
                   "superseding, invoke, settle, stale close).");
  ChildOptions o;
  o.binary = config.core_bench_binary;
  o.args = {absl::StrCat("--ops=", p.ops)};
  o.log_path = absl::StrCat(config.work_dir, "/core_bench.log");
  auto child = Child::Start(o);
  if (!child.ok()) return child.status();
  auto status = (*child)->Wait(absl::Seconds(300));
  const std::string log = (*child)->LogTail(10'000);
  if (!status.has_value() || *status != 0) {
    return absl::InternalError("core_bench failed:\n" + log);
  }
  double rate = 0;
  std::string summary;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (absl::StartsWith(line, "core:") || absl::StartsWith(line, "live connections")) {
      absl::StrAppend(&summary, summary.empty() ? "" : "; ", line);
    }
    const size_t eq = line.find(" = ");
    if (absl::StartsWith(line, "core:") && eq != absl::string_view::npos) {
      absl::string_view figure = line.substr(eq + 3);
      (void)absl::SimpleAtod(figure.substr(0, figure.find(' ')), &rate);
    }
  }
  if (rate <= 0) report.problems.push_back("no figure in core_bench output: " + log);
  report.rows.push_back({"registry core decisions/s, one thread", absl::StrFormat("%.0f", rate),
                         ">= 1,000,000/s", YesNo(rate >= 1'000'000)});
  report.notes.push_back(summary);
  return report;
}

}  // namespace tether::bench
