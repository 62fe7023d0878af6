// Store: the registry's ownership decisions, run atomically where the state lives.
//
// The seam is the set of decisions (register, close, start/settle an invoke, expire, resync),
// not get/put of records: with several registry replicas no replica's memory may decide who
// owns a node, so each decision runs as one atomic step inside the store (in process for the
// memory store, as a script for Redis). Every decision reports what it changed as Effects,
// which the caller (Registry) turns into notifications after the decision returned.
#ifndef TETHER_REGISTRY_SERVICE_CORE_STORE_H_
#define TETHER_REGISTRY_SERVICE_CORE_STORE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "registry_service/core/types.h"

namespace tether::registry {

// Something the edge holding a connection must be told.
struct EdgeCommand {
  enum class Kind {
    kSuperseded,  // the connection was replaced; close it after `grace_ms` at the latest
    kClose,       // close it now, for `reason`
    kCancel,      // stop working on `invoke_id` (it timed out or was cancelled)
  };
  Kind kind = Kind::kClose;
  std::string edge_id;
  std::string conn_id;
  std::string node_id;
  std::string reason;
  std::string invoke_id;
  int64_t grace_ms = 0;
};

// An invoke that ended during a decision.
struct SettledInvoke {
  Dispatch dispatch;
  InvokeOutcome outcome;
};

// What a decision changed. Appended to, never cleared, by the store.
struct Effects {
  std::vector<PresenceEvent> presence;  // already in the presence log, in revision order
  std::vector<SettledInvoke> settled;
  std::vector<EdgeCommand> to_edges;
};

// What the store's bounds dropped or refused since it started (for the Redis store: since the
// data set was created, across every replica). Each is a counter.
struct StoreDrops {
  int64_t outcomes_forgotten = 0;     // idempotency outcomes forgotten early: byte bound reached
  int64_t nodes_pruned = 0;           // node records past the retention
  int64_t revocations_forgotten = 0;  // revocations past StoreOptions::max_revocations
  int64_t pairing_refused = 0;        // pairing requests refused: too many pending
};

struct RegisterResult {
  bool granted = false;
  uint64_t generation = 0;
  std::string device_token;  // the device's token, to hand to the node in hello-ok
  // When refused: OpenClaw error code, message, details code and pairing request id.
  std::string error_code;
  std::string error_message;
  std::string details_code;
  std::string pairing_request_id;
};

struct CloseResult {
  bool known = false;      // the connection was live in the table
  bool was_owner = false;  // false: a stale close, which changed nothing about the owner
  std::string node_id;
};

struct InvokeStart {
  std::string invoke_id;  // fresh, chosen by the caller
  std::string node_id;
  std::string command;
  std::string params_json;
  std::string idempotency_key;       // never empty (the caller generates one)
  bool remember_outcome = false;     // keep the outcome for replays (the key came from the user)
  std::string node_idempotency_key;  // the key the node sees (the caller's own, unscoped)
  // With a caller's own key: who used it (caller digest + key) and for what (command + params
  // digest). The store refuses (kInvalid) a claim seen within the idempotency window with
  // another fingerprint: the same caller reused the key for a different request. Empty: none.
  std::string key_claim;
  std::string fingerprint;
  int64_t timeout_ms = 0;   // already defaulted and clamped
  int64_t deadline_ms = 0;  // absolute; min(now + timeout, the caller's deadline)
};

struct InvokeStartResult {
  enum class Kind {
    kDispatched,  // new: send `dispatch` to its edge
    kJoined,      // the same key is in flight: wait for `dispatch.invoke_id`
    kReplayed,    // the same key finished recently: `outcome` is its result
    kFailed,      // ended at once: `outcome` (NOT_CONNECTED, COMMAND_NOT_ALLOWED)
  };
  Kind kind = Kind::kFailed;
  Dispatch dispatch;
  InvokeOutcome outcome;
};

struct LiveConnection {
  ConnectionSpec spec;
  uint64_t generation = 0;
  bool superseded = false;  // the edge was told it was replaced: never an owner again
};

struct ResyncResult {
  int kept = 0;
  int closed = 0;
};

struct NodeFilter {
  enum class Connected { kAny, kOnly, kNot };
  enum class Paired { kAny, kOnly, kNot };
  Connected connected = Connected::kAny;
  Paired paired = Paired::kAny;
};

struct NodePage {
  std::vector<NodeView> nodes;
  std::string next_page_token;
};

struct PresenceSnapshot {
  std::vector<NodeView> nodes;  // connected ones
  uint64_t revision = 0;
};

// Where a replica stands in one edge's outbox (stores that route, see RoutesThroughStore).
struct OutboxPosition {
  std::string edge_id;
  std::string position;  // last entry delivered; empty: where the store recorded it (or start)
};

// One message read from an edge's outbox: an invoke to deliver or a command.
struct RoutedMessage {
  std::string edge_id;
  std::string position;  // its place in the outbox
  bool invoke = false;
  Dispatch dispatch;    // invoke (idempotency_key is the one the node sees)
  EdgeCommand command;  // !invoke
};

// What ReadRouted found.
struct RoutedBatch {
  std::vector<RoutedMessage> to_edges;  // per edge in decision order
  std::vector<SettledInvoke> settled;   // for callers waiting on this replica
  std::string inbox_position;           // pass back as `inbox_after` next time
};

// Thread-safe: every method is one atomic decision or a consistent read.
class Store {
 public:
  virtual ~Store() = default;

