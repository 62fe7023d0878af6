// EdgeCore: the edge's connection table and forwarding logic, with no sockets and no gRPC.
#ifndef TETHER_WS_EDGE_CORE_EDGE_CORE_H_
#define TETHER_WS_EDGE_CORE_EDGE_CORE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/node_hash_map.h"
#include "common/clock.h"
#include "common/metrics.h"
#include "proto/tether/v1/edge_link.pb.h"
#include "ws_edge/core/handshake_limiter.h"
#include "ws_edge/core/ports.h"
#include "ws_edge/protocol/handshake.h"

namespace tether::edge {

struct EdgeOptions {
  std::string edge_id;
  std::string version = "tether-edge/0.1";
  std::optional<std::string> shared_token;  // nullopt: no token required
  int64_t handshake_timeout_ms = 15'000;
  int64_t tick_interval_ms = 30'000;  // advertised; ticks are sent at this period
  int64_t max_payload = 26'214'400;   // frame limit after hello (advertised)
  // A resync goes in messages of about this many bytes at most (the registry accepts 64 MiB
  // per message; an edge with 50,000 nodes of rich metadata would exceed one).
  int64_t resync_chunk_bytes = 4 << 20;
  int64_t max_buffered_bytes = 52'428'800;  // advertised; the transport enforces its own bound
  // Drain (SIGTERM): live sockets are closed with 1012 at random moments within the spread, so
  // their nodes do not all reconnect at once; one with invokes in flight waits for them, up to
  // the drain timeout. Then the registry is told (edge_drain) and the edge can exit.
  // Sockets held at once (any state); more are refused at open with 1013 so that the process
  // never runs out of file descriptors (accept would then fail over and over). 0: no limit.
  size_t max_connections = 0;
  // Sockets before hello-ok (each may make the transport reserve up to the 64 KiB pre-hello
  // frame limit for a frame header that declares it): a budget for the memory strangers can
  // make the edge hold. More are refused at open with 1013. 0: no limit.
  size_t max_pending_handshakes = 0;
  // Handshakes being verified or verified and waiting for the registry's decision. Past this a
  // new connect is refused before its signature is checked (UNAVAILABLE, retryable, with a
  // jittered retryAfterMs; close 1013): under a reconnect storm the edge then spends no CPU on
  // proofs the registry could not decide in time (it sheds registrations that waited too long;
  // each would come back as a retry, and on a machine shared with Redis the retries' proofs
  // starved the store until almost nothing got through). 0: no limit.
  size_t max_registrations_in_flight = 0;
  int64_t drain_spread_ms = 2'000;
  int64_t drain_timeout_ms = 5'000;
  uint64_t random_seed = 0;  // 0: from the system
  HandshakeLimits handshake_limits;
};

// Counters for metrics and tests. Written on the loop, readable from any thread.
struct EdgeStats {
  common::Counter handshakes_ok;
  common::Counter handshakes_rejected;     // failed identity, token, params or pairing
  common::Counter handshakes_unavailable;  // refused while the registry link was down
  common::Counter invokes_delivered;
  common::Counter invokes_undeliverable;
  common::Counter invokes_duplicate;  // sent again after a registry takeover: dropped
  common::Counter results_forwarded;
  common::Counter superseded_closed;
  common::Counter slow_consumers_closed;
  common::Counter handshakes_rate_limited;  // sockets refused at open: their address was over limit
  common::Counter connections_refused;      // sockets refused at open: --max_connections reached
  common::Counter handshakes_busy;  // connects refused unverified: max_registrations_in_flight
  std::atomic<int64_t> sockets{0};
  std::atomic<int64_t> live{0};
};

// Owns every node connection's protocol state: the handshake, registration with the registry,
// invoke delivery and result forwarding, ticks and retirement of replaced connections.
// Borrows the downstream, the link and the clock (not owned; must outlive it).
// Not thread-safe: the event loop that owns the sockets calls every method.
//
// Re-entrant: the downstream may call OnClose from inside Close or Send (websocketpp's
// terminate() on plain ws:// completes synchronously). A socket closed while a method of the
// core is running is marked gone at once (nothing more is sent to it, its `closed` goes to the
// registry) and leaves the tables only when the outermost call returns, so no loop over the
// table and no Conn& held by a caller is invalidated under it.
class EdgeCore {
 public:
  // `offload` checks signatures; nullptr checks them inline.
  EdgeCore(const EdgeOptions& options, Downstream& downstream, RegistryLink& link,
           const common::Clock& clock, Offload* offload = nullptr);
  EdgeCore(const EdgeCore&) = delete;
  EdgeCore& operator=(const EdgeCore&) = delete;

