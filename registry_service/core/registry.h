// Registry: the registry's behaviour, between its transport shells and its store.
#ifndef TETHER_REGISTRY_SERVICE_CORE_REGISTRY_H_
#define TETHER_REGISTRY_SERVICE_CORE_REGISTRY_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "common/metrics.h"
#include "registry_service/core/store.h"
#include "registry_service/core/types.h"

namespace tether::registry {

// The downstream half of one edge's EdgeLink stream. Implemented by the gRPC shell (and by a
// recording fake in tests). Methods must not block; they are called from any thread.
class EdgeSink {
 public:
  virtual ~EdgeSink() = default;
  // Deliver `dispatch` to its connection; the node has `remaining_ms` to answer.
  virtual void SendInvoke(const Dispatch& dispatch, int64_t remaining_ms) = 0;
  virtual void SendCommand(const EdgeCommand& command) = 0;
};

// What the registry counts, for metrics. Lock-free; read from any thread.
struct RegistryStats {
  common::Counter registrations_granted;
  common::Counter registrations_refused;
  common::Counter registrations_shed;  // refused unread: waited too long (overload)
  common::Counter closes_of_owner;
  common::Counter stale_closes_ignored;  // closes of superseded connections: changed nothing
  common::Counter superseded_retired;    // replaced connections told to close
  common::Counter results_ignored;       // unmatched, late or duplicate results
  common::Counter resyncs;
  // Streams whose reader was too slow, cut off (counted by the gRPC shell).
  common::Counter edge_links_cut;
  common::Counter watchers_cut;
  common::Counter disconnects[4];  // by reason: disconnect, edge_lost, edge_drain, revoked
  common::Counter invokes[8];      // by InvokeCode
  common::Histogram invoke_latency_ms{common::LatencyBucketsMs()};
  std::atomic<int64_t> connected_nodes{0};
  std::atomic<int64_t> edges_attached{0};
  std::atomic<int64_t> watchers{0};
};

inline constexpr const char* kDisconnectReasons[4] = {kReasonDisconnect, kReasonEdgeLost,
                                                      kReasonEdgeDrain, kReasonRevoked};

// How long after an invoke's deadline a caller still waiting on this replica is answered
// TIMEOUT by the replica itself (the store normally settles it at the deadline).
inline constexpr int64_t kWaiterSlackMs = 1000;

// Less than this left of an admitted invoke's deadline when Start runs (it waited for a thread
// behind an overloaded store): answered TIMEOUT at once instead of started.
inline constexpr int64_t kMinStartMs = 20;

struct RegistryOptions {
  int64_t default_invoke_timeout_ms = 30'000;
  int64_t max_invoke_timeout_ms = 300'000;
  // Largest params_json an invoke may carry. The node receives it escaped inside a JSON string
  // (up to twice as long) in one frame that must stay under its 25 MiB maxPayload, and it
  // travels in one EdgeLink message (64 MiB at most).
  int64_t max_params_bytes = 12 << 20;
  // Recovery after a start with an empty table (Store::StartedEmpty): the longest the registry
  // waits for edges to resync before it serves. 0: no recovery phase (serve at once).
  int64_t recovery_grace_ms = 0;
  // Ends recovery before the grace once this many distinct edges have resynced and no attached
  // edge still owes its resync. 0: only the grace ends it (the registry cannot know how many
  // edges the fleet has; an operator can).
  int recovery_edges = 0;
  // The edges' lease TTL (StoreOptions::lease_ttl_ms): a stream whose edge renewed within it
  // is live, and its edge id is in use (see AttachEdge).
  int64_t lease_ttl_ms = 10'000;
  // How long before the caller's own deadline (InvokeParams::caller_remaining_ms) an invoke
  // ends, at most a quarter of the caller's time. Expiry runs once per tick, so a TIMEOUT
  // decided at the caller's deadline would reach a caller that had already given up, which then
  // sees only its own DEADLINE_EXCEEDED, not a typed outcome. The server sets twice its tick.
  int64_t answer_margin_ms = 100;
};

// How an invoke ended, as its caller sees it.
struct InvokeResult {
  InvokeOutcome outcome;
  std::string invoke_id;
  std::string idempotency_key;
  int64_t effective_timeout_ms = 0;
  bool replayed = false;  // answered from the idempotency window
};

struct InvokeParams {
  std::string node_id;
  std::string command;
  std::string params_json;      // empty: no params; else a JSON text of at most max_params_bytes
  int64_t timeout_ms = 0;       // 0: default; clamped to the cap; < 0: INVALID
  std::string idempotency_key;  // generated when empty
  // Who is calling (the API token's identity; empty in development mode). A caller's key only
  // ever joins or replays that caller's own call of the same command with the same params:
  // reused by someone else, or for another request, it is another call.
  std::string caller;
  // Time the caller has left (its gRPC deadline minus now, at the call); -1: no deadline.
  // Relative, so a wall-clock step between caller and registry cannot move it.
  int64_t caller_remaining_ms = -1;
};

// Identifies one caller's wait on an invoke, for cancellation.
struct InvokeTicket {
  std::string invoke_id;
  uint64_t waiter_id = 0;
};

// Runs every registry operation: asks the store to decide, then delivers what the decision
// changed (invoke completions to waiting callers, commands to edges, presence events to
// watchers) after every lock is released, so callbacks may call back into the Registry.
//
// Recovery: when the store started with an empty table (and recovery_grace_ms > 0) the
// registry starts *recovering*: the connections live on edges are unknown until each edge
// resyncs, so reads and invokes would answer wrongly (NOT_CONNECTED for online nodes). While
// recovering, ServingStatus() is kUnavailable with a retry hint (the API shell answers reads
// and invokes with it and reports not ready), new registrations are refused as retryable
// (a generation granted now could be below one an edge has yet to report), and Tick() runs no
// expiry at all, so no lease lapse, timeout or grace can publish DISCONNECTED for a
// connection not yet reported. Attaches and resyncs are served: they are how the table is
// rebuilt. Recovery ends, once and for good, when recovery_grace_ms has passed or earlier when
// recovery_edges edges resynced and no attached edge still owes its resync.
//
// Not owned: the store and the clock, which must outlive it. Thread-safe. Time only moves
// through Tick(), which the server calls from a timer and tests call by hand.
class Registry {
 public:
  using InvokeDone = std::function<void(const InvokeResult&)>;
  using PresenceFn = std::function<void(const PresenceEvent&)>;
  // Ends a watch that can no longer be served in order (its events fell out of the history).
  using PresenceErrorFn = std::function<void(const absl::Status&)>;