  // --- Edges -------------------------------------------------------------------------------
  // Creates or renews `edge_id`'s lease. A different epoch than the lease's means the edge
  // restarted: every connection of the old epoch is closed at once (edge_lost).
  virtual absl::Status AttachEdge(const std::string& edge_id, const std::string& epoch,
                                  int64_t now_ms, Effects* effects) = 0;
  // Renews the lease; kFailedPrecondition when the lease is gone or has another epoch.
  virtual absl::Status RenewLease(const std::string& edge_id, const std::string& epoch,
                                  int64_t now_ms) = 0;
  // The edge is shutting down: close its connections (edge_drain) and drop its lease.
  virtual absl::Status DrainEdge(const std::string& edge_id, const std::string& epoch,
                                 int64_t now_ms, Effects* effects) = 0;
  // Reconciles the table with the connections an edge reports alive.
  virtual absl::StatusOr<ResyncResult> Resync(const std::string& edge_id, const std::string& epoch,
                                              const std::vector<LiveConnection>& live,
                                              int64_t now_ms, Effects* effects) = 0;

  // --- Connections -------------------------------------------------------------------------
  // Grants ownership of spec.node_id to spec.conn_id with a new, higher generation, or refuses
  // (pairing, device token).
  virtual absl::StatusOr<RegisterResult> Register(const ConnectionSpec& spec, int64_t now_ms,
                                                  Effects* effects) = 0;
  // The edge saw `conn_id` close. Only the owner's close changes presence.
  virtual CloseResult Close(const std::string& edge_id, const std::string& conn_id, int64_t now_ms,
                            Effects* effects) = 0;
  // Marks the node of `conn_id` as seen now (frames arrived).
  virtual void Touch(const std::string& conn_id, int64_t now_ms) = 0;

  // --- Invokes -----------------------------------------------------------------------------
  virtual InvokeStartResult StartInvoke(const InvokeStart& start, int64_t now_ms,
                                        Effects* effects) = 0;
  // A result arrived on `conn_id` through `edge_id`. Returns true when it settled a pending
  // invoke (invoke id, node id, connection and its edge all matched); false when ignored.
  virtual bool SettleInvoke(const std::string& invoke_id, const std::string& node_id,
                            const std::string& conn_id, const std::string& edge_id,
                            const InvokeOutcome& outcome, int64_t now_ms, Effects* effects) = 0;
  // Ends a pending invoke with `outcome` (caller cancelled, undeliverable, link lost). A
  // non-empty `conn_id` / `edge_id` must match the dispatch. False if it was no longer pending.
  virtual bool FailInvoke(const std::string& invoke_id, const std::string& conn_id,
                          const std::string& edge_id, const InvokeOutcome& outcome, int64_t now_ms,
                          Effects* effects) = 0;