  // --- From the sockets ---
  // `remote_addr` is host:port of the node as far as the edge can tell (the socket's peer, or
  // the address a trusted proxy forwarded); per-address handshake limits apply to its host.
  void OnOpen(uint64_t socket, const std::string& remote_addr, bool loopback);
  void OnMessage(uint64_t socket, const std::string& text);
  // The socket is gone (closed by either side). `slow_consumer`: the transport dropped it for
  // not reading.
  void OnClose(uint64_t socket);

  // --- From the registry link ---
  void OnLinkUp();    // attached: report every live connection (resync)
  void OnLinkDown();  // the stream broke; the link reconnects by itself
  void OnRegistryMessage(const v1::RegistryMessage& message);

  // --- From the loop's timer ---
  void OnTimer();

  // Shutdown: refuse new sockets, close sockets still in their handshake with 1012 now and live
  // ones with 1012 spread over drain_spread_ms (each after its own invokes, up to
  // drain_timeout_ms); once none is left, tell the registry (drain: the lease ends).
  void Drain();
  bool drained() const { return drain_sent_; }

  size_t connection_count() const { return sockets_.size(); }
  size_t live_count() const { return static_cast<size_t>(stats_.live.load()); }
  const EdgeStats& stats() const { return stats_; }
  // Closes `socket` as a slow consumer (1008).
  void CloseSlowConsumer(uint64_t socket);

 private:
  // A socket's states (every change through SetState):
  //   kAwaitConnect --connect, within the limits--------------------> kVerifying
  //   kAwaitConnect --connect past max_registrations_in_flight------> kClosing (1013, unverified)
  //   kVerifying    --proof good, link up-----------------------------> kRegistering (opened sent)
  //   kVerifying    --proof bad / link down / draining----------------> kClosing
  //   kRegistering  --granted-----------------------------------------> kLive (hello-ok)
  //   kRegistering  --refused / link down / handshake timeout--------> kClosing
  //   kLive         --superseded grace, slow reader, drain------------> kClosing
  //   any           --the socket closes (OnClose)---------------------> kClosing, then erased
  enum class State { kAwaitConnect, kVerifying, kRegistering, kLive, kClosing };

  struct Conn {
    uint64_t socket = 0;
    std::string conn_id;
    State state = State::kAwaitConnect;
    std::string nonce;
    int64_t opened_ms = 0;
    std::string remote_addr;
    bool loopback = false;
    // The checked handshake, from the proof until hello-ok. A live socket keeps only what a
    // resync reports, serialized (the parsed handshake is ~1.2 KB per socket, this ~0.3 KB).
    std::unique_ptr<protocol::HandshakeAccepted> accepted;
    std::string opened;   // the v1::ConnectionOpened sent to register; a resync resends it
    std::string node_id;  // once the proof checked out
    uint64_t register_request = 0;
    uint64_t generation = 0;
    bool superseded = false;
    int64_t retire_at_ms = 0;
    int64_t next_tick_ms = 0;
    int64_t seq = 0;
    absl::flat_hash_set<std::string> invokes;  // delivered, not yet answered or cancelled
    std::vector<v1::InvokeRequest> queued;     // arrived before hello-ok went out
    bool gone = false;                  // OnClose ran; erased when the outermost call returns
    int64_t next_event_forward_ms = 0;  // node.event touches are sent at most once a second
    int64_t drain_close_at_ms = 0;      // draining: closed with 1012 from then on
    bool pending_handshake = true;      // counted in pending_handshakes_ until hello-ok
    int unauthorized_in_a_row = 0;      // requests answered "unauthorized role: node"
  };
  // Counts nested entries into the core; the outermost one erases sockets closed meanwhile.
  class Entry {
   public:
    explicit Entry(EdgeCore& core) : core_(core) { ++core_.depth_; }
    ~Entry() {
      if (--core_.depth_ == 0) core_.EraseClosed();
    }
    Entry(const Entry&) = delete;
    Entry& operator=(const Entry&) = delete;

