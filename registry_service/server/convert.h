// Conversions between the registry core's types and the tether.v1 protos: the gRPC shells'
// one conversion point.
#ifndef TETHER_REGISTRY_SERVICE_SERVER_CONVERT_H_
#define TETHER_REGISTRY_SERVICE_SERVER_CONVERT_H_

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "proto/tether/v1/edge_link.pb.h"
#include "proto/tether/v1/registry.pb.h"
#include "registry_service/core/registry.h"
#include "registry_service/core/types.h"

namespace tether::registry {

// absl::Status and grpc::Status share numeric codes.
grpc::Status ToGrpc(const absl::Status& status);

void ToProto(const NodeView& in, v1::Node* out);
void ToProto(const PresenceEvent& in, v1::PresenceEvent* out);
void ToProto(const PairingRequest& in, v1::PairingRequest* out);
void ToProto(const Device& in, v1::Device* out);
ConnectionSpec FromProto(const v1::ConnectionOpened& in, const std::string& edge_id,
                         const std::string& epoch);
void ToProto(const ConnectionSpec& in, v1::ConnectionOpened* out);

// The gRPC status an invoke outcome maps to (OK only for kOk), and its typed error.
grpc::StatusCode InvokeStatusCode(InvokeCode code);
v1::InvokeError ToInvokeError(const InvokeResult& result);

}  // namespace tether::registry

#endif  // TETHER_REGISTRY_SERVICE_SERVER_CONVERT_H_
