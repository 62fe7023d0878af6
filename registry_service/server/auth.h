// Who may call what: bearer tokens with scopes for the public API, a shared secret for edges.
#ifndef TETHER_REGISTRY_SERVICE_SERVER_AUTH_H_
#define TETHER_REGISTRY_SERVICE_SERVER_AUTH_H_

#include <grpcpp/grpcpp.h>

#include <optional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace tether::registry {

// OpenClaw's operator scopes, as the public API uses them. kAdmin implies all others.
enum class Scope { kRead, kWrite, kPairing, kAdmin };
const char* ScopeName(Scope scope);

// Bearer tokens for the public API, read from a file of lines
//   <token> <scope>[,<scope>...] [<name>]
// ('#' starts a comment). Only SHA-256 digests of tokens are kept in memory. Reload() swaps in
// a new file atomically (SIGHUP); a bad file keeps the old tokens. Thread-safe.
class ApiAuth {
 public:
  // `path` empty with `open` true: development mode, every call is allowed.
  ApiAuth(std::string path, bool open);

  absl::Status Reload() ABSL_LOCKS_EXCLUDED(mu_);
  // OK, UNAUTHENTICATED (no or unknown token) or PERMISSION_DENIED (naming the scope needed).
  // `caller`, if set, receives who is calling: the token's digest (empty in development mode).
  grpc::Status Authorize(const grpc::ServerContextBase& ctx, Scope needed,
                         std::string* caller = nullptr) const ABSL_LOCKS_EXCLUDED(mu_);
  bool open() const { return open_; }

 private:
  struct Grant {
    unsigned scopes = 0;  // bit per Scope
    std::string name;
  };
  const std::string path_;
  const bool open_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Grant> by_digest_ ABSL_GUARDED_BY(mu_);
};

// The secret edges present in EdgeLink metadata (`x-tether-edge-secret`), compared in constant
// time. Empty: no secret required (mutual TLS may authenticate edges instead). Thread-safe.
class EdgeAuth {
 public:
  explicit EdgeAuth(std::string secret) : secret_(std::move(secret)) {}
  grpc::Status Authorize(const grpc::ServerContextBase& ctx) const;
  bool required() const { return !secret_.empty(); }

 private:
  const std::string secret_;
};

inline constexpr char kEdgeSecretHeader[] = "x-tether-edge-secret";

}  // namespace tether::registry

#endif  // TETHER_REGISTRY_SERVICE_SERVER_AUTH_H_
