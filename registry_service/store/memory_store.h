// MemoryStore: the registry's state in this process; the embedded default store.
#ifndef TETHER_REGISTRY_SERVICE_STORE_MEMORY_STORE_H_
#define TETHER_REGISTRY_SERVICE_STORE_MEMORY_STORE_H_

#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/node_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "registry_service/core/store.h"
#include "registry_service/store/store_options.h"

namespace tether::registry {

// Implements every ownership decision of Store over in-process maps. It is the reference
// implementation of the rules in architecture.md; the Redis store runs the same decisions as
// scripts. Thread-safe: one mutex, each public method is one critical section.
//
// Generations and presence revisions start from the wall clock in microseconds at
// construction (`start_ms` * 1000), so a restarted registry hands out numbers above those of
// its previous life (fencing holds across restarts) and a watcher resuming with a revision from
// the previous life is told to re-list instead of silently missing events.
class MemoryStore final : public Store {
 public:
  MemoryStore(const StoreOptions& options, int64_t start_ms);

  absl::Status AttachEdge(const std::string& edge_id, const std::string& epoch, int64_t now_ms,
                          Effects* effects) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status RenewLease(const std::string& edge_id, const std::string& epoch,
                          int64_t now_ms) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status DrainEdge(const std::string& edge_id, const std::string& epoch, int64_t now_ms,
                         Effects* effects) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<ResyncResult> Resync(const std::string& edge_id, const std::string& epoch,
                                      const std::vector<LiveConnection>& live, int64_t now_ms,
                                      Effects* effects) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<RegisterResult> Register(const ConnectionSpec& spec, int64_t now_ms,
                                          Effects* effects) override ABSL_LOCKS_EXCLUDED(mu_);
  CloseResult Close(const std::string& edge_id, const std::string& conn_id, int64_t now_ms,
                    Effects* effects) override ABSL_LOCKS_EXCLUDED(mu_);
  void Touch(const std::string& conn_id, int64_t now_ms) override ABSL_LOCKS_EXCLUDED(mu_);
  InvokeStartResult StartInvoke(const InvokeStart& start, int64_t now_ms, Effects* effects) override
      ABSL_LOCKS_EXCLUDED(mu_);
  bool SettleInvoke(const std::string& invoke_id, const std::string& node_id,
                    const std::string& conn_id, const std::string& edge_id,
                    const InvokeOutcome& outcome, int64_t now_ms, Effects* effects) override
      ABSL_LOCKS_EXCLUDED(mu_);
  bool FailInvoke(const std::string& invoke_id, const std::string& conn_id,
                  const std::string& edge_id, const InvokeOutcome& outcome, int64_t now_ms,
                  Effects* effects) override ABSL_LOCKS_EXCLUDED(mu_);
  void Expire(int64_t now_ms, Effects* effects) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<NodePage> ListNodes(const NodeFilter& filter, const std::string& page_token,
                                     int page_size) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<NodeView> GetNode(const std::string& node_id) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<PresenceSnapshot> GetPresence() override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::vector<PresenceEvent>> ReadPresence(uint64_t after, size_t max) override
      ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t HeadRevision() override ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<PairingRequest> ListPairingRequests() override ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<Device> ListDevices() override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<Device> ApprovePairing(const std::string& request_id,
                                        const std::string& approved_by, int64_t now_ms) override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status RejectPairing(const std::string& request_id) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<int> RevokeDevice(const std::string& node_id, int64_t now_ms,
                                   Effects* effects) override ABSL_LOCKS_EXCLUDED(mu_);

  // Always true: a new process starts with an empty table.
  bool StartedEmpty() const override { return true; }
  StoreDrops Dropped() override;

  // For tests and benchmarks: counts of live records.
  size_t ConnectionCountForTest() ABSL_LOCKS_EXCLUDED(mu_);
  size_t PendingInvokeCountForTest() ABSL_LOCKS_EXCLUDED(mu_);
  size_t InternedListCountForTest() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // What ownership decisions need of a connection; what it said about itself is in its
  // node's record (memory per session).
  struct Conn {
    const std::string& conn_id() const { return *id; }
    const std::string* id = nullptr;  // its key in conns_ (a node map: the key stays put)
    std::string node_id;
    std::string edge_id;
    uint64_t generation = 0;
    bool superseded = false;
    bool retire_sent = false;
    int64_t retire_at_ms = 0;
    absl::flat_hash_set<std::string> pending;  // invoke ids dispatched on this connection
  };
  using List = std::shared_ptr<const std::vector<std::string>>;
  // A node (its id is the key in nodes_).
  struct NodeRecord {
    ClientMetadata client;  // as its owner declared it, without the lists below
    List caps;              // interned (Intern): a fleet declares a few distinct lists
    List commands;
    std::string public_key;
    std::string remote_addr;
    std::string owner;        // owning conn id; empty when disconnected
    std::string edge_id;      // of the owner (or the last one)
    uint64_t generation = 0;  // of the owner (or the last one)
    int64_t connected_at_ms = 0;
    int64_t last_seen_ms = 0;
    int64_t idle_since_ms = 0;  // disconnected since (its key in idle_); 0 while owned
  };
  // A paired device (its node id is the key in devices_).
  struct DeviceRecord {
    std::string public_key;
    int64_t approved_at_ms = 0;
    std::string approved_by;
    std::string token;
    // (Re)approves the device's key; its token, if issued, is kept.
    void Approve(const std::string& key, int64_t at_ms, const std::string& by) {
      public_key = key;
      approved_at_ms = at_ms;
      approved_by = by;
    }
  };
  static Device DeviceOf(const std::string& node_id, const DeviceRecord& d) {
    return Device{node_id, d.public_key, d.approved_at_ms, d.approved_by};
  }
  struct Lease {
    std::string epoch;
    int64_t expires_ms = 0;
    absl::flat_hash_set<std::string> conns;
  };
  struct Pending {
    Dispatch dispatch;
  };
  struct Finished {
    InvokeOutcome outcome;
    std::string invoke_id;
    int64_t expires_ms = 0;
  };

