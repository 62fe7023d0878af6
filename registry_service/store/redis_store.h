// RedisStore: the registry's state in Redis, every ownership decision one Lua script.
#ifndef TETHER_REGISTRY_SERVICE_STORE_REDIS_STORE_H_
#define TETHER_REGISTRY_SERVICE_STORE_REDIS_STORE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "registry_service/core/store.h"
#include "registry_service/store/redis_client.h"
#include "registry_service/store/store_options.h"

namespace tether::registry {

struct RedisStoreOptions {
  RedisClientOptions client;
  std::string key_prefix = "tether:";  // every key starts with this (tests use one per case)
  // This replica's id, unique among the replicas sharing the Redis (edge holders and inboxes
  // are keyed by it). Empty: a fresh random id per process (waiters do not survive a restart).
  std::string replica_id;
  // Connections decisions are spread over (round robin). Redis runs one script at a time, but
  // one connection would also serialize every round trip: with several, one decision's round
  // trip overlaps another's run.
  int connections = 8;
};

// Implements every decision of Store as one Lua script run atomically inside Redis (EVALSHA),
// with the same observable behaviour as MemoryStore; the key layout, the scripts and the known
// differences are described in registry_service/store/README.md.
//
// Generations and presence revisions come from INCR counters in Redis: on first use with an
// empty database both start at 1 (the first generation granted is 1, the first presence
// revision is 1, HeadRevision() is 0 before any change). They never go back while Redis keeps
// its data. After a data loss they are repaired two ways: Resync raises the generation counter
// above every generation an edge reports, and at every (re)connect the store raises both
// counters to the highest values this process has seen (a Redis that restarted with a lost
// tail), dropping the presence history when the revision had to be raised (watchers re-list).
// Device tokens are kept only as SHA-256 hex hashes.
//
// Owns its RedisClients: a pool of `connections` for decisions and reads (round robin), one for
// lease renewals, one for routed reads. Thread-safe: each client's mutex serializes the calls
// over its connection; decisions on different connections run side by side (Redis still runs
// one script at a time, so each stays atomic). Methods that return a Status report an unreachable
// or failing Redis as kUnavailable within about the client's timeouts. Methods that cannot report
// errors (Close, Touch, StartInvoke, SettleInvoke, FailInvoke, Expire, ListPairingRequests,
// ListDevices) log the error and return their "nothing changed" value (an unknown close, an ignored
// result, no invoke started (NOT_CONNECTED "store unavailable"), an empty list). The ownership
// reads (ListNodes, GetNode, GetPresence, ReadPresence) report kUnavailable.
class RedisStore final : public Store {
 public:
  RedisStore(const StoreOptions& options, const RedisStoreOptions& redis);

  // Connects and loads the scripts: kUnavailable when Redis cannot be reached (start-up).
  // Also reads (and then sets) the table marker `<prefix>table`: absent means Redis is new or
  // lost its data since a registry last connected (see StartedEmpty).
  absl::Status Connect();
  // Whether Connect found no table marker. Redis cannot tell a new database from one that lost
  // its data; both start the Registry in recovery.
  bool StartedEmpty() const override { return started_empty_; }
  StoreDrops Dropped() override;

  absl::Status AttachEdge(const std::string& edge_id, const std::string& epoch, int64_t now_ms,
                          Effects* effects) override;
  absl::Status RenewLease(const std::string& edge_id, const std::string& epoch,
                          int64_t now_ms) override;
  absl::Status DrainEdge(const std::string& edge_id, const std::string& epoch, int64_t now_ms,
                         Effects* effects) override;
  absl::StatusOr<ResyncResult> Resync(const std::string& edge_id, const std::string& epoch,
                                      const std::vector<LiveConnection>& live, int64_t now_ms,
                                      Effects* effects) override;
  absl::StatusOr<RegisterResult> Register(const ConnectionSpec& spec, int64_t now_ms,
                                          Effects* effects) override;
  CloseResult Close(const std::string& edge_id, const std::string& conn_id, int64_t now_ms,
                    Effects* effects) override;
  void Touch(const std::string& conn_id, int64_t now_ms) override;
  InvokeStartResult StartInvoke(const InvokeStart& start, int64_t now_ms,
                                Effects* effects) override;
  bool SettleInvoke(const std::string& invoke_id, const std::string& node_id,
                    const std::string& conn_id, const std::string& edge_id,
                    const InvokeOutcome& outcome, int64_t now_ms, Effects* effects) override;
  bool FailInvoke(const std::string& invoke_id, const std::string& conn_id,
                  const std::string& edge_id, const InvokeOutcome& outcome, int64_t now_ms,
                  Effects* effects) override;
  void Expire(int64_t now_ms, Effects* effects) override;
  absl::StatusOr<NodePage> ListNodes(const NodeFilter& filter, const std::string& page_token,
                                     int page_size) override;
  absl::StatusOr<NodeView> GetNode(const std::string& node_id) override;
  absl::StatusOr<PresenceSnapshot> GetPresence() override;
  absl::StatusOr<std::vector<PresenceEvent>> ReadPresence(uint64_t after, size_t max) override;
  uint64_t HeadRevision() override;
  std::vector<PairingRequest> ListPairingRequests() override;
  std::vector<Device> ListDevices() override;
  absl::StatusOr<Device> ApprovePairing(const std::string& request_id,
                                        const std::string& approved_by, int64_t now_ms) override;
  absl::Status RejectPairing(const std::string& request_id) override;
  absl::StatusOr<int> RevokeDevice(const std::string& node_id, int64_t now_ms,
                                   Effects* effects) override;

