// The benchmark scenarios: each starts a registry, edge(s) and fleet process(es), drives them,
// and reports figures (against the targets) and correctness problems. bench_main runs
// them at full scale; tests/bench runs small versions that only assert correctness.
#ifndef TETHER_BENCH_SCENARIOS_H_
#define TETHER_BENCH_SCENARIOS_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tether::bench {

// Where the binaries are and where logs go.
struct BenchConfig {
  std::string registry_binary;
  std::string edge_binary;
  std::string fleet_binary;
  std::string core_bench_binary;
  std::string work_dir = "/tmp";  // logs and port files
  bool fleet_progress = true;     // fleets' progress lines to stderr (else to their logs)
  int64_t max_runtime_s = 900;    // every fleet process exits after this long
  // Added to every registry / edge command line. The API and EdgeLink of a registry without
  // tokens or an edge secret need --dev_mode; everything runs on loopback. The edge's per-source-
  // address handshake limit is off: the whole simulated fleet comes from a few 127.0.0.x
  // addresses, where a real one comes from as many addresses as nodes.
  std::vector<std::string> registry_flags = {"--dev_mode"};
  std::vector<std::string> edge_flags = {"--handshake_rate_per_ip=0"};
};

// One line of a results table. `met` is empty for figures without a target.
struct Row {
  std::string metric;
  std::string value;
  std::string target;
  std::string met;  // "yes", "no" or ""
};

struct ScenarioReport {
  std::string scenario;
  std::string setup;  // what ran: counts, processes, flags
  std::vector<Row> rows;
  std::vector<std::string> problems;  // correctness failures (the smoke test asserts none)
  std::vector<std::string> notes;     // observations (CPU split, limits hit)
  std::string Markdown() const;
};

struct IdleParams {
  int nodes = 50'000;
  int edges = 0;  // 0: as few as the per-process file limit allows
  int window = 1000;
  // Off: sockets only get as far as the challenge (no connect, no registration), to split the
  // edge's memory per connection into the bare socket and the authenticated session.
  bool handshake = true;
  absl::Duration settle = absl::Seconds(3);
};

struct HandshakeParams {
  int nodes = 10'000;                           // per round, on one edge
  std::vector<int> windows = {100, 400, 1600};  // handshakes in flight, one round each
  int fleet_loops = 2;
};

struct InvokeParams {
  int nodes = 1000;
  std::vector<double> rates = {1000, 2000, 5000};
  std::vector<int> flat_out_concurrency = {16, 64, 256};
  absl::Duration duration = absl::Seconds(10);  // per rate / concurrency
  int64_t max_invokes_per_step = 10'000'000;
  int payload_bytes = 256;
};

struct StormParams {
  int nodes = 20'000;
  int edges = 0;  // 0: as few as the file limit allows with old and new sockets open
  int64_t spread_ms = 2000;
  double invoke_rate = 500;                  // invokes/s to random nodes while the storm runs
  absl::Duration settle = absl::Seconds(2);  // watched after the last old socket closed
};

struct CoreParams {
  int64_t ops = 4'000'000;
};

absl::StatusOr<ScenarioReport> RunIdle(const BenchConfig& config, const IdleParams& params);
absl::StatusOr<ScenarioReport> RunHandshake(const BenchConfig& config,
                                            const HandshakeParams& params);
absl::StatusOr<ScenarioReport> RunInvoke(const BenchConfig& config, const InvokeParams& params);
absl::StatusOr<ScenarioReport> RunStorm(const BenchConfig& config, const StormParams& params);
absl::StatusOr<ScenarioReport> RunCore(const BenchConfig& config, const CoreParams& params);

}  // namespace tether::bench

#endif  // TETHER_BENCH_SCENARIOS_H_
