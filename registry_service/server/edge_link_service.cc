#include "registry_service/server/edge_link_service.h"

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/synchronization/mutex.h"
#include "common/log.h"
#include "registry_service/server/convert.h"
#include "registry_service/server/queued_write_reactor.h"

namespace tether::registry {
namespace {

using Base = grpc::ServerBidiReactor<v1::EdgeMessage, v1::RegistryMessage>;

// Edges get generous room: a reconnect storm sends many commands at once. Invokes carry params
// (up to --max_params_bytes each), so bytes are bounded too; over either bound the stream ends
// (RESOURCE_EXHAUSTED) and the edge's resync on its next stream repairs what was lost with it.
constexpr size_t kMaxQueuedToEdge = 1 << 20;
// The most connections one edge's resync may report (its chunks together).
constexpr size_t kMaxResyncConnections = 1 << 20;
constexpr size_t kMaxQueuedBytesToEdge = 256 << 20;

class LinkReactor;

// Where a stream's messages are handled. gRPC's threads only read and sort: every message that
// needs the store runs on the service's WorkerPool, so a slow store (Redis under a reconnect
// storm) never holds up gRPC's threads (a starved transport misses keepalive pings and the edge
// drops the stream). Messages of one connection go to one lane (a Strand), in the order read;
// lanes run side by side, so one edge's decisions do not wait for each other's store round trips.
// Attach, resync and drain are barriers: reading pauses, the barrier waits for every lane to
// empty, runs alone, and reading resumes. Heartbeats have a lane of their own, never behind
// registrations. At most kMaxInFlight lane messages are queued per stream; beyond that reading
// pauses (gRPC's flow control then holds the edge back).
constexpr int kLanes = EdgeLinkService::kLanes;
constexpr int kMaxInFlight = 65536;

// A stream's state shared by its reactor, its queued work and the Registry (as the stream's
// EdgeSink). Outlives the reactor: after OnDone it forgets it, and what still runs or arrives
// finds no stream to write to. Thread-safe.
//
// Read control, under mu_ (one read outstanding at a time):
//   event                            then
//   message read, lane message       queued on its lane; read on unless kMaxInFlight queued
//   message read, heartbeat          queued on the heartbeat lane; read on
//   message read, barrier            run now if no lane work is queued, else kept until the
//                                    last lane task ends; no read until it ran
//   lane task ended                  run the kept barrier if it was the last; else read on if
//                                    reading had paused and nothing blocks it
//   barrier ended                    read on
class Link final : public EdgeSink, public std::enable_shared_from_this<Link> {
 public:
  Link(Registry& registry, WorkerPool& pool, LinkReactor* reactor, int64_t lease_ttl_ms,
       int64_t grace_ms, int64_t max_registration_wait_ms)
      : registry_(registry),
        lease_ttl_ms_(lease_ttl_ms),
        grace_ms_(grace_ms),
        max_registration_wait_ms_(max_registration_wait_ms),
        reactor_(reactor),
        control_(std::make_shared<Strand>(pool)),
        heartbeats_(std::make_shared<Strand>(pool)) {
    for (auto& lane : lanes_) lane = std::make_shared<Strand>(pool);
  }

  void SendInvoke(const Dispatch& d, int64_t remaining_ms) override;
  void SendCommand(const EdgeCommand& c) override;

