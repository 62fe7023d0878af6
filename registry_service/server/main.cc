// registry_service: the authority over node ownership, presence and invokes.
#include <csignal>
#include <cstdio>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/synchronization/mutex.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "common/env_flags.h"
#include "common/log.h"
#include "registry_service/server/registry_server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7000", "gRPC listen address (port 0: any free port)");
ABSL_FLAG(int64_t, lease_ttl_ms, 10'000, "edge lease TTL; an edge silent this long is lost");
ABSL_FLAG(int64_t, superseded_grace_ms, 10'000,
          "how long a replaced connection may finish its own invokes before it is closed");
ABSL_FLAG(int64_t, default_invoke_timeout_ms, 30'000, "invoke timeout when the caller sets none");
ABSL_FLAG(int64_t, invoke_timeout_cap_ms, 300'000, "larger invoke timeouts are clamped to this");
ABSL_FLAG(int64_t, presence_history, 100'000, "presence events kept for resuming watchers");
ABSL_FLAG(int64_t, idempotency_window_ms, 60'000,
          "finished invokes are replayed for a repeated idempotency key this long");
ABSL_FLAG(bool, auto_approve, false, "pair every new device automatically (development only)");
ABSL_FLAG(bool, auto_approve_loopback, false, "pair devices connecting from loopback");
ABSL_FLAG(int64_t, tick_ms, 50, "expiry timer period");
ABSL_FLAG(std::string, port_file, "", "if set, write the bound port here once listening");
ABSL_FLAG(int, metrics_port, -1,
          "HTTP port for /metrics (Prometheus), /healthz and /readyz; -1 off, 0 any free port");
ABSL_FLAG(std::string, metrics_host, "127.0.0.1", "address the metrics listener binds");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warn or error");

namespace {

absl::Status Validate(const tether::registry::ServerOptions& o) {
  if (o.store.lease_ttl_ms < 500) return absl::InvalidArgumentError("--lease_ttl_ms must be >= 500");
  if (o.registry.default_invoke_timeout_ms <= 0 || o.registry.max_invoke_timeout_ms <= 0) {
    return absl::InvalidArgumentError("invoke timeouts must be positive");
  }
  if (o.store.presence_history < 16) {
    return absl::InvalidArgumentError("--presence_history must be >= 16");
  }
  if (o.tick_ms <= 0 || o.tick_ms > 1000) return absl::InvalidArgumentError("--tick_ms in 1..1000");
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Tether registry service. Flags also read TETHER_<FLAG> env vars.");
  std::vector<char*> args = tether::common::ArgsWithEnvFlags(argc, argv);
  // Abseil checks lock-order cycles on every Mutex acquisition; tests keep that, binaries do not.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());

  tether::registry::ServerOptions o;
  o.listen = absl::GetFlag(FLAGS_listen);
  o.store.lease_ttl_ms = absl::GetFlag(FLAGS_lease_ttl_ms);
  o.store.superseded_grace_ms = absl::GetFlag(FLAGS_superseded_grace_ms);
  o.store.presence_history = static_cast<size_t>(absl::GetFlag(FLAGS_presence_history));
  o.store.idempotency_window_ms = absl::GetFlag(FLAGS_idempotency_window_ms);
  o.store.auto_approve_all = absl::GetFlag(FLAGS_auto_approve);
  o.store.auto_approve_loopback = absl::GetFlag(FLAGS_auto_approve_loopback);
  o.registry.default_invoke_timeout_ms = absl::GetFlag(FLAGS_default_invoke_timeout_ms);
  o.registry.max_invoke_timeout_ms = absl::GetFlag(FLAGS_invoke_timeout_cap_ms);
  o.tick_ms = absl::GetFlag(FLAGS_tick_ms);
  o.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  o.metrics_host = absl::GetFlag(FLAGS_metrics_host);
  tether::common::LogLevel level;
  if (!tether::common::ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    std::fprintf(stderr, "registry_service: --log_level must be debug, info, warn or error\n");
    return 2;
  }
  tether::common::SetLogLevel(level);
  if (absl::Status s = Validate(o); !s.ok()) {
    std::fprintf(stderr, "registry_service: %s\n", std::string(s.message()).c_str());
    return 2;
  }

  // Block the stop signals before any thread starts so only the waiter below sees them.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  tether::registry::RegistryServer server(o);
  auto port = server.Start();
  if (!port.ok()) {
    std::fprintf(stderr, "registry_service: %s\n", std::string(port.status().message()).c_str());
    return 1;
  }
  if (o.store.auto_approve_all) {
    std::fprintf(stderr, "registry_service: WARNING --auto_approve is on: any device key is paired\n");
  }
  std::printf("registry_service listening on port %d (store: memory)\n", *port);
  if (server.metrics_port() > 0) {
    std::printf("registry_service metrics on http://%s:%d/metrics\n", o.metrics_host.c_str(),
                server.metrics_port());
  }
  std::fflush(stdout);
  if (const std::string f = absl::GetFlag(FLAGS_port_file); !f.empty()) {
    if (FILE* fp = std::fopen(f.c_str(), "w")) {
      std::fprintf(fp, "%d\n", *port);
      std::fclose(fp);
    }
  }
  int sig = 0;
  sigwait(&stop, &sig);
  std::fprintf(stderr, "registry_service: signal %d, shutting down\n", sig);
  server.Shutdown();
  return 0;
}
