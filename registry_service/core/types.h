// Plain value types shared by the registry core, its stores and its transport shells.
#ifndef TETHER_REGISTRY_SERVICE_CORE_TYPES_H_
#define TETHER_REGISTRY_SERVICE_CORE_TYPES_H_

#include <cstdint>
#include <string>
#include <vector>

namespace tether::registry {

// What a node said about itself in its connect request (OpenClaw ConnectParams.client & co).
struct ClientMetadata {
  std::string client_id;
  std::string display_name;
  std::string version;
  std::string platform;
  std::string device_family;
  std::string mode;
  std::string instance_id;
  std::vector<std::string> caps;
  std::vector<std::string> commands;
};

// A connection as its edge reports it. conn_id and node_id come from the edge (conn_id
// generated there, node_id recomputed from the verified key), never from the node's payload.
struct ConnectionSpec {
  std::string conn_id;
  std::string node_id;
  std::string edge_id;
  std::string edge_epoch;
  std::string public_key;  // raw Ed25519, base64url
  std::string remote_addr;
  ClientMetadata client;
  std::string device_token;  // the device token the node presented, if any
  bool shared_token_ok = false;
  bool loopback = false;
};

// Why a connection or node stopped being owned.
inline constexpr char kReasonDisconnect[] = "disconnect";
inline constexpr char kReasonEdgeLost[] = "edge_lost";
inline constexpr char kReasonEdgeDrain[] = "edge_drain";
inline constexpr char kReasonRevoked[] = "revoked";
inline constexpr char kReasonSuperseded[] = "superseded";

enum class PresenceKind { kConnected, kReplaced, kDisconnected };

struct PresenceEvent {
  uint64_t revision = 0;
  std::string node_id;
  PresenceKind kind = PresenceKind::kConnected;
  std::string reason;  // for kDisconnected
  std::string conn_id;
  std::string edge_id;
  uint64_t generation = 0;
  int64_t time_ms = 0;
};

// A node as the public API shows it.
struct NodeView {
  std::string node_id;
  ClientMetadata client;
  std::string public_key;
  std::string remote_addr;
  bool connected = false;
  std::string conn_id;
  std::string edge_id;
  uint64_t generation = 0;
  int64_t connected_at_ms = 0;
  int64_t last_seen_ms = 0;
  bool paired = false;
};

enum class InvokeCode {
  kOk,
  kNodeError,
  kNotConnected,
  kTimeout,
  kDisconnected,
  kCommandNotAllowed,
  kCancelled,
  kInvalid,
};

const char* InvokeCodeName(InvokeCode code);

// How an invoke ended.
struct InvokeOutcome {
  InvokeCode code = InvokeCode::kOk;
  std::string payload_json;     // kOk: the node's result
  std::string node_error_code;  // kNodeError
  std::string message;
  std::string conn_id;  // the connection it was sent on, if it was sent
  uint64_t generation = 0;
};

// An outcome that is not the node's answer.
InvokeOutcome Failure(InvokeCode code, std::string message);

// An invoke the registry sent (or will send) to a connection.
struct Dispatch {
  std::string invoke_id;
  std::string node_id;
  std::string conn_id;
  std::string edge_id;
  uint64_t generation = 0;
  std::string command;
  std::string params_json;
  std::string idempotency_key;
  bool remember_outcome = false;  // the caller chose the key: replay the outcome for a while
  int64_t started_ms = 0;
  int64_t deadline_ms = 0;
  int64_t timeout_ms = 0;  // effective timeout from the start of the call
};

// Outcomes larger than this are not kept for idempotent replay (memory stays bounded).
inline constexpr size_t kMaxRememberedPayloadBytes = 1 << 20;

struct Device {
  std::string node_id;
  std::string public_key;
  int64_t approved_at_ms = 0;
  std::string approved_by;
};

struct PairingRequest {
  std::string request_id;
  std::string node_id;
  std::string public_key;
  std::string display_name;
  std::string platform;
  std::vector<std::string> commands;
  std::string remote_addr;
  int64_t created_at_ms = 0;
};

}  // namespace tether::registry

#endif  // TETHER_REGISTRY_SERVICE_CORE_TYPES_H_
