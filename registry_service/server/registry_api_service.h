// RegistryApiService: the public tether.v1.Registry gRPC API, a thin shell over Registry.
#ifndef TETHER_REGISTRY_SERVICE_SERVER_REGISTRY_API_SERVICE_H_
#define TETHER_REGISTRY_SERVICE_SERVER_REGISTRY_API_SERVICE_H_

#include <functional>
#include <memory>

#include "proto/tether/v1/registry.grpc.pb.h"
#include "registry_service/core/registry.h"
#include "registry_service/server/auth.h"
#include "registry_service/server/worker_pool.h"

namespace tether::registry {

// Converts, delegates, finishes. Calls that wait for the store run on the service's worker
// threads (owned), never on gRPC's: a slow store must not starve gRPC's transport (edges'
// keepalives and streams share it). Holds the Registry by reference (not owned; must outlive
// the server). Thread-safe. While the Registry recovers (Registry::ServingStatus), ListNodes,
// GetNode, GetPresence, WatchPresence and InvokeNode answer UNAVAILABLE with `retry-after-ms`;
// pairing and device calls are served (they do not depend on the edges' reports).
class RegistryApiService final : public v1::Registry::CallbackService {
 public:
  // `auth` is not owned and must outlive the service.
  RegistryApiService(Registry& registry, const ApiAuth& auth, int worker_threads = 16)
      : registry_(registry), auth_(auth), pool_(std::make_unique<WorkerPool>(worker_threads)) {}

  grpc::ServerUnaryReactor* ListNodes(grpc::CallbackServerContext* ctx,
                                      const v1::ListNodesRequest* req,
                                      v1::ListNodesResponse* resp) override;
  grpc::ServerUnaryReactor* GetNode(grpc::CallbackServerContext* ctx, const v1::GetNodeRequest* req,
                                    v1::Node* resp) override;
  grpc::ServerUnaryReactor* InvokeNode(grpc::CallbackServerContext* ctx,
                                       const v1::InvokeNodeRequest* req,
                                       v1::InvokeNodeResponse* resp) override;
  grpc::ServerUnaryReactor* GetPresence(grpc::CallbackServerContext* ctx,
                                        const v1::GetPresenceRequest* req,
                                        v1::GetPresenceResponse* resp) override;
  grpc::ServerWriteReactor<v1::PresenceEvent>* WatchPresence(
      grpc::CallbackServerContext* ctx, const v1::WatchPresenceRequest* req) override;
  grpc::ServerUnaryReactor* ListPairingRequests(grpc::CallbackServerContext* ctx,
                                                const v1::ListPairingRequestsRequest* req,
                                                v1::ListPairingRequestsResponse* resp) override;
  grpc::ServerUnaryReactor* ApprovePairing(grpc::CallbackServerContext* ctx,
                                           const v1::ApprovePairingRequest* req,
                                           v1::ApprovePairingResponse* resp) override;
  grpc::ServerUnaryReactor* RejectPairing(grpc::CallbackServerContext* ctx,
                                          const v1::RejectPairingRequest* req,
                                          v1::RejectPairingResponse* resp) override;
  grpc::ServerUnaryReactor* RevokeDevice(grpc::CallbackServerContext* ctx,
                                         const v1::RevokeDeviceRequest* req,
                                         v1::RevokeDeviceResponse* resp) override;
  grpc::ServerUnaryReactor* ListDevices(grpc::CallbackServerContext* ctx,
                                        const v1::ListDevicesRequest* req,
                                        v1::ListDevicesResponse* resp) override;

 private:
  // OK when the registry serves ownership reads and invokes; while it recovers, UNAVAILABLE
  // with its message and the trailing metadata `retry-after-ms`.
  grpc::Status Serving(grpc::CallbackServerContext* ctx) const;
  // Runs `work` (it fills the response and returns the call's status) on the worker pool, then
  // finishes the call with that status.
  grpc::ServerUnaryReactor* Offload(grpc::CallbackServerContext* ctx,
                                    std::function<grpc::Status()> work);

  Registry& registry_;
  const ApiAuth& auth_;
  std::unique_ptr<WorkerPool> pool_;
};

}  // namespace tether::registry

#endif  // TETHER_REGISTRY_SERVICE_SERVER_REGISTRY_API_SERVICE_H_
