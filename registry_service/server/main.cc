// registry_service: the authority over node ownership, presence and invokes.
#include <algorithm>
#include <csignal>
#include <cstdio>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/strings/strip.h"
#include "common/env_flags.h"
#include "common/files.h"
#include "common/log.h"
#include "common/signals.h"
#include "registry_service/server/auth.h"
#include "registry_service/server/registry_server.h"
#include "registry_service/store/redis_client.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7000", "gRPC listen address (port 0: any free port)");
ABSL_FLAG(std::string, store, "memory",
          "where the registry's state lives: memory (this process only, lost on restart) or "
          "redis://HOST:PORT[/DB] (durable, shared by replicas)");
ABSL_FLAG(int64_t, redis_timeout_ms, 1000,
          "Redis connect and command timeout: RPCs fail UNAVAILABLE after this long when Redis "
          "is dead or silent (a whole-fleet read such as GetPresence is one command)");
ABSL_FLAG(std::string, redis_tls_ca_file, "",
          "with --store=rediss://...: PEM CAs the Redis server's certificate must chain to "
          "(empty: the system's)");
ABSL_FLAG(std::string, redis_tls_cert_file, "",
          "with rediss://: client certificate (PEM) for a Redis that requires one");
ABSL_FLAG(std::string, redis_tls_key_file, "", "with rediss://: the client certificate's key");
ABSL_FLAG(std::string, redis_tls_server_name, "",
          "with rediss://: the name the Redis certificate must carry (empty: the URL's host)");
ABSL_FLAG(int64_t, max_registration_wait_ms, 5000,
          "under overload, a registration that waited longer than this for the store is refused "
          "as retryable instead of decided (keep it below the edges' --handshake_timeout_ms)");
ABSL_FLAG(int, redis_connections, 8,
          "Redis connections decisions are spread over (1..64): Redis runs one script at a "
          "time, but with one connection every caller would also wait for every round trip");
ABSL_FLAG(std::string, redis_password_file, "",
          "file with the Redis password (AUTH) for --store=redis://...; empty: none");
