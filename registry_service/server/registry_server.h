// RegistryServer: the registry process minus flag parsing: store, core, gRPC services, timer.
#ifndef TETHER_REGISTRY_SERVICE_SERVER_REGISTRY_SERVER_H_
#define TETHER_REGISTRY_SERVICE_SERVER_REGISTRY_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "common/clock.h"
#include "common/http_server.h"
#include "common/metrics.h"
#include "registry_service/core/registry.h"
#include "registry_service/core/store.h"
#include "registry_service/server/auth.h"
#include "registry_service/server/edge_link_service.h"
#include "registry_service/server/registry_api_service.h"
#include "registry_service/store/store_options.h"
#include "registry_service/store/tls_tunnel.h"

namespace tether::registry {

struct ServerOptions {
  std::string listen = "127.0.0.1:0";  // port 0: pick a free port
  StoreOptions store;
  // "memory", or "redis://HOST:PORT[/DB]" for the RedisStore (checked by Start).
  std::string store_url = "memory";
  std::string redis_password;  // AUTH for the Redis store; empty: none
  RedisTlsOptions redis_tls;   // for rediss:// stores
  // Connect and command timeout for the Redis store: a dead or silent Redis makes RPCs fail
  // (UNAVAILABLE) after this long instead of hanging.
  int64_t redis_timeout_ms = 1000;
  int redis_connections = 8;  // decisions are spread over these
  // A registration that waited longer than this for the store is refused as retryable
  // (overload shedding; below the edges' handshake timeout, 10 s by default).
  int64_t max_registration_wait_ms = 5000;
  RegistryOptions registry;
  int64_t tick_ms = 50;  // how often expiries run (invoke deadlines are this precise)
  std::string metrics_host = "127.0.0.1";
  int metrics_port = -1;  // -1: no metrics listener; 0: any free port

  // Who may call. With `dev_mode` nothing is checked (development only).
  bool dev_mode = false;
  std::string api_tokens_file;  // bearer tokens with scopes for the public API
  std::string edge_secret;      // shared secret edges present; empty: none
  // TLS for the gRPC ports (PEM contents, not paths). Empty cert: plaintext.
  std::string tls_cert_pem;
  std::string tls_key_pem;
  std::string edge_client_ca_pem;  // edges must present a certificate signed by this CA
  std::string edge_listen;         // EdgeLink on its own port; empty: on `listen`
};

// The gRPC health service name that reports whether the public API serves ownership reads and
// invokes: NOT_SERVING while the Registry recovers. The server as a whole ("") stays SERVING.
inline constexpr char kApiHealthService[] = "tether.v1.Registry";

// Owns everything the registry process runs. Start once, Shutdown once (or destroy).
// Thread-safe for Shutdown from a signal-watching thread.
class RegistryServer {
 public:
  explicit RegistryServer(const ServerOptions& options);
  ~RegistryServer();

  // Builds the store and starts serving; returns the bound public gRPC port.
  absl::StatusOr<int> Start();
  int metrics_port() const { return metrics_port_; }
  int edge_port() const { return edge_port_; }  // == the public port without edge_listen
  // Re-reads the API token file (SIGHUP).
  absl::Status ReloadTokens() { return api_auth_->Reload(); }
  void Shutdown();
  void Wait();

  Registry& registry() { return *registry_; }
  Store& store() { return *store_; }

 private:
  void ExposeMetrics();

  const ServerOptions options_;
  common::RealClock clock_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<EdgeLinkService> edge_link_;
  std::unique_ptr<RegistryApiService> api_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> edge_server_;  // only with edge_listen
  std::unique_ptr<ApiAuth> api_auth_;
  std::unique_ptr<EdgeAuth> edge_auth_;
  int edge_port_ = 0;
  common::MetricsRegistry metrics_;
  common::HttpServer http_;
  int metrics_port_ = -1;
  std::atomic<bool> stopping_{false};
  std::thread ticker_;
  std::thread deadlines_;  // Registry::ExpireWaiters loop, independent of the store
  std::thread router_;     // PumpRouted loop, with a store that routes between replicas
};

}  // namespace tether::registry

#endif  // TETHER_REGISTRY_SERVICE_SERVER_REGISTRY_SERVER_H_