  // --- Time --------------------------------------------------------------------------------
  // Expires invokes (TIMEOUT), edge leases (edge_lost) and superseded connections' grace.
  virtual void Expire(int64_t now_ms, Effects* effects) = 0;

  // --- Reads -------------------------------------------------------------------------------
  // kUnavailable when the store cannot be read (never an empty answer in its place: a caller
  // would take it for "no node is connected").
  virtual absl::StatusOr<NodePage> ListNodes(const NodeFilter& filter,
                                             const std::string& page_token, int page_size) = 0;
  virtual absl::StatusOr<NodeView> GetNode(const std::string& node_id) = 0;
  virtual absl::StatusOr<PresenceSnapshot> GetPresence() = 0;
  // Events with revision > `after`, at most `max`. kOutOfRange when `after` is older than the
  // retained history or newer than the head (the history was compacted or restarted).
  virtual absl::StatusOr<std::vector<PresenceEvent>> ReadPresence(uint64_t after, size_t max) = 0;
  virtual uint64_t HeadRevision() = 0;

  // --- Pairing -----------------------------------------------------------------------------
  virtual std::vector<PairingRequest> ListPairingRequests() = 0;
  virtual std::vector<Device> ListDevices() = 0;
  virtual absl::StatusOr<Device> ApprovePairing(const std::string& request_id,
                                                const std::string& approved_by, int64_t now_ms) = 0;
  virtual absl::Status RejectPairing(const std::string& request_id) = 0;
  // Unpairs the device, invalidates its token and closes its connections (revoked).
  virtual absl::StatusOr<int> RevokeDevice(const std::string& node_id, int64_t now_ms,
                                           Effects* effects) = 0;

  // --- Routing between replicas -----------------------------------------------------------
  // True for a store shared by several registry replicas (Redis). Then a decision does not
  // leave its edge messages to the replica that ran it: it appends them, in the same atomic
  // step, to the edge's outbox in the store, so every edge's messages are in decision order
  // across all replicas, and the replica holding the edge's stream delivers them (ReadRouted).
  // StartInvoke queues the dispatch the same way, and fails at once (kDisconnected) when no
  // replica holds the edge's stream. Settlements of invokes a caller on another replica waits
  // for are appended to that replica's inbox. Effects::to_edges still lists what was told (for
  // counting only). False (MemoryStore): one process, the Registry's own outboxes.
  virtual bool RoutesThroughStore() const { return false; }
  // Reads, after the given positions, the outboxes of the edges this replica holds and this
  // replica's inbox; waits up to `wait_ms` (0: not at all) for anything to arrive.
  virtual absl::StatusOr<RoutedBatch> ReadRouted(const std::vector<OutboxPosition>& edges,
                                                 const std::string& inbox_after, int64_t wait_ms) {
    return absl::UnimplementedError("this store does not route");
  }
  // Records how far this replica delivered each edge's outbox (a replica taking an edge over
  // continues from there) and lets the store drop what was delivered. Returns the edges that
  // another replica holds now (this replica must stop delivering to them).
  // `inbox_position`: this replica read its inbox up to there (the store may drop it).
  virtual absl::StatusOr<std::vector<std::string>> MarkDelivered(
      const std::vector<OutboxPosition>& delivered, const std::string& inbox_position) {
    return std::vector<std::string>{};
  }
  // This replica no longer holds `edge_id`'s stream (it ended at `position`): invokes for it
  // fail at once until an edge attaches again.
  virtual void ReleaseEdge(const std::string& edge_id, const std::string& epoch,
                           const std::string& position) {}

  // --- Start-up ----------------------------------------------------------------------------
  // True when the ownership table was empty when this store was opened: a fresh process with
  // the memory store, or a Redis that is new or lost its data. Connections that are live on
  // edges are then unknown until the edges resync, so the Registry starts in recovery.
  virtual bool StartedEmpty() const = 0;

  // What the bounds dropped so far (metrics). May read the store: not for hot paths.
  virtual StoreDrops Dropped() = 0;
};

}  // namespace tether::registry

#endif  // TETHER_REGISTRY_SERVICE_CORE_STORE_H_