  Registry(Store& store, const common::Clock& clock, const RegistryOptions& options);
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // --- EdgeLink side -----------------------------------------------------------------------
  // Attaches `sink` as the route to `edge_id`. The sink stays referenced until DetachEdge.
  //
  // One edge id, one process: an attach with another epoch than the route this registry holds
  // for `edge_id`, while that route's stream is open and its edge renewed within the lease
  // TTL, is refused with kFailedPrecondition ("edge id in use") and changes nothing: two edges
  // configured with the same id would otherwise fence each other out in turn. A restarted edge
  // (new epoch) is accepted once its old stream ended (DetachEdge) or went silent for a lease
  // TTL; then the old epoch's connections are closed (edge_lost) as before. Same epoch: the
  // same process re-attaching after a blip, always accepted. This checks this process's
  // routes; a store shared by replicas checks the others' (store/README.md, "Replicas").
  absl::Status AttachEdge(const std::string& edge_id, const std::string& epoch,
                          std::shared_ptr<EdgeSink> sink) ABSL_LOCKS_EXCLUDED(mu_);
  // The stream carrying `sink` ended. The invokes sent through that stream fail at once (even
  // if the edge already re-attached on a new stream); its connections stay until the lease
  // lapses or the edge resyncs.
  void DetachEdge(const std::string& edge_id, const EdgeSink* sink) ABSL_LOCKS_EXCLUDED(mu_);
  // Renews the edge's lease. FAILED_PRECONDITION (the edge must attach again and resync): the
  // lease lapsed or has another epoch, or the store has not answered this replica's renewals
  // for longer than the lease's TTL (another replica may have lapsed it meanwhile).
  absl::Status Heartbeat(const std::string& edge_id, const std::string& epoch);
  // A message from `edge_id` was read from the stream carrying `sink`. A stream that is being
  // read is alive: Tick renews its lease even when its explicit heartbeats sit behind a backlog
  // of registrations that each wait for the store (a reconnect storm on Redis), so the backlog
  // cannot cost every node on the edge its lease. A stream read from no more is lost within the
  // lease TTL plus a quarter of it. Cheap: no store call.
  void EdgeAlive(const std::string& edge_id, const EdgeSink* sink) ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status DrainEdge(const std::string& edge_id, const std::string& epoch);
  absl::StatusOr<RegisterResult> Register(const ConnectionSpec& spec);
  CloseResult Close(const std::string& edge_id, const std::string& conn_id);
  // A node's result, with the conn id of the socket it arrived on and (when known) the edge
  // that reported it, which must be the one the invoke went out through. False: ignored.
  bool AcceptResult(const std::string& conn_id, const std::string& invoke_id,
                    const std::string& node_id, const InvokeOutcome& outcome,
                    const std::string& edge_id = "");
  // The edge could not deliver `invoke_id` to `conn_id`.
  void Undeliverable(const std::string& edge_id, const std::string& conn_id,
                     const std::string& invoke_id, const std::string& reason);
  void Seen(const std::string& conn_id);
  // The transport refused a registration without deciding it (it waited too long: overload).
  void ShedRegistration() { stats_.registrations_shed.Add(); }
  absl::StatusOr<ResyncResult> Resync(const std::string& edge_id, const std::string& epoch,
                                      const std::vector<LiveConnection>& live);