  // Starts the first read.
  void Start() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    ReadLocked();
  }
  // A message was read (on a gRPC thread).
  void Received(v1::EdgeMessage m) ABSL_LOCKS_EXCLUDED(mu_);
  // The reactor is done (OnDone): forget it, and detach the edge (on a worker: the detach
  // fails the invokes sent through this stream, in the store).
  void Done() ABSL_LOCKS_EXCLUDED(mu_) {
    std::string edge_id;
    {
      absl::MutexLock lock(&mu_);
      reactor_ = nullptr;
      edge_id = edge_id_;
    }
    if (edge_id.empty()) return;
    control_->Post(
        [self = shared_from_this(), edge_id] { self->registry_.DetachEdge(edge_id, self.get()); });
  }
  void Finish(const grpc::Status& status) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // Runs `m` on `strand`; a barrier ends reading's pause, a lane task counts down.
  void Post(const std::shared_ptr<Strand>& strand, v1::EdgeMessage m, bool barrier)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `read_at`: when the message was read (a registration that waited too long is shed).
  void Run(const v1::EdgeMessage& m, bool barrier, std::chrono::steady_clock::time_point read_at)
      ABSL_LOCKS_EXCLUDED(mu_);
  grpc::Status Handle(const v1::EdgeMessage& m, v1::RegistryMessage* out, bool* reply)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Send(v1::RegistryMessage msg) ABSL_LOCKS_EXCLUDED(mu_);
  void ReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Registry& registry_;
  const int64_t lease_ttl_ms_;
  const int64_t grace_ms_;
  const int64_t max_registration_wait_ms_;
  absl::Mutex mu_;
  LinkReactor* reactor_ ABSL_GUARDED_BY(mu_);  // null once the stream is done
  bool read_pending_ ABSL_GUARDED_BY(mu_) = false;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;  // lane messages queued or running
  bool barrier_running_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<v1::EdgeMessage> waiting_barrier_ ABSL_GUARDED_BY(mu_);
  std::string edge_id_ ABSL_GUARDED_BY(mu_);  // set by attach
  // Connections whose close was read and not yet handled. Their registration, if still queued
  // ahead of the close, is not decided: the socket is gone (typically the edge gave up
  // waiting), and a grant would supersede the node's working old socket for a dead one.
  absl::flat_hash_set<std::string> closing_ ABSL_GUARDED_BY(mu_);
  std::string epoch_ ABSL_GUARDED_BY(mu_);
  // The chunks of a resync read so far (Resync.more); reconciled at the last one. Touched only
  // by barriers, which run one at a time.
  std::vector<LiveConnection> resync_chunks_;
  std::shared_ptr<Strand> lanes_[kLanes];
  std::shared_ptr<Strand> control_;     // barriers
  std::shared_ptr<Strand> heartbeats_;  // heartbeats
};

class LinkReactor final : public QueuedWriteReactor<Base, v1::RegistryMessage> {
 public:
  LinkReactor(Registry& registry, WorkerPool& pool, int64_t lease_ttl_ms, int64_t grace_ms,
              int64_t max_registration_wait_ms)
      : QueuedWriteReactor(kMaxQueuedToEdge, kMaxQueuedBytesToEdge,
                           [](const v1::RegistryMessage& m) { return m.ByteSizeLong(); }),
        link_(std::make_shared<Link>(registry, pool, this, lease_ttl_ms, grace_ms,
                                     max_registration_wait_ms)) {
    CountCutsIn(&registry.stats().edge_links_cut);
    link_->Start();
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      FinishAfterWrites(grpc::Status::OK);
      return;
    }
    link_->Received(std::move(in_));
  }

  void OnDone() override {
    link_->Done();
    delete this;
  }

  // Called by the Link, under its lock, with no read outstanding.
  void ReadNext() { StartRead(&in_); }

 private:
  std::shared_ptr<Link> link_;
  v1::EdgeMessage in_;
};

void Link::ReadLocked() {
  if (reactor_ == nullptr || read_pending_ || barrier_running_ || waiting_barrier_.has_value() ||
      in_flight_ >= kMaxInFlight || reactor_->finishing()) {
    return;
  }
  read_pending_ = true;
  reactor_->ReadNext();
}

