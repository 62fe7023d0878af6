// core_bench: registry core operations per second on one thread, in process.
//
//   bazel run -c opt //bench:core_bench -- [--ops=2000000] [--nodes=10000]
//
// Each round on one node: register a new connection (superseding the old one), start an invoke
// on it, settle it with the node's result, close the superseded connection (a stale close).
// That is four ownership decisions; the figure counts decisions per second.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "common/log.h"
#include "registry_service/core/registry.h"
#include "registry_service/store/memory_store.h"

ABSL_FLAG(int64_t, ops, 2'000'000, "ownership decisions to run");
ABSL_FLAG(int64_t, nodes, 10'000, "distinct node ids");

namespace {

using namespace tether::registry;

class NullSink final : public EdgeSink {
 public:
  void SendInvoke(const Dispatch&, int64_t) override { ++invokes; }
  void SendCommand(const EdgeCommand&) override { ++commands; }
  int64_t invokes = 0;
  int64_t commands = 0;
};

}  // namespace

int main(int argc, char** argv) {
  // Abseil checks lock-order cycles on every Mutex acquisition; tests keep that, binaries do not.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::ParseCommandLine(argc, argv);
  // The registry logs every stale close at info level; a million log lines would be measured
  // instead of the decisions.
  tether::common::SetLogLevel(tether::common::LogLevel::kWarn);
  const int64_t ops = absl::GetFlag(FLAGS_ops);
  const int64_t nodes = absl::GetFlag(FLAGS_nodes);
  tether::common::FakeClock clock;
  StoreOptions options;
  options.auto_approve_all = true;
  MemoryStore store(options, clock.NowMs());
  Registry registry(store, clock, RegistryOptions{});
  auto sink = std::make_shared<NullSink>();
  (void)registry.AttachEdge("edge", "epoch", sink);

  std::vector<std::string> node_ids(nodes), owner(nodes);
  for (int64_t i = 0; i < nodes; ++i) node_ids[i] = "node-" + std::to_string(i);
  ConnectionSpec spec;
  spec.edge_id = "edge";
  spec.edge_epoch = "epoch";
  spec.shared_token_ok = true;
  spec.client.commands = {"system.which"};
  InvokeParams params;
  params.command = "system.which";
  params.params_json = "{}";
  params.timeout_ms = 30'000;
  InvokeOutcome ok;
  ok.payload_json = "{}";
  int64_t completed = 0;

  const auto start = std::chrono::steady_clock::now();
  int64_t done = 0;
  for (int64_t round = 0; done < ops; ++round) {
    const int64_t n = round % nodes;
    spec.node_id = node_ids[n];
    spec.conn_id = "c" + std::to_string(round);
    (void)registry.Register(spec);
    params.node_id = node_ids[n];
    InvokeTicket t = registry.Invoke(params, [&](const InvokeResult&) { ++completed; });
    registry.AcceptResult(spec.conn_id, t.invoke_id, node_ids[n], ok);
    if (!owner[n].empty()) registry.Close("edge", owner[n]);
    owner[n] = spec.conn_id;
    done += 4;
    if ((round & 1023) == 0) {
      clock.Advance(1);
      registry.Tick();
    }
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "core: %lld decisions (register, invoke, settle, stale close) on %lld nodes in "
      "%.3f s = %.0f decisions/s on one thread; %lld invokes completed\n",
      static_cast<long long>(done), static_cast<long long>(nodes), secs, done / secs,
      static_cast<long long>(completed));
  std::printf("live connections %zu, pending invokes %zu\n", store.ConnectionCountForTest(),
              store.PendingInvokeCountForTest());
  return 0;
}
