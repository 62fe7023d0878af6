// EdgeLinkService: the gRPC shell over Registry for edges' EdgeLink streams.
#ifndef TETHER_REGISTRY_SERVICE_SERVER_EDGE_LINK_SERVICE_H_
#define TETHER_REGISTRY_SERVICE_SERVER_EDGE_LINK_SERVICE_H_

#include <memory>

#include "proto/tether/v1/edge_link.grpc.pb.h"
#include "registry_service/core/registry.h"
#include "registry_service/server/auth.h"
#include "registry_service/server/worker_pool.h"

namespace tether::registry {

// One reactor per edge stream converts EdgeMessages into Registry calls and delivers the
// Registry's commands back down the stream. The calls run on the service's worker threads
// (`worker_threads`, owned), never on gRPC's (see Link in the .cc). Holds the Registry by
// reference (not owned; must outlive the server). Thread-safe, as gRPC requires.
class EdgeLinkService final : public v1::EdgeLink::CallbackService {
 public:
  // Serial lanes per stream: messages of one connection go to lane HashOf(conn id) % kLanes.
  static constexpr int kLanes = 32;

  // `auth` is not owned and must outlive the service. `require_client_cert`: the stream must
  // come over mutual TLS (the transport verified the edge's certificate).
  EdgeLinkService(Registry& registry, const EdgeAuth& auth, bool require_client_cert,
                  int64_t lease_ttl_ms, int64_t superseded_grace_ms,
                  int64_t max_registration_wait_ms = 5000, int worker_threads = 64)
      : registry_(registry),
        auth_(auth),
        require_client_cert_(require_client_cert),
        lease_ttl_ms_(lease_ttl_ms),
        superseded_grace_ms_(superseded_grace_ms),
        max_registration_wait_ms_(max_registration_wait_ms),
        pool_(std::make_unique<WorkerPool>(worker_threads)) {}

  grpc::ServerBidiReactor<v1::EdgeMessage, v1::RegistryMessage>* Connect(
      grpc::CallbackServerContext* context) override;

 private:
  Registry& registry_;
  const EdgeAuth& auth_;
  const bool require_client_cert_;
  const int64_t lease_ttl_ms_;
  const int64_t superseded_grace_ms_;
  // A registration that waited longer than this in its lane is refused (retryable) unread.
  const int64_t max_registration_wait_ms_;
  std::unique_ptr<WorkerPool> pool_;
};

}  // namespace tether::registry

#endif  // TETHER_REGISTRY_SERVICE_SERVER_EDGE_LINK_SERVICE_H_