void Link::Received(v1::EdgeMessage m) {
  std::string edge_id;
  {
    absl::MutexLock lock(&mu_);
    read_pending_ = false;
    edge_id = edge_id_;
    switch (m.msg_case()) {
      case v1::EdgeMessage::kOpened:
      case v1::EdgeMessage::kClosed:
      case v1::EdgeMessage::kResult:
      case v1::EdgeMessage::kEvent:
      case v1::EdgeMessage::kUndeliverable:
        if (!edge_id.empty()) {
          const std::string& conn = m.has_opened()   ? m.opened().conn_id()
                                    : m.has_closed() ? m.closed().conn_id()
                                    : m.has_result() ? m.result().conn_id()
                                    : m.has_event()  ? m.event().conn_id()
                                                     : m.undeliverable().conn_id();
          ++in_flight_;
          if (m.has_closed()) closing_.insert(conn);
          Post(lanes_[absl::HashOf(conn) % kLanes], std::move(m), false);
          ReadLocked();
          break;
        }
        [[fallthrough]];  // not attached: the control lane refuses it
      default:
        if (m.msg_case() == v1::EdgeMessage::kHeartbeat && !edge_id.empty()) {
          Post(heartbeats_, std::move(m), false);
          ReadLocked();
        } else if (in_flight_ == 0 && !barrier_running_) {
          barrier_running_ = true;
          Post(control_, std::move(m), true);
        } else {
          waiting_barrier_ = std::move(m);
        }
    }
  }
  // A stream that is being read is alive (cheap: no store call).
  if (!edge_id.empty()) registry_.EdgeAlive(edge_id, this);
}

void Link::Post(const std::shared_ptr<Strand>& strand, v1::EdgeMessage m, bool barrier) {
  strand->Post([self = shared_from_this(), m = std::move(m), barrier,
                read_at = std::chrono::steady_clock::now()] { self->Run(m, barrier, read_at); });
}

void Link::Run(const v1::EdgeMessage& m, bool barrier,
               std::chrono::steady_clock::time_point read_at) {
  v1::RegistryMessage out;
  bool reply = false;
  bool gone = false;
  bool closing = false;
  {
    absl::MutexLock lock(&mu_);
    gone = reactor_ == nullptr;
    if (m.has_opened()) closing = closing_.contains(m.opened().conn_id());
  }
  const int64_t waited_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::steady_clock::now() - read_at)
                                .count();
  grpc::Status status;
  if (m.has_opened() && gone) {
    // A registration read before the stream ended has no one to answer any more (the edge
    // refuses its registering sockets when the link drops): granting it would leave an owner
    // no socket holds. Closes, results and the rest still count.
  } else if (m.has_opened() && (closing || waited_ms > max_registration_wait_ms_)) {
    // Overload: the edge gave up on this socket (closing_) or is about to (its handshake
    // timeout). Granting it now would supersede the node's working old socket for one that is
    // being closed: refuse it, undecided, as retryable; the old socket keeps the node.
    registry_.ShedRegistration();
    auto* o = out.mutable_register_outcome();
    o->set_request_id(m.opened().request_id());
    o->set_conn_id(m.opened().conn_id());
    o->set_error_code("UNAVAILABLE");
    o->set_error_message(closing ? "the socket closed before its registration was decided"
                                 : "registry overloaded: the registration waited " +
                                       std::to_string(waited_ms) + " ms; retry");
    reply = true;
  } else {
    status = Handle(m, &out, &reply);
  }
  if (!status.ok()) {
    Finish(status);
  } else if (reply) {
    Send(std::move(out));
  }
  absl::MutexLock lock(&mu_);
  if (m.has_closed()) closing_.erase(m.closed().conn_id());
  if (barrier) {
    barrier_running_ = false;
  } else if (m.msg_case() != v1::EdgeMessage::kHeartbeat) {
    --in_flight_;
  }
  if (waiting_barrier_.has_value() && in_flight_ == 0 && !barrier_running_) {
    barrier_running_ = true;
    v1::EdgeMessage next = std::move(*waiting_barrier_);
    waiting_barrier_.reset();
    Post(control_, std::move(next), true);
    return;
  }
  ReadLocked();
}

