// Options every store implementation honours.
#ifndef TETHER_REGISTRY_SERVICE_STORE_STORE_OPTIONS_H_
#define TETHER_REGISTRY_SERVICE_STORE_STORE_OPTIONS_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace tether::registry {

struct StoreOptions {
  int64_t lease_ttl_ms = 10'000;               // an edge's lease lasts this long after a renewal
  int64_t superseded_grace_ms = 10'000;        // a replaced connection is closed after this at most
  size_t presence_history = 100'000;           // presence events kept for resuming watchers
  int64_t idempotency_window_ms = 60'000;      // finished invokes replayable by key for this long
  size_t idempotency_max_bytes = 256u << 20;   // and at most this many payload bytes (oldest go)
  bool auto_approve_all = false;               // pair every new device key (local development)
  bool auto_approve_loopback = false;          // pair devices connecting from loopback
  size_t max_pairing_requests = 10'000;        // pending requests kept; more are refused
  int64_t pairing_request_ttl_ms = 3'600'000;  // unanswered requests are dropped after this
  // Records of nodes disconnected this long are dropped (ListNodes/GetNode forget them; their
  // pairing and token stay): the table does not grow with every node that ever connected.
  int64_t node_retention_ms = 30LL * 24 * 3'600'000;
  // Revocations remembered by node id (so an edge's resync cannot pair a revoked key again);
  // past this many the oldest are forgotten, and a resync may then no longer re-pair any
  // connection granted before the newest forgotten revocation (see Store::Dropped).
  size_t max_revocations = 100'000;
};

// Why a caller's idempotency key was refused: it named another request of the same caller.
inline std::string KeyReusedMessage(const StoreOptions& o) {
  return "idempotency key already used by this caller for a different request (another command "
         "or other params) within the last " +
         std::to_string(o.idempotency_window_ms) +
         " ms after it ended; a retry must repeat the request exactly, a new request needs a new "
         "key";
}

}  // namespace tether::registry

#endif  // TETHER_REGISTRY_SERVICE_STORE_STORE_OPTIONS_H_
