#include "registry_service/server/registry_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <chrono>

#include "common/log.h"
#include "registry_service/store/memory_store.h"
#include "registry_service/store/redis_store.h"

namespace tether::registry {

RegistryServer::RegistryServer(const ServerOptions& options) : options_(options) {}

RegistryServer::~RegistryServer() { Shutdown(); }

absl::StatusOr<int> RegistryServer::Start() {
  if (!options_.dev_mode && options_.api_tokens_file.empty()) {
    return absl::InvalidArgumentError(
        "the public API needs --api_tokens_file (or --dev_mode for development)");
  }
  if (!options_.dev_mode && options_.edge_secret.empty() && options_.edge_client_ca_pem.empty()) {
    return absl::InvalidArgumentError(
        "edges must authenticate: set --edge_secret_file (or TETHER_EDGE_SECRET), or "
        "--edge_client_ca_file for mutual TLS (or --dev_mode for development)");
  }
  if (!options_.edge_client_ca_pem.empty() && options_.tls_cert_pem.empty()) {
    return absl::InvalidArgumentError("--edge_client_ca_file needs --tls_cert_file/--tls_key_file");
  }
  api_auth_ = std::make_unique<ApiAuth>(options_.api_tokens_file, options_.dev_mode);
  if (absl::Status s = api_auth_->Reload(); !s.ok()) return s;
  edge_auth_ = std::make_unique<EdgeAuth>(options_.edge_secret);

  if (options_.store_url == "memory") {
    store_ = std::make_unique<MemoryStore>(options_.store, clock_.NowMs());
  } else {
    auto address = ParseRedisUrl(options_.store_url);
    if (!address.ok()) return address.status();
    RedisStoreOptions redis;
    redis.client.address = *address;
    redis.client.password = options_.redis_password;
    redis.client.tls = options_.redis_tls;
    redis.client.connect_timeout = absl::Milliseconds(options_.redis_timeout_ms);
    redis.client.command_timeout = absl::Milliseconds(options_.redis_timeout_ms);
    redis.connections = options_.redis_connections;
    auto store = std::make_unique<RedisStore>(options_.store, redis);
    if (absl::Status s = store->Connect(); !s.ok()) return s;
    common::Log(common::LogLevel::kInfo, "redis_store_connected",
                {{"replica_id", store->replica_id()}, {"url", options_.store_url}});
    store_ = std::move(store);
  }
  RegistryOptions registry_options = options_.registry;
  registry_options.lease_ttl_ms = options_.store.lease_ttl_ms;
  registry_options.answer_margin_ms = 2 * options_.tick_ms;
  registry_ = std::make_unique<Registry>(*store_, clock_, registry_options);
  edge_link_ = std::make_unique<EdgeLinkService>(
      *registry_, *edge_auth_, !options_.edge_client_ca_pem.empty(), options_.store.lease_ttl_ms,
      options_.store.superseded_grace_ms, options_.max_registration_wait_ms);
  api_ = std::make_unique<RegistryApiService>(*registry_, *api_auth_);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  auto credentials = [this](bool for_edges) -> std::shared_ptr<grpc::ServerCredentials> {
    if (options_.tls_cert_pem.empty()) return grpc::InsecureServerCredentials();
    grpc::SslServerCredentialsOptions ssl(
        for_edges && !options_.edge_client_ca_pem.empty()
            ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
            : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    ssl.pem_key_cert_pairs.push_back({options_.tls_key_pem, options_.tls_cert_pem});
    if (for_edges) ssl.pem_root_certs = options_.edge_client_ca_pem;
    return grpc::SslServerCredentials(ssl);
  };
  auto configure = [](grpc::ServerBuilder& b) {
    // Node results and events reach 25 MiB (the edge's --max_payload); gRPC's default 4 MiB
    // would end a whole edge's stream on one large frame.
    b.SetMaxReceiveMessageSize(64 << 20);
    // Edges send a heartbeat every lease/4; keep idle public callers' streams alive too.
    b.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 20'000);
    b.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    b.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
    b.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  };
  const bool split = !options_.edge_listen.empty();
  if (!split && !options_.edge_client_ca_pem.empty()) {
    return absl::InvalidArgumentError("mutual TLS for edges needs its own port: --edge_listen");
  }
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options_.listen, credentials(/*for_edges=*/!split), &port);
  builder.RegisterService(api_.get());
  if (!split) builder.RegisterService(edge_link_.get());
  configure(builder);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port == 0) {
    return absl::UnavailableError("cannot listen on " + options_.listen);
  }
  edge_port_ = port;
  if (split) {
    grpc::ServerBuilder edge_builder;
    edge_builder.AddListeningPort(options_.edge_listen, credentials(/*for_edges=*/true),
                                  &edge_port_);
    edge_builder.RegisterService(edge_link_.get());
    configure(edge_builder);
    edge_server_ = edge_builder.BuildAndStart();
    if (edge_server_ == nullptr || edge_port_ == 0) {
      return absl::UnavailableError("cannot listen on " + options_.edge_listen);
    }
  }
  if (options_.metrics_port >= 0) {
    ExposeMetrics();
    http_.Handle("/metrics", [this] {
      return common::HttpResponse{200, "text/plain; version=0.0.4", metrics_.Render()};
    });
    http_.Handle("/healthz", [] { return common::HttpResponse{200, "text/plain", "ok\n"}; });
    http_.Handle("/readyz", [this] {
      if (stopping_.load()) return common::HttpResponse{503, "text/plain", "stopping\n"};
      if (registry_->Recovering()) {
        return common::HttpResponse{503, "text/plain",
                                    std::string(registry_->ServingStatus().message()) + "\n"};
      }
      return common::HttpResponse{200, "text/plain", "ready\n"};
    });
    auto mport = http_.Start(options_.metrics_host, options_.metrics_port);
    if (!mport.ok()) return mport.status();
    metrics_port_ = *mport;
  }
  // gRPC health: the server as a whole ("") is SERVING while the process runs (liveness and
  // startup probes ask it; a recovering registry must not be restarted, nor must edges wait for
  // it before they attach, which is how recovery ends). The API service, kApiHealthService, is
  // NOT_SERVING while recovering; the ticker flips it once recovery ends (it never returns).
  bool serving = !registry_->Recovering();
  server_->GetHealthCheckService()->SetServingStatus(kApiHealthService, serving);
  ticker_ = std::thread([this, serving]() mutable {
    while (!stopping_.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(options_.tick_ms));
      registry_->Tick();
      if (!serving && !registry_->Recovering()) {
        serving = true;
        server_->GetHealthCheckService()->SetServingStatus(kApiHealthService, true);
      }
    }
  });
  // Callers waiting past their invoke's deadline are answered from here, not from the ticker:
  // a tick waits for the store's expiry, which an overloaded Redis can hold up for seconds, and
  // the callers' answers must not wait for it (no store call here).
  deadlines_ = std::thread([this] {
    while (!stopping_.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(options_.tick_ms));
      registry_->ExpireWaiters();
    }
  });
  if (registry_->Routed()) {
    // Delivers what any replica decided for the edges attached here, and the outcomes other
    // replicas decided for callers waiting here. A blocking read wakes as soon as something
    // is queued; the bound only lets a new edge's outbox join the read and shutdown be seen.
    router_ = std::thread([this] {
      while (!stopping_.load()) {
        if (!registry_->PumpRouted(100).ok()) {
          std::this_thread::sleep_for(std::chrono::milliseconds(100));  // store unreachable
        }
      }
    });
  }
  return port;
}