  // --- Public API side ---------------------------------------------------------------------
  // Starts (or joins, or replays) an invoke: Admit, then Start. `done` runs exactly once,
  // possibly before Invoke returns, on whichever thread ends the invoke.
  InvokeTicket Invoke(const InvokeParams& params, InvokeDone done) ABSL_LOCKS_EXCLUDED(mu_);
  // The two halves of Invoke, for a transport that must not wait for the store on the thread
  // a call arrives on, nor leave the caller without an answer while the call waits for a
  // thread that may. Admit is cheap (no store call): from its return `done` runs exactly once,
  // by the invoke's deadline even when Start comes late or the store is slow to answer
  // (ExpireWaiters answers TIMEOUT: at the deadline if the invoke never started, kWaiterSlackMs
  // after it if it did). Start runs the decision unless the call was answered meanwhile
  // (expired or cancelled), and refuses to start with less than kMinStartMs left. Both return
  // the ticket to cancel with (Start's may name a joined invoke; empty: nothing to cancel).
  InvokeTicket Admit(const InvokeParams& params, InvokeDone done) ABSL_LOCKS_EXCLUDED(mu_);
  InvokeTicket Start(const InvokeTicket& admitted, const InvokeParams& params)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The caller gave up: its `done` runs with CANCELLED unless it already ran. The invoke
  // itself is cancelled (and the node told) when no other caller waits on it.
  void CancelInvoke(const InvokeTicket& ticket) ABSL_LOCKS_EXCLUDED(mu_);

