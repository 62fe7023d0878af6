// store_bench: registrations, closes and invokes per second through the Registry on a store
// (the memory store, or Redis), from several caller threads as the server runs them.
//
//   bazel run -c opt //bench:store_bench -- [--store=memory|redis://HOST:PORT] [--threads=16]
//       [--nodes=20000] [--redis_connections=8]
//
// Phases, each over every node once, spread over the threads (each thread owns a slice of the
// nodes): register a first connection per node; register a second one (supersedes the first);
// close the first (a stale close); an invoke per node (start and the node's result); close the
// owners (a disconnect each). Prints one line per phase with its rate.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "common/log.h"
#include "registry_service/core/registry.h"
#include "registry_service/store/memory_store.h"
#include "registry_service/store/redis_client.h"
#include "registry_service/store/redis_store.h"

ABSL_FLAG(std::string, store, "memory", "memory or redis://HOST:PORT[/DB]");
ABSL_FLAG(int, threads, 16, "caller threads (the registry's EdgeLink workers are 16)");
ABSL_FLAG(int, nodes, 20'000, "nodes per phase");
ABSL_FLAG(int, redis_connections, 8, "RedisStore connection pool size");

namespace {

using namespace tether::registry;

class NullSink final : public EdgeSink {
 public:
  void SendInvoke(const Dispatch& d, int64_t) override {
    absl::MutexLock lock(&mu);
    dispatched.push_back(d);
  }
  void SendCommand(const EdgeCommand&) override { commands.fetch_add(1); }
  absl::Mutex mu;
  std::vector<Dispatch> dispatched;
  std::atomic<int64_t> commands{0};
};

// Runs `fn(i)` for every node i, spread over the threads; returns operations per second.
template <typename Fn>
double Phase(int nodes, int threads, Fn fn) {
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int i = t; i < nodes; i += threads) fn(i);
    });
  }
  for (auto& th : pool) th.join();
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return nodes / secs;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::ParseCommandLine(argc, argv);
  tether::common::SetLogLevel(tether::common::LogLevel::kWarn);
  const std::string url = absl::GetFlag(FLAGS_store);
  const int threads = absl::GetFlag(FLAGS_threads);
  const int nodes = absl::GetFlag(FLAGS_nodes);
  tether::common::RealClock clock;
  StoreOptions options;
  options.auto_approve_all = true;
  options.presence_history = 200'000;
  std::unique_ptr<Store> store;
  if (url == "memory") {
    store = std::make_unique<MemoryStore>(options, clock.NowMs());
  } else {
    auto address = ParseRedisUrl(url);
    if (!address.ok()) {
      std::fprintf(stderr, "%s\n", address.status().ToString().c_str());
      return 2;
    }
    RedisStoreOptions r;
    r.client.address = *address;
    r.client.command_timeout = absl::Seconds(10);
    r.connections = absl::GetFlag(FLAGS_redis_connections);
    r.key_prefix = "store_bench:";
    auto redis = std::make_unique<RedisStore>(options, r);
    if (absl::Status s = redis->Connect(); !s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      return 2;
    }
    store = std::move(redis);
  }
  Registry registry(*store, clock, RegistryOptions{});
  auto sink = std::make_shared<NullSink>();
  if (!registry.AttachEdge("edge", "epoch", sink).ok()) return 2;

  auto spec = [](int node, const std::string& conn) {
    ConnectionSpec s;
    s.node_id = "node-" + std::to_string(node);
    s.conn_id = conn;
    s.edge_id = "edge";
    s.edge_epoch = "epoch";
    s.public_key = "pk";
    s.shared_token_ok = true;
    s.client.commands = {"system.which"};
    return s;
  };
  auto conn = [](int node, int round) {
    return "c" + std::to_string(round) + "-" + std::to_string(node);
  };
  std::atomic<int64_t> failures{0};
  auto check = [&](bool ok) {
    if (!ok) failures.fetch_add(1);
  };

  const double first = Phase(nodes, threads, [&](int i) {
    auto r = registry.Register(spec(i, conn(i, 1)));
    check(r.ok() && r->granted);
  });
  const double second = Phase(nodes, threads, [&](int i) {
    auto r = registry.Register(spec(i, conn(i, 2)));
    check(r.ok() && r->granted);
  });
  const double stale = Phase(nodes, threads, [&](int i) {
    CloseResult r = registry.Close("edge", conn(i, 1));
    check(r.known && !r.was_owner);
  });
  std::atomic<int64_t> completed{0};
  const double invokes = Phase(nodes, threads, [&](int i) {
    InvokeParams p;
    p.node_id = "node-" + std::to_string(i);
    p.command = "system.which";
    p.timeout_ms = 30'000;
    InvokeTicket t = registry.Invoke(p, [&](const InvokeResult& r) {
      if (r.outcome.code == InvokeCode::kOk) completed.fetch_add(1);
    });
    // The node answers at once (the invoke is pending in the store when Invoke returns).
    check(registry.AcceptResult(conn(i, 2), t.invoke_id, p.node_id, InvokeOutcome{}, "edge"));
  });
  const double owner_closes = Phase(nodes, threads, [&](int i) {
    CloseResult r = registry.Close("edge", conn(i, 2));
    check(r.was_owner);
  });
  std::printf("store_bench: store=%s threads=%d nodes=%d\n", url == "memory" ? "memory" : "redis",
              threads, nodes);
  std::printf("registrations (new node)/s       %.0f\n", first);
  std::printf("registrations (supersede)/s      %.0f\n", second);
  std::printf("stale closes/s                   %.0f\n", stale);
  std::printf("invokes (start + result)/s       %.0f\n", invokes);
  std::printf("owner closes (disconnect)/s      %.0f\n", owner_closes);
  std::printf("invokes completed %lld, failed checks %lld\n",
              static_cast<long long>(completed.load()), static_cast<long long>(failures.load()));
  return failures.load() == 0 ? 0 : 1;
}