ABSL_FLAG(int64_t, lease_ttl_ms, 10'000, "edge lease TTL; an edge silent this long is lost");
ABSL_FLAG(int64_t, superseded_grace_ms, 10'000,
          "how long a replaced connection may finish its own invokes before it is closed");
ABSL_FLAG(int64_t, default_invoke_timeout_ms, 30'000, "invoke timeout when the caller sets none");
ABSL_FLAG(int64_t, invoke_timeout_cap_ms, 300'000, "larger invoke timeouts are clamped to this");
ABSL_FLAG(int64_t, max_params_bytes, 12 << 20,
          "largest invoke params_json accepted (larger: INVALID_ARGUMENT); at most 16 MiB so the "
          "escaped frame stays under a node's 25 MiB maxPayload");
ABSL_FLAG(int64_t, presence_history, 100'000, "presence events kept for resuming watchers");
ABSL_FLAG(int64_t, max_revocations, 100'000,
          "revoked device keys remembered by id (a resync must not pair them again); past this "
          "the oldest are forgotten, and no connection granted before them is re-paired");
ABSL_FLAG(int64_t, node_retention_ms, 30LL * 24 * 3'600'000,
          "records of nodes disconnected this long are dropped (ListNodes/GetNode forget them; "
          "their pairing and device token stay); default 30 days");
ABSL_FLAG(int64_t, idempotency_max_bytes, 256LL << 20,
          "remembered invoke outcomes (for replays by idempotency key) hold at most this many "
          "payload bytes; the oldest are forgotten first");
ABSL_FLAG(int64_t, idempotency_window_ms, 60'000,
          "finished invokes are replayed for a repeated idempotency key this long");
ABSL_FLAG(bool, auto_approve, false, "pair every new device automatically (development only)");
ABSL_FLAG(bool, auto_approve_loopback, false, "pair devices connecting from loopback");
ABSL_FLAG(int64_t, tick_ms, 50, "expiry timer period");
ABSL_FLAG(int64_t, recovery_grace_ms, 10'000,
          "after a start with an empty table (memory store, or Redis new or after data loss): "
          "how long the registry waits for edges to resync before serving reads and invokes "
          "(until then /readyz 503, gRPC health NOT_SERVING, UNAVAILABLE with retry-after-ms); "
          "0: no recovery phase");
ABSL_FLAG(int, recovery_edges, 0,
          "end recovery early once this many edges have resynced (the fleet's edge count); "
          "0: only --recovery_grace_ms ends it");
ABSL_FLAG(std::string, port_file, "", "if set, write the bound port here once listening");
ABSL_FLAG(int, metrics_port, -1,
          "HTTP port for /metrics (Prometheus), /healthz and /readyz; -1 off, 0 any free port");
ABSL_FLAG(std::string, metrics_host, "127.0.0.1", "address the metrics listener binds");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warn or error");
ABSL_FLAG(bool, dev_mode, false,
          "development only: no API tokens and no edge authentication are required");
ABSL_FLAG(std::string, api_tokens_file, "",
          "bearer tokens for the public API, lines '<token> <scope,...> [name]' with scopes read, "
          "write, pairing, admin; re-read on SIGHUP");
ABSL_FLAG(std::string, edge_secret_file, "",
          "file with the secret edges must present (or env TETHER_EDGE_SECRET)");
ABSL_FLAG(std::string, tls_cert_file, "", "PEM certificate chain for the gRPC ports (TLS)");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key for --tls_cert_file");
ABSL_FLAG(std::string, edge_client_ca_file, "",
          "PEM CA that must have signed edges' client certificates (mutual TLS on --edge_listen)");
ABSL_FLAG(std::string, edge_listen, "",
          "serve EdgeLink on this address instead of --listen (needed for mutual TLS)");

namespace {

absl::Status Validate(const tether::registry::ServerOptions& o) {
  if (o.store.lease_ttl_ms < 500)
    return absl::InvalidArgumentError("--lease_ttl_ms must be >= 500");
  if (o.registry.default_invoke_timeout_ms <= 0 || o.registry.max_invoke_timeout_ms <= 0) {
    return absl::InvalidArgumentError("invoke timeouts must be positive");
  }
  if (o.registry.max_params_bytes < 1024 || o.registry.max_params_bytes > (16 << 20)) {
    return absl::InvalidArgumentError("--max_params_bytes must be in 1024..16777216");
  }
  if (o.store.node_retention_ms < 60'000) {
    return absl::InvalidArgumentError("--node_retention_ms must be >= 60000");
  }
  if (o.max_registration_wait_ms < 100) {
    return absl::InvalidArgumentError("--max_registration_wait_ms must be >= 100");
  }
  if (o.redis_connections < 1 || o.redis_connections > 64) {
    return absl::InvalidArgumentError("--redis_connections must be in 1..64");
  }
  if (o.redis_timeout_ms < 10 || o.redis_timeout_ms > 60'000) {
    return absl::InvalidArgumentError("--redis_timeout_ms must be in 10..60000");
  }
  if (o.store.presence_history < 16) {
    return absl::InvalidArgumentError("--presence_history must be >= 16");
  }
  if (o.tick_ms <= 0 || o.tick_ms > 1000) return absl::InvalidArgumentError("--tick_ms in 1..1000");
  if (o.registry.recovery_grace_ms < 0 || o.registry.recovery_edges < 0) {
    return absl::InvalidArgumentError("--recovery_grace_ms and --recovery_edges must be >= 0");
  }
  if (o.store_url != "memory") {
    if (auto address = tether::registry::ParseRedisUrl(o.store_url); !address.ok()) {
      return absl::InvalidArgumentError("--store: " + std::string(address.status().message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  tether::common::ParseFlags(argc, argv,
                             "Tether registry service. Flags also read TETHER_<FLAG> env vars.");

  tether::registry::ServerOptions o;
  o.listen = absl::GetFlag(FLAGS_listen);
  o.store_url = absl::GetFlag(FLAGS_store);
  o.redis_timeout_ms = absl::GetFlag(FLAGS_redis_timeout_ms);
  o.redis_connections = absl::GetFlag(FLAGS_redis_connections);
  o.max_registration_wait_ms = absl::GetFlag(FLAGS_max_registration_wait_ms);
  o.redis_tls.ca_file = absl::GetFlag(FLAGS_redis_tls_ca_file);
  o.redis_tls.cert_file = absl::GetFlag(FLAGS_redis_tls_cert_file);
  o.redis_tls.key_file = absl::GetFlag(FLAGS_redis_tls_key_file);
  o.redis_tls.server_name = absl::GetFlag(FLAGS_redis_tls_server_name);
  o.store.lease_ttl_ms = absl::GetFlag(FLAGS_lease_ttl_ms);
  o.store.superseded_grace_ms = absl::GetFlag(FLAGS_superseded_grace_ms);
  o.store.presence_history = static_cast<size_t>(absl::GetFlag(FLAGS_presence_history));
  o.store.idempotency_window_ms = absl::GetFlag(FLAGS_idempotency_window_ms);
  o.store.idempotency_max_bytes =
      static_cast<size_t>(std::max<int64_t>(0, absl::GetFlag(FLAGS_idempotency_max_bytes)));
  o.store.node_retention_ms = absl::GetFlag(FLAGS_node_retention_ms);
  o.store.max_revocations =
      static_cast<size_t>(std::max<int64_t>(1, absl::GetFlag(FLAGS_max_revocations)));
  o.store.auto_approve_all = absl::GetFlag(FLAGS_auto_approve);
  o.store.auto_approve_loopback = absl::GetFlag(FLAGS_auto_approve_loopback);
  o.registry.default_invoke_timeout_ms = absl::GetFlag(FLAGS_default_invoke_timeout_ms);
  o.registry.max_invoke_timeout_ms = absl::GetFlag(FLAGS_invoke_timeout_cap_ms);
  o.registry.max_params_bytes = absl::GetFlag(FLAGS_max_params_bytes);
  o.tick_ms = absl::GetFlag(FLAGS_tick_ms);
  o.registry.recovery_grace_ms = absl::GetFlag(FLAGS_recovery_grace_ms);
  o.registry.recovery_edges = absl::GetFlag(FLAGS_recovery_edges);
  o.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  o.dev_mode = absl::GetFlag(FLAGS_dev_mode);
  o.api_tokens_file = absl::GetFlag(FLAGS_api_tokens_file);
  o.edge_listen = absl::GetFlag(FLAGS_edge_listen);
  auto read = [](const std::string& flag, const std::string& path, std::string* out) {
    if (path.empty()) return true;
    auto content = tether::common::ReadTrimmedFile(path);
    if (!content.ok()) {
      std::fprintf(stderr, "registry_service: %s: %s\n", flag.c_str(),
                   std::string(content.status().message()).c_str());
      return false;
    }
    *out = *content + "\n";
    return true;
  };
  if (!read("--edge_secret_file", absl::GetFlag(FLAGS_edge_secret_file), &o.edge_secret) ||
      !read("--tls_cert_file", absl::GetFlag(FLAGS_tls_cert_file), &o.tls_cert_pem) ||
      !read("--tls_key_file", absl::GetFlag(FLAGS_tls_key_file), &o.tls_key_pem) ||
      !read("--edge_client_ca_file", absl::GetFlag(FLAGS_edge_client_ca_file),
            &o.edge_client_ca_pem) ||
      !read("--redis_password_file", absl::GetFlag(FLAGS_redis_password_file), &o.redis_password)) {
    return 2;
  }
  o.edge_secret = std::string(absl::StripAsciiWhitespace(o.edge_secret));
  o.redis_password = std::string(absl::StripAsciiWhitespace(o.redis_password));
  if (o.edge_secret.empty()) {
    if (const char* s = std::getenv("TETHER_EDGE_SECRET"); s != nullptr) o.edge_secret = s;
  }
  if (o.tls_cert_pem.empty() != o.tls_key_pem.empty()) {
    std::fprintf(stderr, "registry_service: --tls_cert_file and --tls_key_file go together\n");
    return 2;
  }
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

  // Before any thread starts, so only the waiter below sees them.
  sigset_t stop = tether::common::BlockStopSignals();

  tether::registry::RegistryServer server(o);
  auto port = server.Start();
  if (!port.ok()) {
    std::fprintf(stderr, "registry_service: %s\n", std::string(port.status().message()).c_str());
    return 1;
  }
  if (o.dev_mode) {
    std::fprintf(stderr,
                 "registry_service: WARNING --dev_mode is on: anyone who reaches the gRPC port "
                 "can call the API and attach as an edge\n");
  }
  if (o.store.auto_approve_all) {
    std::fprintf(stderr,
                 "registry_service: WARNING --auto_approve is on: any device key is paired\n");
  }
  std::printf("registry_service listening on port %d (store: %s)\n", *port,
              o.store_url == "memory" ? "memory, lost on restart" : o.store_url.c_str());
  if (!o.edge_listen.empty())
    std::printf("registry_service EdgeLink on port %d\n", server.edge_port());
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
  for (;;) {
    sigwait(&stop, &sig);
    if (sig != SIGHUP) break;
    absl::Status s = server.ReloadTokens();
    tether::common::Log(s.ok() ? tether::common::LogLevel::kInfo : tether::common::LogLevel::kError,
                        "api_tokens_reload", {{"result", s.ok() ? "ok" : s.message()}});
  }
  std::fprintf(stderr, "registry_service: signal %d, shutting down\n", sig);
  server.Shutdown();
  return 0;
}