void RegistryServer::ExposeMetrics() {
  const RegistryStats& s = registry_->stats();
  metrics_.Expose("tether_registry_registrations_total{result=\"granted\"}",
                  "Connection registrations decided by the registry", &s.registrations_granted);
  metrics_.Expose("tether_registry_registrations_total{result=\"refused\"}", "",
                  &s.registrations_refused);
  metrics_.Expose("tether_registry_registrations_total{result=\"shed\"}", "",
                  &s.registrations_shed);
  metrics_.Expose("tether_registry_closes_total{kind=\"owner\"}",
                  "Connection closes reported by edges", &s.closes_of_owner);
  metrics_.Expose("tether_registry_closes_total{kind=\"stale_ignored\"}", "",
                  &s.stale_closes_ignored);
  metrics_.Expose("tether_registry_superseded_retired_total",
                  "Replaced connections the registry told their edge to close",
                  &s.superseded_retired);
  metrics_.Expose("tether_registry_results_ignored_total",
                  "Invoke results that matched no pending invoke (late, duplicate, wrong conn)",
                  &s.results_ignored);
  metrics_.Expose("tether_registry_resyncs_total", "Edge resyncs", &s.resyncs);
  metrics_.Expose("tether_registry_streams_cut_total{stream=\"edge_link\"}",
                  "Streams cut off because their reader was too slow (queue over its bound)",
                  &s.edge_links_cut);
  metrics_.Expose("tether_registry_streams_cut_total{stream=\"watch\"}", "", &s.watchers_cut);
  for (int i = 0; i < 4; ++i) {
    metrics_.Expose(
        std::string("tether_registry_disconnects_total{reason=\"") + kDisconnectReasons[i] + "\"}",
        "Nodes that lost their owning connection (edge_lost: lease expiry)", &s.disconnects[i]);
  }
  for (int i = 0; i < 8; ++i) {
    metrics_.Expose(std::string("tether_registry_invokes_total{outcome=\"") +
                        InvokeCodeName(static_cast<InvokeCode>(i)) + "\"}",
                    "Invokes by outcome", &s.invokes[i]);
  }
  metrics_.Expose("tether_registry_invoke_latency_ms",
                  "Time from dispatch to the end of an invoke, in milliseconds",
                  &s.invoke_latency_ms);
  metrics_.AddGauge("tether_registry_connected_nodes", "Nodes with an owning connection",
                    [&s] { return static_cast<double>(s.connected_nodes.load()); });
  metrics_.AddGauge("tether_registry_edges_attached", "Edges with an attached EdgeLink stream",
                    [&s] { return static_cast<double>(s.edges_attached.load()); });
  metrics_.AddGauge("tether_registry_presence_watchers", "Open WatchPresence streams",
                    [&s] { return static_cast<double>(s.watchers.load()); });
  // The store's bounds (for Redis: counted in Redis, so every replica shows the cluster's
  // total; sum one replica's, not all of them).
  Store* store = store_.get();
  const std::pair<const char*, int64_t StoreDrops::*> drops[] = {
      {"outcome_forgotten", &StoreDrops::outcomes_forgotten},
      {"node_pruned", &StoreDrops::nodes_pruned},
      {"revocation_forgotten", &StoreDrops::revocations_forgotten},
      {"pairing_refused", &StoreDrops::pairing_refused},
  };
  for (const auto& [what, field] : drops) {
    metrics_.AddGauge(
        std::string("tether_registry_store_dropped_total{what=\"") + what + "\"}",
        what == drops[0].first
            ? "What the store's bounds dropped or refused: idempotency outcomes forgotten early "
              "(--idempotency_max_bytes), node records pruned (--node_retention_ms), "
              "revocations forgotten (--max_revocations), pairing requests refused (too many "
              "pending)"
            : "",
        [store, field = field] { return static_cast<double>(store->Dropped().*field); });
  }
}

void RegistryServer::Shutdown() {
  if (stopping_.exchange(true)) return;
  const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(2);
  if (edge_server_ != nullptr) edge_server_->Shutdown(deadline);
  if (server_ != nullptr) server_->Shutdown(deadline);
  if (ticker_.joinable()) ticker_.join();
  if (deadlines_.joinable()) deadlines_.join();
  if (router_.joinable()) router_.join();
  http_.Stop();
}

void RegistryServer::Wait() {
  if (server_ != nullptr) server_->Wait();
}

}  // namespace tether::registry