  // Decision helpers; all require mu_.
  uint64_t NextGeneration() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Publish(PresenceEvent event, int64_t now_ms, Effects* effects)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes `conn` the owner of node `node_id` (superseding the old owner), the node's record
  // taking what `spec` says about the node.
  void InstallOwner(const std::string& node_id, NodeRecord& node, Conn& conn,
                    const ConnectionSpec& spec, int64_t now_ms, Effects* effects)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A new connection record for `spec` on `edge_id`, in conns_ and in the edge's lease.
  Conn& AddConn(const ConnectionSpec& spec, const std::string& edge_id, uint64_t generation,
                Lease& lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The shared copy of `list` (one per distinct list among the nodes).
  List Intern(const std::vector<std::string>& list) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes `conn_id` from the table; if it owned its node the node becomes disconnected
  // (published with `reason`); its pending invokes fail with DISCONNECTED.
  CloseResult RemoveConn(const std::string& conn_id, const std::string& reason, int64_t now_ms,
                         Effects* effects) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SupersedeConn(Conn& conn, int64_t now_ms, Effects* effects)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes a pending invoke and records its outcome; returns false if it was not pending.
  bool Finish(const std::string& invoke_id, InvokeOutcome outcome, int64_t now_ms, Effects* effects)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeRetire(Conn& conn, Effects* effects) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  NodeView View(const std::string& node_id, const NodeRecord& node) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Paired(const std::string& node_id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static std::string IdemKey(const std::string& node_id, const std::string& key);

  const StoreOptions options_;
  absl::Mutex mu_;
  uint64_t last_generation_ ABSL_GUARDED_BY(mu_);
  uint64_t head_revision_ ABSL_GUARDED_BY(mu_);
  std::deque<PresenceEvent> history_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, NodeRecord> nodes_ ABSL_GUARDED_BY(mu_);  // ordered for paging
  // Disconnected nodes by when they went idle: their records are dropped after
  // StoreOptions::node_retention_ms (pairings are kept).
  std::set<std::pair<int64_t, std::string>> idle_ ABSL_GUARDED_BY(mu_);
  // Node-based maps for the per-session records: no slack of large empty slots.
  absl::node_hash_map<std::string, Conn> conns_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Lease> leases_ ABSL_GUARDED_BY(mu_);
  absl::node_hash_map<std::string, DeviceRecord> devices_ ABSL_GUARDED_BY(mu_);
  // Revoked in this life: node id -> the newest generation granted when it was revoked, in
  // revocation order (revoked_order_, stale entries skipped) for the bound; past it the oldest
  // are forgotten and their generation raises revoked_floor_: a resync never re-pairs a
  // connection granted at or below it (such a connection predates a forgotten revocation).
  absl::flat_hash_map<std::string, uint64_t> revoked_ ABSL_GUARDED_BY(mu_);
  std::deque<std::pair<uint64_t, std::string>> revoked_order_ ABSL_GUARDED_BY(mu_);
  uint64_t revoked_floor_ ABSL_GUARDED_BY(mu_) = 0;
  StoreDrops drops_ ABSL_GUARDED_BY(mu_);
  // Intern's table, by the list's elements, each prefixed with its length. Lists no node holds any
  // more are dropped when it has doubled since the last sweep.
  absl::flat_hash_map<std::string, List> lists_ ABSL_GUARDED_BY(mu_);
  size_t lists_swept_at_ ABSL_GUARDED_BY(mu_) = 64;
  std::map<std::string, PairingRequest> pairing_ ABSL_GUARDED_BY(mu_);  // by request id
  absl::flat_hash_map<std::string, std::string> pairing_by_node_ ABSL_GUARDED_BY(mu_);
  int64_t next_pairing_prune_ms_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, Pending> pending_ ABSL_GUARDED_BY(mu_);
  std::set<std::pair<int64_t, std::string>> deadlines_ ABSL_GUARDED_BY(mu_);
  std::set<std::pair<int64_t, std::string>> retire_at_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::string> inflight_keys_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Finished> finished_keys_ ABSL_GUARDED_BY(mu_);
  // Key claims (InvokeStart::key_claim, per node) -> fingerprint and expiry; pruned in expiry
  // order (claims_order_, roughly ordered: window plus the invoke's timeout).
  struct Claim {
    std::string fingerprint;
    int64_t expires_ms = 0;
  };
  absl::flat_hash_map<std::string, Claim> claims_ ABSL_GUARDED_BY(mu_);
  std::deque<std::pair<int64_t, std::string>> claims_order_ ABSL_GUARDED_BY(mu_);
  std::deque<std::pair<int64_t, std::string>> finished_order_ ABSL_GUARDED_BY(mu_);
  // Bytes of the remembered outcomes' payloads (bounded by idempotency_max_bytes: the oldest go
  // first).
  size_t finished_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tether::registry

#endif  // TETHER_REGISTRY_SERVICE_STORE_MEMORY_STORE_H_