  // Sends every presence event after `from_revision` (0: from now) to `fn`, in order, once
  // each, first the retained backlog and then live events. `fn` must not block. Returns a
  // watch id, or kOutOfRange when that revision is no longer (or not yet) in the history.
  // If the watcher ever falls behind the retained history, `on_error` (if set) is called once
  // with kOutOfRange and the watch ends: the caller must re-list.
  absl::StatusOr<uint64_t> Watch(uint64_t from_revision, PresenceFn fn,
                                 PresenceErrorFn on_error = nullptr)
      ABSL_LOCKS_EXCLUDED(publish_mu_);
  void Unwatch(uint64_t watch_id) ABSL_LOCKS_EXCLUDED(publish_mu_);

  const RegistryStats& stats() const { return stats_; }
  RegistryStats& stats() { return stats_; }

  // --- Recovery ----------------------------------------------------------------------------
  // True until recovery ends (always false without a recovery phase). Lock-free.
  bool Recovering() const { return recovering_.load(); }
  // kUnavailable while recovering, with a message naming the retry hint; OK once serving.
  // The API shell checks it before every ownership read and invoke.
  absl::Status ServingStatus() const ABSL_LOCKS_EXCLUDED(mu_);
  // How long a refused caller should wait before retrying (0 when serving).
  int64_t RetryAfterMs() const ABSL_LOCKS_EXCLUDED(mu_);

  absl::StatusOr<Device> ApprovePairing(const std::string& request_id,
                                        const std::string& approved_by);
  absl::StatusOr<int> RevokeDevice(const std::string& node_id);
  Store& store() { return store_; }

  // Answers TIMEOUT to every caller still waiting past its invoke's deadline (see Admit).
  // The server runs it on a thread of its own every tick period, not in Tick: a tick can be
  // held up for seconds by a store under overload and the callers' answers must not wait for
  // it. No store call. Thread-safe.
  void ExpireWaiters() ABSL_LOCKS_EXCLUDED(mu_);

  // Expires invokes, leases and grace periods as of the clock's now (not while recovering),
  // then pumps presence events other replicas sharing the store decided to this one's watchers.
  // With a store that routes, also records how far each held edge's outbox was delivered.
  void Tick();

  // --- Routing between replicas (stores that route: Store::RoutesThroughStore) ------------
  // Delivers what the store holds for this replica: the outboxes of the edges whose streams it
  // holds (to their sinks, in order) and the settlements of invokes its callers wait on. Waits
  // up to `wait_ms` for something to arrive (0: only what is there). One pump runs at a time;
  // a call while another runs returns at once and makes the running one read again, so a
  // decision can call it without waiting. The server runs it in a loop on a thread of its own
  // (wait_ms > 0); every decision that queued an edge message calls it with 0, so in
  // single-threaded tests messages arrive before the decision returns. Not an error when the
  // store does not route (nothing to do); kUnavailable when the store cannot be read.
  absl::Status PumpRouted(int64_t wait_ms) ABSL_LOCKS_EXCLUDED(mu_);
  bool Routed() const { return routed_; }