  // Routing between replicas (Store; README "Replicas"): edge messages go through per-edge
  // outbox streams, settlements for other replicas' callers through their inbox streams. Reads
  // run on a connection of their own (a blocking XREAD must not hold up decisions).
  bool RoutesThroughStore() const override { return true; }
  absl::StatusOr<RoutedBatch> ReadRouted(const std::vector<OutboxPosition>& edges,
                                         const std::string& inbox_after, int64_t wait_ms) override;
  absl::StatusOr<std::vector<std::string>> MarkDelivered(
      const std::vector<OutboxPosition>& delivered, const std::string& inbox_position) override;
  void ReleaseEdge(const std::string& edge_id, const std::string& epoch,
                   const std::string& position) override;
  const std::string& replica_id() const { return replica_id_; }

  // Serializes a list of strings as "<len>:<bytes>..." (the scripts' record format).
  static std::string EncodeList(const std::vector<std::string>& items);
  static std::vector<std::string> DecodeList(const std::string& data);

 private:
  // Runs script `handle` with the common header (prefix, now, options) and `args`; returns
  // the script's result array after moving its effects into `effects` (may be null), or the
  // error status the script or Redis reported.
  absl::StatusOr<std::vector<RedisValue>> Run(int handle, int64_t now_ms,
                                              const std::vector<std::string>& args,
                                              Effects* effects);
  // The same on `client` (the lease or routing connection; Run picks one of the pool).
  absl::StatusOr<std::vector<RedisValue>> RunOn(RedisClient& client, int handle, int64_t now_ms,
                                                const std::vector<std::string>& args,
                                                Effects* effects);
  // Logs a failure of a method that cannot return it.
  void LogFailure(const char* method, const absl::Status& status);
  // Remembers the highest generation and revision seen, for the counters' repair at connect.
  void Observe(uint64_t generation, uint64_t revision);
  void ObserveEffects(const Effects& effects, size_t presence_from, size_t settled_from);

  std::string OutboxKey(const std::string& edge_id) const;
  std::string InboxKey() const;

  const StoreOptions options_;
  const std::string prefix_;
  const std::string replica_id_;
  const absl::Duration command_timeout_;
  // The connection a decision runs on (round robin over pool_).
  RedisClient& Decider();

  std::vector<std::unique_ptr<RedisClient>> pool_;  // decisions and reads; owned
  RedisClient* client_ = nullptr;                   // pool_[0]: start-up checks
  std::atomic<uint64_t> next_client_{0};
  // Lease renewals only: a heartbeat must not wait behind a storm of decisions on client_
  // (the edge's lease would lapse and every node on it would be disconnected). Owned.
  std::unique_ptr<RedisClient> lease_client_;
  // Reads of outboxes and the inbox (blocking XREAD) only. Owned.
  std::unique_ptr<RedisClient> route_client_;
  std::atomic<uint64_t> highest_generation_{0};
  std::atomic<uint64_t> highest_revision_{0};
  bool started_empty_ = false;  // written once by Connect, before the store is shared
  int attach_ = 0, renew_ = 0 /* on lease_client_ */, drain_ = 0, resync_chunk_ = 0,
      resync_sweep_ = 0, register_ = 0, close_ = 0, touch_ = 0, start_ = 0, settle_ = 0, fail_ = 0,
      expire_ = 0, list_nodes_ = 0, get_node_ = 0, presence_ = 0, read_presence_ = 0,
      list_pairing_ = 0, list_devices_ = 0, approve_ = 0, reject_ = 0, revoke_ = 0, release_ = 0,
      delivered_ = 0;
};

}  // namespace tether::registry

#endif  // TETHER_REGISTRY_SERVICE_STORE_REDIS_STORE_H_
