// EdgeLinkService: the gRPC shell over Registry for edges' EdgeLink streams.
#ifndef TETHER_REGISTRY_SERVICE_SERVER_EDGE_LINK_SERVICE_H_
#define TETHER_REGISTRY_SERVICE_SERVER_EDGE_LINK_SERVICE_H_

#include "proto/tether/v1/edge_link.grpc.pb.h"
#include "registry_service/core/registry.h"
#include "registry_service/server/auth.h"

namespace tether::registry {

// One reactor per edge stream converts EdgeMessages into Registry calls and delivers the
// Registry's commands back down the stream. Holds the Registry by reference (not owned; must
// outlive the server). Thread-safe, as gRPC requires.
class EdgeLinkService final : public v1::EdgeLink::CallbackService {
 public:
  // `auth` is not owned and must outlive the service. `require_client_cert`: the stream must
  // come over mutual TLS (the transport verified the edge's certificate).
  EdgeLinkService(Registry& registry, const EdgeAuth& auth, bool require_client_cert,
                  int64_t lease_ttl_ms, int64_t superseded_grace_ms)
      : registry_(registry),
        auth_(auth),
        require_client_cert_(require_client_cert),
        lease_ttl_ms_(lease_ttl_ms),
        superseded_grace_ms_(superseded_grace_ms) {}

  grpc::ServerBidiReactor<v1::EdgeMessage, v1::RegistryMessage>* Connect(
      grpc::CallbackServerContext* context) override;

 private:
  Registry& registry_;
  const EdgeAuth& auth_;
  const bool require_client_cert_;
  const int64_t lease_ttl_ms_;
  const int64_t superseded_grace_ms_;
};

}  // namespace tether::registry

#endif  // TETHER_REGISTRY_SERVICE_SERVER_EDGE_LINK_SERVICE_H_