void Link::Finish(const grpc::Status& status) {
  absl::MutexLock lock(&mu_);
  if (reactor_ != nullptr) reactor_->FinishAfterWrites(status);
}

grpc::Status Link::Handle(const v1::EdgeMessage& m, v1::RegistryMessage* out, bool* reply) {
  std::string edge_id, epoch;
  {
    absl::MutexLock lock(&mu_);
    edge_id = edge_id_;
    epoch = epoch_;
  }
  if (edge_id.empty() && !m.has_attach()) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "first message must be attach");
  }
  *reply = true;
  switch (m.msg_case()) {
    case v1::EdgeMessage::kAttach: {
      if (!edge_id.empty()) {
        return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "attached twice");
      }
      absl::Status s =
          registry_.AttachEdge(m.attach().edge_id(), m.attach().epoch(), shared_from_this());
      if (!s.ok()) return ToGrpc(s);
      {
        absl::MutexLock lock(&mu_);
        edge_id_ = m.attach().edge_id();
        epoch_ = m.attach().epoch();
      }
      auto* ack = out->mutable_attach_ack();
      ack->set_lease_ttl_ms(lease_ttl_ms_);
      ack->set_heartbeat_interval_ms(std::max<int64_t>(lease_ttl_ms_ / 4, 100));
      ack->set_superseded_grace_ms(grace_ms_);
      return grpc::Status::OK;
    }
    case v1::EdgeMessage::kOpened: {
      auto* o = out->mutable_register_outcome();
      o->set_request_id(m.opened().request_id());
      o->set_conn_id(m.opened().conn_id());
      auto r = registry_.Register(FromProto(m.opened(), edge_id, epoch));
      if (!r.ok()) {
        o->set_error_code("UNAVAILABLE");
        o->set_error_message(std::string(r.status().message()));
      } else {
        o->set_granted(r->granted);
        o->set_generation(r->generation);
        o->set_device_token(r->device_token);
        o->set_error_code(r->error_code);
        o->set_error_message(r->error_message);
        o->set_details_code(r->details_code);
        o->set_pairing_request_id(r->pairing_request_id);
      }
      return grpc::Status::OK;
    }
    case v1::EdgeMessage::kResult: {
      const v1::InvokeResult& r = m.result();
      InvokeOutcome outcome;
      outcome.code = r.ok() ? InvokeCode::kOk : InvokeCode::kNodeError;
      outcome.payload_json = r.payload_json();
      outcome.node_error_code = r.error_code();
      outcome.message = r.error_message();
      bool settled =
          registry_.AcceptResult(r.conn_id(), r.invoke_id(), r.node_id(), outcome, edge_id);
      out->mutable_result_ack()->set_request_id(r.request_id());
      out->mutable_result_ack()->set_ignored(!settled);
      return grpc::Status::OK;
    }
    case v1::EdgeMessage::kResync: {
      if (resync_chunks_.size() + m.resync().connections_size() > kMaxResyncConnections) {
        resync_chunks_.clear();
        return grpc::Status(
            grpc::StatusCode::RESOURCE_EXHAUSTED,
            "resync of more than " + std::to_string(kMaxResyncConnections) + " connections");
      }
      for (const auto& l : m.resync().connections()) {
        resync_chunks_.push_back(
            {FromProto(l.opened(), edge_id, epoch), l.generation(), l.superseded()});
      }
      if (m.resync().more()) {  // a chunk: the last one reconciles them all, and is answered
        *reply = false;
        return grpc::Status::OK;
      }
      std::vector<LiveConnection> live = std::move(resync_chunks_);
      resync_chunks_.clear();
      auto r = registry_.Resync(edge_id, epoch, live);
      if (!r.ok()) return ToGrpc(r.status());
      out->mutable_resync_ack()->set_kept(r->kept);
      out->mutable_resync_ack()->set_closed(r->closed);
      return grpc::Status::OK;
    }
    default:
      break;
  }
  *reply = false;
  switch (m.msg_case()) {
    case v1::EdgeMessage::kClosed:
      registry_.Close(edge_id, m.closed().conn_id());
      return grpc::Status::OK;
    case v1::EdgeMessage::kEvent:
      registry_.Seen(m.event().conn_id());
      return grpc::Status::OK;
    case v1::EdgeMessage::kHeartbeat: {
      absl::Status s = registry_.Heartbeat(edge_id, epoch);
      // A lapsed lease means the registry already dropped this edge's connections: the
      // edge must attach again and resync. A store that did not answer this once (busy,
      // unreachable) is no reason to drop the stream: the next renewal tries again, and a
      // dropped stream would cost a reattach and a resync on top of the load.
      if (absl::IsFailedPrecondition(s)) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, std::string(s.message()));
      }
      return grpc::Status::OK;
    }
    case v1::EdgeMessage::kDrain:
      return ToGrpc(registry_.DrainEdge(edge_id, epoch));
    case v1::EdgeMessage::kUndeliverable:
      registry_.Undeliverable(edge_id, m.undeliverable().conn_id(), m.undeliverable().invoke_id(),
                              m.undeliverable().reason());
      return grpc::Status::OK;
    default:
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "empty edge message");
  }
}