 private:
  // Why the caller's request cannot be run, with the limit it broke; empty when it can.
  std::string InvalidInvoke(const InvokeParams& params) const;
  struct Waiter {
    uint64_t id = 0;
    InvokeDone done;
    InvokeResult base;  // fields known at start (key, effective timeout)
    // The invoke's deadline. A waiter still here kWaiterSlackMs after it ends with TIMEOUT:
    // its outcome was decided where this replica cannot see it (another replica's expiry or
    // result) or not at all (the store unreachable); the caller must not hang.
    int64_t deadline_ms = 0;
    // Start has begun the decision. Until then no store holds the invoke: it expires at its
    // deadline, without slack, and a cancel needs no store call.
    bool started = false;
    // A caller that joined an invoke ending after its own deadline: no store decision ends it
    // by then, so it expires at its deadline, without slack (the invoke goes on for the rest).
    bool ends_before_invoke = false;
  };
  // Removes and returns the waiter `ticket` names; nullopt when it was answered already.
  // `last` (if given): no other caller waits for that invoke any more.
  std::optional<Waiter> TakeWaiter(const InvokeTicket& ticket, bool* last = nullptr)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Ends `invoke_id` in the store with `outcome` (a cancel also reaches the node; an invoke
  // already settled is left alone).
  void FailInStore(const std::string& invoke_id, const InvokeOutcome& outcome)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Whether any caller on this replica still waits for `invoke_id`.
  bool AnyoneWaits(const std::string& invoke_id) ABSL_LOCKS_EXCLUDED(mu_);
  // What the registry sends one edge, in the order it was decided. Decisions push under
  // decide_mu_ (so pushes follow decision order); whoever finds the outbox idle drains it, with
  // no lock held while it calls the sink, so a sink that calls back into the registry (a stream
  // that finishes inline) cannot deadlock and a second drainer never runs at the same time.
  // Thread-safe.
  class Outbox {
   public:
    explicit Outbox(std::shared_ptr<EdgeSink> sink) : sink_(std::move(sink)) {}
    void PushInvoke(const Dispatch& dispatch, int64_t remaining_ms) ABSL_LOCKS_EXCLUDED(mu_);
    void PushCommand(const EdgeCommand& command) ABSL_LOCKS_EXCLUDED(mu_);
    // Sends what is queued, unless another thread already is (it will send this too).
    void Drain() ABSL_LOCKS_EXCLUDED(mu_);
    const EdgeSink* sink() const { return sink_.get(); }

   private:
    struct Item {
      bool invoke = false;
      Dispatch dispatch;
      int64_t remaining_ms = 0;
      EdgeCommand command;
    };
    const std::shared_ptr<EdgeSink> sink_;
    absl::Mutex mu_;
    std::deque<Item> queue_ ABSL_GUARDED_BY(mu_);
    bool draining_ ABSL_GUARDED_BY(mu_) = false;
  };
  struct Route {
    std::string epoch;
    std::shared_ptr<Outbox> outbox;
    int64_t renewed_ms = 0;    // attach or last renewal (heartbeat or a live stream's, by Tick)
    int64_t last_read_ms = 0;  // last message read from its stream
    int resyncing = 0;         // resyncs running (reading paused: the tick renews the lease)
    // Routed stores: the last outbox entry delivered (empty: not read yet), the last one
    // recorded in the store, and whether this replica still holds the edge there.
    std::string position;
    std::string recorded;
    bool held = true;
  };
  // Holds decide_mu_ for one decision: the store decides, and what it tells edges is queued in
  // their outboxes before the next decision can run. The destructor queues the commands in
  // `effects`, releases the lock, then drains the outboxes it touched. With a store that
  // routes (the store orders edge messages itself) it takes no lock: the destructor only pumps
  // the routed messages when the decision told an edge something.
  class Decision {
   public:
    Decision(Registry& registry, Effects* effects);
    ~Decision();
    Decision(const Decision&) = delete;
    Decision& operator=(const Decision&) = delete;
    // Queues `dispatch` for its edge, recording the stream it goes out through; false when the
    // edge has no route (its link is down).
    bool SendInvoke(const Dispatch& dispatch, int64_t remaining_ms);

   private:
    Registry& registry_;
    Effects* effects_;
    std::vector<std::shared_ptr<Outbox>> touched_;
  };
  struct Watcher {
    uint64_t after = 0;  // deliver only revisions above this
    PresenceFn fn;
    PresenceErrorFn on_error;
  };

  // The route of `edge_id` attached with `epoch`; null if none (or another epoch's).
  Route* FindRoute(const std::string& edge_id, const std::string& epoch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Notes that `edge_id`'s lease (with `epoch`) was renewed at `now`.
  void MarkRenewed(const std::string& edge_id, const std::string& epoch, int64_t now)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Renews the leases of streams read from recently (see EdgeAlive).
  void RenewLiveLeases() ABSL_LOCKS_EXCLUDED(mu_);
  // Updates stats_ and logs what a decision changed.
  void Count(const Effects& effects);
  // Delivers what a decision changed. Call with no lock held.
  void Apply(Effects& effects) ABSL_LOCKS_EXCLUDED(mu_, publish_mu_);
  void PumpPresence() ABSL_LOCKS_EXCLUDED(publish_mu_);
  // Publishes a decision's presence events (in revision order): directly when they follow
  // what was published, else by pumping the store's history (which fills the gap).
  void Publish(const std::vector<PresenceEvent>& events) ABSL_LOCKS_EXCLUDED(publish_mu_);
  // Sends `e` to every watcher that has not seen it and marks it published.
  void DeliverLocked(const PresenceEvent& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(publish_mu_);
  // Pumps what the store's history holds beyond what this registry published (decisions of
  // other replicas sharing the store).
  void CatchUpPresence() ABSL_LOCKS_EXCLUDED(publish_mu_);
  // The outbox of `edge_id`'s current route, or null.
  std::shared_ptr<Outbox> OutboxFor(const std::string& edge_id) ABSL_LOCKS_EXCLUDED(mu_);
  // Ends recovery if its grace passed or every expected edge resynced; logs once.
  void MaybeEndRecovery() ABSL_LOCKS_EXCLUDED(mu_);
  // Records in the store how far the held edges' outboxes were delivered (routed stores).
  void MarkDelivered() ABSL_LOCKS_EXCLUDED(mu_);
  // Completes this replica's waiters for `settled` (a decision's, or another replica's from the
  // inbox) and forgets which stream those invokes went out through.
  void CompleteWaiters(std::vector<SettledInvoke>& settled) ABSL_LOCKS_EXCLUDED(mu_);

  Store& store_;                // not owned
  const common::Clock& clock_;  // not owned
  const RegistryOptions options_;
  const bool routed_;  // store_.RoutesThroughStore()
  RegistryStats stats_;

  // Serializes decisions with the queuing of their edge messages (see Decision). Taken before
  // the store's lock and before mu_.
  absl::Mutex decide_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  // Serializes AttachEdge (its check of the routes and their update), before decide_mu_.
  absl::Mutex attach_mu_ ABSL_ACQUIRED_BEFORE(decide_mu_);

  mutable absl::Mutex mu_;
  uint64_t next_waiter_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<std::string, std::vector<Waiter>> waiters_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Route> routes_ ABSL_GUARDED_BY(mu_);
  // Pending invokes by the stream they went out through: a dead stream fails exactly these.
  absl::flat_hash_map<std::string, const EdgeSink*> sent_via_ ABSL_GUARDED_BY(mu_);
  // PumpRouted: one at a time; a call while one runs asks it to read again.
  bool pumping_ ABSL_GUARDED_BY(mu_) = false;
  bool pump_again_ ABSL_GUARDED_BY(mu_) = false;
  std::string inbox_position_ ABSL_GUARDED_BY(mu_);
  std::string inbox_recorded_ ABSL_GUARDED_BY(mu_);

  // Recovery (see the class comment). recovering_ only goes from true to false.
  std::atomic<bool> recovering_{false};
  int64_t recovery_ends_ms_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_set<std::string> owing_resync_ ABSL_GUARDED_BY(mu_);  // attached, not resynced
  absl::flat_hash_set<std::string> resynced_ ABSL_GUARDED_BY(mu_);

  // Orders presence delivery: events go out in revision order, read back from the store's log.
  absl::Mutex publish_mu_ ABSL_ACQUIRED_AFTER(mu_);
  uint64_t published_ ABSL_GUARDED_BY(publish_mu_);
  uint64_t next_watch_id_ ABSL_GUARDED_BY(publish_mu_) = 1;
  absl::flat_hash_map<uint64_t, Watcher> watchers_ ABSL_GUARDED_BY(publish_mu_);
};

}  // namespace tether::registry

#endif  // TETHER_REGISTRY_SERVICE_CORE_REGISTRY_H_
