// The node side of the handshake as pure functions: reading connect.challenge and building the
// signed connect params exactly as OpenClaw's headless node host does (node-protocol.md 3, 4).
#ifndef TETHER_WS_EDGE_CLIENT_CONNECT_REQUEST_H_
#define TETHER_WS_EDGE_CLIENT_CONNECT_REQUEST_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "ws_edge/protocol/device_identity.h"

namespace tether::edge::client {

// What a node says about itself in `connect`. Defaults are the Linux node host's.
struct ConnectRequestOptions {
  std::string client_id = "node-host";
  std::string client_mode = "node";
  std::string role = "node";
  std::vector<std::string> scopes;
  std::string display_name = "tether-node";
  std::string version = "2026.9.6";
  std::string instance_id;  // empty: a random UUID per request
  std::string platform = "linux";
  std::string device_family = "Linux";
  std::vector<std::string> caps = {"system"};
  std::vector<std::string> commands = {"system.run", "system.which"};
  std::optional<std::string> path_env;
  int64_t min_protocol = 4;
  int64_t max_protocol = 4;
};

struct Challenge {
  std::string nonce;  // trimmed
  int64_t ts_ms = 0;
};

// Reads a connect.challenge payload as the node host does: the nonce must be non-empty after
// trimming, and ts a safe non-negative integer.
absl::StatusOr<Challenge> ParseChallenge(const nlohmann::json& payload);

// The params of `connect`, signed (v3) over the challenge with signedAt = challenge ts. The
// shared token goes in auth.token; without one, a stored device token goes in auth.deviceToken;
// with neither, auth is left out. The signature binds the token sent.
nlohmann::json BuildConnectParams(const ConnectRequestOptions& options,
                                  const protocol::Ed25519Identity& identity,
                                  const Challenge& challenge,
                                  const std::optional<std::string>& shared_token,
                                  const std::optional<std::string>& device_token);

// Ed25519 signature of a message with the node's key, base64url without padding.
using Signer = std::function<std::string(absl::string_view message)>;

// The same, signing with `sign` (which must hold `identity`'s key), e.g. a key kept ready by
// DeviceCredentials instead of rebuilt from the seed for every signature.
nlohmann::json BuildConnectParams(const ConnectRequestOptions& options,
                                  const protocol::Ed25519Identity& identity,
                                  const Challenge& challenge,
                                  const std::optional<std::string>& shared_token,
                                  const std::optional<std::string>& device_token,
                                  const Signer& sign);

}  // namespace tether::edge::client

#endif  // TETHER_WS_EDGE_CLIENT_CONNECT_REQUEST_H_
