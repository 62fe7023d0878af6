#include "registry_service/server/convert.h"

namespace tether::registry {

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

void ToProto(const NodeView& in, v1::Node* out) {
  out->set_node_id(in.node_id);
  out->set_display_name(in.client.display_name);
  out->set_platform(in.client.platform);
  out->set_device_family(in.client.device_family);
  out->set_version(in.client.version);
  out->set_client_id(in.client.client_id);
  for (const auto& c : in.client.commands) out->add_commands(c);
  for (const auto& c : in.client.caps) out->add_caps(c);
  out->set_connected(in.connected);
  out->set_conn_id(in.conn_id);
  out->set_edge_id(in.edge_id);
  out->set_generation(in.generation);
  out->set_connected_at_ms(in.connected_at_ms);
  out->set_last_seen_ms(in.last_seen_ms);
  out->set_paired(in.paired);
  out->set_remote_addr(in.remote_addr);
  out->set_public_key(in.public_key);
}

void ToProto(const PresenceEvent& in, v1::PresenceEvent* out) {
  out->set_revision(in.revision);
  out->set_node_id(in.node_id);
  switch (in.kind) {
    case PresenceKind::kConnected:
      out->set_kind(v1::PresenceEvent::CONNECTED);
      break;
    case PresenceKind::kReplaced:
      out->set_kind(v1::PresenceEvent::REPLACED);
      break;
    case PresenceKind::kDisconnected:
      out->set_kind(v1::PresenceEvent::DISCONNECTED);
      break;
  }
  out->set_reason(in.reason);
  out->set_conn_id(in.conn_id);
  out->set_edge_id(in.edge_id);
  out->set_generation(in.generation);
  out->set_time_ms(in.time_ms);
}

void ToProto(const PairingRequest& in, v1::PairingRequest* out) {
  out->set_request_id(in.request_id);
  out->set_node_id(in.node_id);
  out->set_public_key(in.public_key);
  out->set_display_name(in.display_name);
  out->set_platform(in.platform);
  for (const auto& c : in.commands) out->add_commands(c);
  out->set_remote_addr(in.remote_addr);
  out->set_created_at_ms(in.created_at_ms);
}

void ToProto(const Device& in, v1::Device* out) {
  out->set_node_id(in.node_id);
  out->set_public_key(in.public_key);
  out->set_approved_at_ms(in.approved_at_ms);
  out->set_approved_by(in.approved_by);
}

ConnectionSpec FromProto(const v1::ConnectionOpened& in, const std::string& edge_id,
                         const std::string& epoch) {
  ConnectionSpec s;
  s.conn_id = in.conn_id();
  s.node_id = in.node_id();
  s.edge_id = edge_id;  // from the attached stream, never from the message
  s.edge_epoch = epoch;
  s.public_key = in.public_key();
  s.remote_addr = in.remote_addr();
  s.device_token = in.device_token();
  s.shared_token_ok = in.shared_token_ok();
  s.loopback = in.loopback();
  const v1::ClientInfo& c = in.client();
  s.client.client_id = c.client_id();
  s.client.display_name = c.display_name();
  s.client.version = c.version();
  s.client.platform = c.platform();
  s.client.device_family = c.device_family();
  s.client.mode = c.mode();
  s.client.instance_id = c.instance_id();
  s.client.caps.assign(c.caps().begin(), c.caps().end());
  s.client.commands.assign(c.commands().begin(), c.commands().end());
  return s;
}

void ToProto(const ConnectionSpec& in, v1::ConnectionOpened* out) {
  out->set_conn_id(in.conn_id);
  out->set_node_id(in.node_id);
  out->set_public_key(in.public_key);
  out->set_remote_addr(in.remote_addr);
  out->set_device_token(in.device_token);
  out->set_shared_token_ok(in.shared_token_ok);
  out->set_loopback(in.loopback);
  v1::ClientInfo* c = out->mutable_client();
  c->set_client_id(in.client.client_id);
  c->set_display_name(in.client.display_name);
  c->set_version(in.client.version);
  c->set_platform(in.client.platform);
  c->set_device_family(in.client.device_family);
  c->set_mode(in.client.mode);
  c->set_instance_id(in.client.instance_id);
  for (const auto& x : in.client.caps) c->add_caps(x);
  for (const auto& x : in.client.commands) c->add_commands(x);
}

grpc::StatusCode InvokeStatusCode(InvokeCode code) {
  switch (code) {
    case InvokeCode::kOk:
      return grpc::StatusCode::OK;
    case InvokeCode::kNodeError:
      return grpc::StatusCode::UNKNOWN;
    case InvokeCode::kNotConnected:
      return grpc::StatusCode::UNAVAILABLE;
    case InvokeCode::kTimeout:
      return grpc::StatusCode::DEADLINE_EXCEEDED;
    case InvokeCode::kDisconnected:
      return grpc::StatusCode::ABORTED;
    case InvokeCode::kCommandNotAllowed:
      return grpc::StatusCode::PERMISSION_DENIED;
    case InvokeCode::kCancelled:
      return grpc::StatusCode::CANCELLED;
    case InvokeCode::kInvalid:
      return grpc::StatusCode::INVALID_ARGUMENT;
  }
  return grpc::StatusCode::INTERNAL;
}

v1::InvokeError ToInvokeError(const InvokeResult& result) {
  v1::InvokeError e;
  switch (result.outcome.code) {
    case InvokeCode::kOk:
      e.set_code(v1::InvokeError::CODE_UNSPECIFIED);
      break;
    case InvokeCode::kNodeError:
      e.set_code(v1::InvokeError::NODE_ERROR);
      break;
    case InvokeCode::kNotConnected:
      e.set_code(v1::InvokeError::NOT_CONNECTED);
      break;
    case InvokeCode::kTimeout:
      e.set_code(v1::InvokeError::TIMEOUT);
      break;
    case InvokeCode::kDisconnected:
      e.set_code(v1::InvokeError::DISCONNECTED);
      break;
    case InvokeCode::kCommandNotAllowed:
      e.set_code(v1::InvokeError::COMMAND_NOT_ALLOWED);
      break;
    case InvokeCode::kCancelled:
      e.set_code(v1::InvokeError::CANCELLED);
      break;
    case InvokeCode::kInvalid:
      e.set_code(v1::InvokeError::INVALID);
      break;
  }
  e.set_message(result.outcome.message);
  e.set_node_error_code(result.outcome.node_error_code);
  e.set_invoke_id(result.invoke_id);
  e.set_effective_timeout_ms(result.effective_timeout_ms);
  return e;
}

}  // namespace tether::registry