   private:
    EdgeCore& core_;
  };
  struct AwaitingAck {
    uint64_t socket = 0;
    std::string frame_id;
  };

  void EraseClosed();
  void DrainStep(int64_t now);  // closes what the drain schedule says, then tells the registry
  Conn* Find(uint64_t socket);
  Conn* FindByConnId(const std::string& conn_id);
  bool SendFrame(Conn& conn, const std::string& text);
  void CloseConn(Conn& conn, int code, const std::string& reason);
  // Every change of a Conn's state goes through here: it keeps registering_ in step.
  void SetState(Conn& conn, State state);
  void Reject(Conn& conn, const protocol::HandshakeRejection& rejection);
  // Refuses a handshake as retryable: UNAVAILABLE with retryAfterMs (no response when the
  // request id is unknown), then close 1013 with `close_reason`.
  void RefuseRetryable(Conn& conn, const std::string& request_id, const std::string& why,
                       int64_t retry_after_ms, const std::string& close_reason);
  // The registry cannot take the registration (link down, refused, no answer): counted.
  void RefuseUnavailable(Conn& conn, const std::string& request_id, const std::string& why);
  void HandleConnect(Conn& conn, const std::string& text);
  void FinishConnect(uint64_t socket, const std::string& conn_id, protocol::HandshakeResult result);
  void HandleLiveFrame(Conn& conn, const std::string& text);
  void HandleInvokeResult(Conn& conn, const std::string& frame_id, const nlohmann::json& params);
  void HandleRegisterOutcome(const v1::RegisterOutcome& outcome);
  void DeliverInvoke(Conn& conn, const v1::InvokeRequest& invoke);
  // Sends to the registry only while attached and resynced (the resync goes first).
  bool SendLink(const v1::EdgeMessage& message);
  // Tells the registry that invoke `invoke_id` on `conn_id` will not be answered from here
  // (the registry ends it DISCONNECTED at once; a no-op if it was settled).
  void ReportUndeliverable(const std::string& invoke_id, const std::string& conn_id,
                           const std::string& reason);
  void FillOpened(const Conn& conn, v1::ConnectionOpened* opened) const;
  void AnswerAck(uint64_t request_id, bool ignored);

  const EdgeOptions options_;
  Downstream& downstream_;      // not owned
  RegistryLink& link_;          // not owned
  const common::Clock& clock_;  // not owned
  InlineOffload inline_offload_;
  Offload& offload_;  // not owned (or inline_offload_)
  const int64_t started_ms_;
  bool link_up_ = false;
  bool draining_ = false;
  uint64_t next_request_ = 1;
  // Node-based: a slot is a pointer, not a whole Conn, and Conn* stays valid across inserts.
  absl::node_hash_map<uint64_t, Conn> sockets_;
  absl::flat_hash_map<std::string, uint64_t> by_conn_id_;
  absl::flat_hash_map<uint64_t, AwaitingAck> awaiting_ack_;  // result request id -> frame
  // Invoke ids delivered lately (the last kRecentInvokes), oldest first. A registry replica
  // that takes this edge over may send again what the previous one sent but had not recorded;
  // the node must not run it twice.
  static constexpr size_t kRecentInvokes = 65536;
  absl::flat_hash_set<std::string> recent_invokes_;
  std::deque<std::string> recent_order_;
  EdgeStats stats_;
  HandshakeLimiter limiter_;
  int64_t verifying_ = 0;    // signature checks queued or running off the loop
  int64_t registering_ = 0;  // sockets in kRegistering (see SetState)
  int64_t next_prune_ms_ = 0;
  size_t pending_handshakes_ = 0;  // sockets open but not yet past hello-ok
  int depth_ = 0;                  // nested public calls in progress (see Entry)
  int64_t drain_deadline_ms_ = 0;
  bool drain_sent_ = false;
  std::mt19937_64 rng_;
  std::vector<uint64_t> closed_;  // sockets gone during them, to erase
};

// Close codes the edge uses beyond RFC 6455's.
inline constexpr int kCloseReplaced = 4001;

}  // namespace tether::edge

#endif  // TETHER_WS_EDGE_CORE_EDGE_CORE_H_
