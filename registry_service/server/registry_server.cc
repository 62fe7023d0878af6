#include "registry_service/server/registry_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <chrono>

#include "registry_service/store/memory_store.h"

namespace tether::registry {

RegistryServer::RegistryServer(const ServerOptions& options) : options_(options) {}

RegistryServer::~RegistryServer() { Shutdown(); }

absl::StatusOr<int> RegistryServer::Start() {
  store_ = std::make_unique<MemoryStore>(options_.store, clock_.NowMs());
  registry_ = std::make_unique<Registry>(*store_, clock_, options_.registry);
  edge_link_ = std::make_unique<EdgeLinkService>(*registry_, options_.store.lease_ttl_ms,
                                                 options_.store.superseded_grace_ms);
  api_ = std::make_unique<RegistryApiService>(*registry_);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options_.listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(edge_link_.get());
  builder.RegisterService(api_.get());
  // Edges send a heartbeat every lease/4; keep idle public callers' streams alive too.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 20'000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port == 0) {
    return absl::UnavailableError("cannot listen on " + options_.listen);
  }
  ticker_ = std::thread([this] {
    while (!stopping_.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(options_.tick_ms));
      registry_->Tick();
    }
  });
  return port;
}

void RegistryServer::Shutdown() {
  if (stopping_.exchange(true)) return;
  if (server_ != nullptr) {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }
  if (ticker_.joinable()) ticker_.join();
}

void RegistryServer::Wait() {
  if (server_ != nullptr) server_->Wait();
}

}  // namespace tether::registry