void Link::Send(v1::RegistryMessage msg) {
  absl::MutexLock lock(&mu_);
  if (reactor_ != nullptr) reactor_->Enqueue(std::move(msg));
}

void Link::SendInvoke(const Dispatch& d, int64_t remaining_ms) {
  v1::RegistryMessage msg;
  auto* inv = msg.mutable_invoke();
  inv->set_invoke_id(d.invoke_id);
  inv->set_node_id(d.node_id);
  inv->set_conn_id(d.conn_id);
  inv->set_command(d.command);
  inv->set_params_json(d.params_json);
  inv->set_timeout_ms(remaining_ms);
  inv->set_idempotency_key(d.idempotency_key);
  Send(std::move(msg));
}

void Link::SendCommand(const EdgeCommand& c) {
  v1::RegistryMessage msg;
  switch (c.kind) {
    case EdgeCommand::Kind::kSuperseded:
      msg.mutable_superseded()->set_conn_id(c.conn_id);
      msg.mutable_superseded()->set_grace_ms(c.grace_ms);
      break;
    case EdgeCommand::Kind::kClose:
      msg.mutable_close()->set_conn_id(c.conn_id);
      msg.mutable_close()->set_reason(c.reason);
      break;
    case EdgeCommand::Kind::kCancel:
      msg.mutable_cancel()->set_invoke_id(c.invoke_id);
      msg.mutable_cancel()->set_node_id(c.node_id);
      msg.mutable_cancel()->set_conn_id(c.conn_id);
      break;
  }
  Send(std::move(msg));
}

}  // namespace

// Refuses a stream before anything is read from it.
class RefusedReactor final : public Base {
 public:
  explicit RefusedReactor(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

grpc::ServerBidiReactor<v1::EdgeMessage, v1::RegistryMessage>* EdgeLinkService::Connect(
    grpc::CallbackServerContext* context) {
  if (require_client_cert_) {
    auto auth_context = context->auth_context();
    if (auth_context == nullptr || !auth_context->IsPeerAuthenticated()) {
      common::Log(common::LogLevel::kWarn, "edge_auth_failed",
                  {{"peer", context->peer()}, {"why", "no verified client certificate"}});
      return new RefusedReactor(
          grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "EdgeLink needs a client certificate"));
    }
  }
  if (grpc::Status s = auth_.Authorize(*context); !s.ok()) return new RefusedReactor(s);
  return new LinkReactor(registry_, *pool_, lease_ttl_ms_, superseded_grace_ms_,
                         max_registration_wait_ms_);
}

}  // namespace tether::registry
