// ConnectParams: the params of a node's `connect` request (node-protocol.md section 3.1).
#ifndef TETHER_WS_EDGE_PROTOCOL_CONNECT_PARAMS_H_
#define TETHER_WS_EDGE_PROTOCOL_CONNECT_PARAMS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace tether::edge::protocol {

struct ClientInfo {
  std::string id;  // one of the closed enum of client ids
  std::optional<std::string> display_name;
  std::string version;
  std::optional<std::string> build_id;
  std::string platform;
  std::optional<std::string> device_family;
  std::optional<std::string> model_identifier;
  std::optional<std::string> time_zone;
  std::string mode;  // one of the closed enum of client modes
  std::optional<std::string> instance_id;
};

// `device`: the key holder's proof over the challenge nonce (section 4).
struct DeviceProof {
  std::string id;
  std::string public_key;
  std::string signature;
  int64_t signed_at_ms = 0;  // saturated to int64 when larger
  std::string nonce;
};

struct ConnectAuth {
  std::optional<std::string> token;
  std::optional<std::string> bootstrap_token;
  std::optional<std::string> device_token;
  std::optional<std::string> password;
  std::optional<std::string> approval_runtime_token;
  std::optional<std::string> agent_runtime_identity_token;
};

struct ConnectParams {
  int64_t min_protocol = 0;
  int64_t max_protocol = 0;
  ClientInfo client;
  std::vector<std::string> caps;      // absent = empty
  std::vector<std::string> commands;  // absent = empty
  // Opaque to the edge (their shape is owned by features Tether does not serve); null = absent.
  nlohmann::json computer_use;
  nlohmann::json worker_runs;
  nlohmann::json model_catalog;
  std::optional<std::map<std::string, bool>> permissions;
  std::optional<std::string> path_env;
  std::string role = "operator";  // the protocol's default
  std::vector<std::string> scopes;
  std::optional<DeviceProof> device;
  std::optional<ConnectAuth> auth;
  std::optional<std::string> locale;
  std::optional<std::string> user_agent;
};

// Validates a closed ConnectParams object: unknown keys, wrong types, empty required strings and
// values outside the client id/mode enums are rejected with InvalidArgument, whose message the
// edge sends as "invalid connect params: <message>".
absl::StatusOr<ConnectParams> ParseConnectParams(const nlohmann::json& params);

// True for the values of the closed enums in section 3.1.
bool IsKnownClientId(const std::string& id);
bool IsKnownClientMode(const std::string& mode);

}  // namespace tether::edge::protocol

#endif  // TETHER_WS_EDGE_PROTOCOL_CONNECT_PARAMS_H_
