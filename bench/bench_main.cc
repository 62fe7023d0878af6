// bench: runs one benchmark scenario against real processes and prints its results as a
// Markdown section (bench/run.sh builds everything, calls this and appends to RESULTS.md).
//
//   bench --scenario=idle|handshake|invoke|storm|core [--nodes=N] [--bin_dir=...]
//
// Exits 1 when the scenario found a correctness problem, 2 when it could not run.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "bench/scenarios.h"

ABSL_FLAG(std::string, scenario, "", "idle, handshake, invoke, storm or core");
ABSL_FLAG(std::string, bin_dir, "bazel-out/k8-opt/bin", "where the built binaries are");
ABSL_FLAG(std::string, work_dir, "/tmp", "logs and port files of the processes");
ABSL_FLAG(int, nodes, 0, "nodes (0: the scenario's full size)");
ABSL_FLAG(int, edges, 0, "idle/storm: edges (0: as few as the file limit allows)");
ABSL_FLAG(bool, handshake, true,
          "idle: nodes authenticate (off: sockets stop after the challenge, to split memory)");
ABSL_FLAG(std::string, windows, "", "handshake: comma-separated handshakes in flight per round");
ABSL_FLAG(std::string, rates, "", "invoke: comma-separated fixed rates (invokes/s), or none");
ABSL_FLAG(std::string, concurrency, "", "invoke: comma-separated flat-out caller counts, or none");
ABSL_FLAG(int64_t, duration_s, 10, "invoke: seconds per step");
ABSL_FLAG(int, payload_bytes, 256, "invoke: payload size of every answer");
ABSL_FLAG(int64_t, spread_ms, 2000, "storm: old sockets close within this long after the new");
ABSL_FLAG(double, invoke_rate, 500, "storm: invokes/s during the storm");
ABSL_FLAG(int64_t, ops, 4'000'000, "core: ownership decisions");
ABSL_FLAG(bool, progress, true, "fleet progress lines on stderr");
ABSL_FLAG(std::string, registry_flags, "--dev_mode",
          "space-separated flags added to the registry's command line");
ABSL_FLAG(std::string, edge_flags, "--handshake_rate_per_ip=0",
          "space-separated flags added to every edge's command line");

namespace {

template <typename T>
std::vector<T> Numbers(const std::string& text, std::vector<T> fallback) {
  if (text.empty()) return fallback;
  if (text == "none") return {};  // e.g. --rates=none: only the flat-out steps
  std::vector<T> out;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    double d = 0;
    if (absl::SimpleAtod(item, &d)) out.push_back(static_cast<T>(d));
  }
  return out.empty() ? fallback : out;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Tether benchmark scenarios (see bench/run.sh).");
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::ParseCommandLine(argc, argv);
  using namespace tether::bench;

  BenchConfig config;
  const std::string bin = absl::GetFlag(FLAGS_bin_dir);
  config.registry_binary = bin + "/registry_service/server/registry_service";
  config.edge_binary = bin + "/ws_edge/ws_edge";
  config.fleet_binary = bin + "/bench/fleet";
  config.core_bench_binary = bin + "/bench/core_bench";
  config.work_dir = absl::GetFlag(FLAGS_work_dir);
  config.fleet_progress = absl::GetFlag(FLAGS_progress);
  config.registry_flags =
      absl::StrSplit(absl::GetFlag(FLAGS_registry_flags), ' ', absl::SkipEmpty());
  config.edge_flags = absl::StrSplit(absl::GetFlag(FLAGS_edge_flags), ' ', absl::SkipEmpty());
  const int nodes = absl::GetFlag(FLAGS_nodes);
  const std::string scenario = absl::GetFlag(FLAGS_scenario);

  absl::StatusOr<ScenarioReport> report;
  if (scenario == "idle") {
    IdleParams p;
    if (nodes > 0) p.nodes = nodes;
    p.edges = absl::GetFlag(FLAGS_edges);
    p.handshake = absl::GetFlag(FLAGS_handshake);
    report = RunIdle(config, p);
  } else if (scenario == "handshake") {
    HandshakeParams p;
    if (nodes > 0) p.nodes = nodes;
    p.windows = Numbers<int>(absl::GetFlag(FLAGS_windows), p.windows);
    report = RunHandshake(config, p);
  } else if (scenario == "invoke") {
    InvokeParams p;
    if (nodes > 0) p.nodes = nodes;
    p.rates = Numbers<double>(absl::GetFlag(FLAGS_rates), p.rates);
    p.flat_out_concurrency = Numbers<int>(absl::GetFlag(FLAGS_concurrency), p.flat_out_concurrency);
    p.duration = absl::Seconds(absl::GetFlag(FLAGS_duration_s));
    p.payload_bytes = absl::GetFlag(FLAGS_payload_bytes);
    report = RunInvoke(config, p);
  } else if (scenario == "storm") {
    StormParams p;
    if (nodes > 0) p.nodes = nodes;
    p.edges = absl::GetFlag(FLAGS_edges);
    p.spread_ms = absl::GetFlag(FLAGS_spread_ms);
    p.invoke_rate = absl::GetFlag(FLAGS_invoke_rate);
    report = RunStorm(config, p);
  } else if (scenario == "core") {
    CoreParams p;
    p.ops = absl::GetFlag(FLAGS_ops);
    report = RunCore(config, p);
  } else {
    std::fprintf(stderr, "bench: --scenario must be idle, handshake, invoke, storm or core\n");
    return 2;
  }
  if (!report.ok()) {
    std::fprintf(stderr, "bench: %s: %s\n", scenario.c_str(),
                 std::string(report.status().message()).c_str());
    return 2;
  }
  std::printf("%s", report->Markdown().c_str());
  std::fflush(stdout);
  return report->problems.empty() ? 0 : 1;
}
