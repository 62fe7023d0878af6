// Every benchmark scenario at a small scale (a few hundred nodes and invokes), against the
// real registry, edge and fleet binaries. Checks only what must hold at any speed: every node
// connects and stays connected, a storm publishes no false disconnect and ends with every node
// owned by its new socket, every invoke is answered (or fails with a typed error in a storm).
#include <cstdlib>
#include <iostream>
#include <string>

#include "absl/strings/str_join.h"
#include "bench/scenarios.h"
#include "gtest/gtest.h"

namespace tether::bench {
namespace {

BenchConfig Config() {
  BenchConfig c;
  c.registry_binary = "registry_service/server/registry_service";
  c.edge_binary = "ws_edge/ws_edge";
  c.fleet_binary = "bench/fleet";
  c.core_bench_binary = "bench/core_bench";
  const char* tmp = std::getenv("TEST_TMPDIR");
  c.work_dir = tmp != nullptr ? tmp : "/tmp";
  c.fleet_progress = false;
  c.max_runtime_s = 300;
  return c;
}

void ExpectCorrect(const absl::StatusOr<ScenarioReport>& report) {
  ASSERT_TRUE(report.ok()) << report.status();
  std::cout << report->Markdown() << "\n";
  EXPECT_TRUE(report->problems.empty()) << absl::StrJoin(report->problems, "\n") << "\n"
                                        << report->Markdown();
  EXPECT_FALSE(report->rows.empty());
}

TEST(BenchSmokeTest, Idle) {
  IdleParams p;
  p.nodes = 200;
  p.window = 50;
  p.settle = absl::Milliseconds(500);
  ExpectCorrect(RunIdle(Config(), p));
}

TEST(BenchSmokeTest, IdleSocketsWithoutHandshake) {
  IdleParams p;
  p.nodes = 100;
  p.window = 50;
  p.handshake = false;
  p.settle = absl::Milliseconds(200);
  ExpectCorrect(RunIdle(Config(), p));
}

TEST(BenchSmokeTest, Handshake) {
  HandshakeParams p;
  p.nodes = 200;
  p.windows = {20, 100};
  ExpectCorrect(RunHandshake(Config(), p));
}

TEST(BenchSmokeTest, Invoke) {
  InvokeParams p;
  p.nodes = 50;
  p.rates = {200};
  p.flat_out_concurrency = {8};
  p.duration = absl::Seconds(1);
  p.max_invokes_per_step = 300;
  ExpectCorrect(RunInvoke(Config(), p));
}

TEST(BenchSmokeTest, StormOfReconnects) {
  StormParams p;
  p.nodes = 200;
  p.spread_ms = 500;
  p.invoke_rate = 100;
  p.settle = absl::Seconds(1);
  ExpectCorrect(RunStorm(Config(), p));
}

TEST(BenchSmokeTest, Core) {
  CoreParams p;
  p.ops = 40'000;
  ExpectCorrect(RunCore(Config(), p));
}

}  // namespace
}  // namespace tether::bench
