#include "registry_service/server/edge_link_service.h"

#include <memory>
#include <string>
#include <vector>

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
constexpr size_t kMaxQueuedBytesToEdge = 256 << 20;

class LinkReactor;

// The Registry's handle on one stream. It outlives the reactor (the Registry may still hold
// it), so it forgets the reactor when the stream is done. Thread-safe.
class StreamSink final : public EdgeSink {
 public:
  explicit StreamSink(LinkReactor* reactor) : reactor_(reactor) {}
  void SendInvoke(const Dispatch& d, int64_t remaining_ms) override;
  void SendCommand(const EdgeCommand& c) override;
  void Forget() {
    absl::MutexLock lock(&mu_);
    reactor_ = nullptr;
  }

 private:
  void Send(v1::RegistryMessage msg);
  absl::Mutex mu_;
  LinkReactor* reactor_ ABSL_GUARDED_BY(mu_);
};

class LinkReactor final : public QueuedWriteReactor<Base, v1::RegistryMessage> {
 public:
  LinkReactor(Registry& registry, int64_t lease_ttl_ms, int64_t grace_ms)
      : QueuedWriteReactor(kMaxQueuedToEdge, kMaxQueuedBytesToEdge,
                           [](const v1::RegistryMessage& m) { return m.ByteSizeLong(); }),
        registry_(registry),
        lease_ttl_ms_(lease_ttl_ms),
        grace_ms_(grace_ms),
        sink_(std::make_shared<StreamSink>(this)) {
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      FinishAfterWrites(grpc::Status::OK);
      return;
    }
    if (!edge_id_.empty()) registry_.EdgeAlive(edge_id_, sink_.get());
    grpc::Status status = Handle(in_);
    if (!status.ok()) {
      FinishAfterWrites(status);
      return;
    }
    if (finishing()) return;  // the write side ended (slow edge): read no more
    StartRead(&in_);
  }

  void OnDone() override {
    sink_->Forget();
    if (!edge_id_.empty()) registry_.DetachEdge(edge_id_, sink_.get());
    delete this;
  }

 private:
  grpc::Status Handle(const v1::EdgeMessage& m) {
    if (edge_id_.empty() && !m.has_attach()) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "first message must be attach");
    }
    v1::RegistryMessage out;
    switch (m.msg_case()) {
      case v1::EdgeMessage::kAttach: {
        if (!edge_id_.empty()) {
          return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "attached twice");
        }
        absl::Status s = registry_.AttachEdge(m.attach().edge_id(), m.attach().epoch(), sink_);
        if (!s.ok()) return ToGrpc(s);
        edge_id_ = m.attach().edge_id();
        epoch_ = m.attach().epoch();
        auto* ack = out.mutable_attach_ack();
        ack->set_lease_ttl_ms(lease_ttl_ms_);
        ack->set_heartbeat_interval_ms(std::max<int64_t>(lease_ttl_ms_ / 4, 100));
        ack->set_superseded_grace_ms(grace_ms_);
        break;
      }
      case v1::EdgeMessage::kOpened: {
        auto* o = out.mutable_register_outcome();
        o->set_request_id(m.opened().request_id());
        o->set_conn_id(m.opened().conn_id());
        auto r = registry_.Register(FromProto(m.opened(), edge_id_, epoch_));
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
        break;
      }
      case v1::EdgeMessage::kClosed:
        registry_.Close(edge_id_, m.closed().conn_id());
        return grpc::Status::OK;
      case v1::EdgeMessage::kResult: {
        const v1::InvokeResult& r = m.result();
        InvokeOutcome outcome;
        outcome.code = r.ok() ? InvokeCode::kOk : InvokeCode::kNodeError;
        outcome.payload_json = r.payload_json();
        outcome.node_error_code = r.error_code();
        outcome.message = r.error_message();
        bool settled =
            registry_.AcceptResult(r.conn_id(), r.invoke_id(), r.node_id(), outcome, edge_id_);
        out.mutable_result_ack()->set_request_id(r.request_id());
        out.mutable_result_ack()->set_ignored(!settled);
        break;
      }
      case v1::EdgeMessage::kEvent:
        registry_.Seen(m.event().conn_id());
        return grpc::Status::OK;
      case v1::EdgeMessage::kResync: {
        std::vector<LiveConnection> live;
        for (const auto& l : m.resync().connections()) {
          live.push_back({FromProto(l.opened(), edge_id_, epoch_), l.generation(), l.superseded()});
        }
        auto r = registry_.Resync(edge_id_, epoch_, live);
        if (!r.ok()) return ToGrpc(r.status());
        out.mutable_resync_ack()->set_kept(r->kept);
        out.mutable_resync_ack()->set_closed(r->closed);
        break;
      }
      case v1::EdgeMessage::kHeartbeat: {
        absl::Status s = registry_.Heartbeat(edge_id_, epoch_);
        // A lapsed lease means the registry already dropped this edge's connections: the
        // edge must attach again and resync. A store that did not answer this once (busy,
        // unreachable) is no reason to drop the stream: the next renewal tries again, and a
        // dropped stream would cost a reattach and a resync on top of the load.
        if (absl::IsFailedPrecondition(s)) {
          return grpc::Status(grpc::StatusCode::UNAVAILABLE, std::string(s.message()));
        }
        return grpc::Status::OK;
      }
      case v1::EdgeMessage::kDrain: {
        absl::Status s = registry_.DrainEdge(edge_id_, epoch_);
        if (!s.ok()) return ToGrpc(s);
        return grpc::Status::OK;
      }
      case v1::EdgeMessage::kUndeliverable:
        registry_.Undeliverable(edge_id_, m.undeliverable().conn_id(),
                                m.undeliverable().invoke_id(), m.undeliverable().reason());
        return grpc::Status::OK;
      case v1::EdgeMessage::MSG_NOT_SET:
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "empty edge message");
    }
    Enqueue(std::move(out));
    return grpc::Status::OK;
  }

  Registry& registry_;
  const int64_t lease_ttl_ms_;
  const int64_t grace_ms_;
  std::shared_ptr<StreamSink> sink_;
  v1::EdgeMessage in_;
  std::string edge_id_;  // set by attach; only touched by the read path
  std::string epoch_;
};

void StreamSink::Send(v1::RegistryMessage msg) {
  absl::MutexLock lock(&mu_);
  if (reactor_ != nullptr) reactor_->Enqueue(std::move(msg));
}

void StreamSink::SendInvoke(const Dispatch& d, int64_t remaining_ms) {
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

void StreamSink::SendCommand(const EdgeCommand& c) {
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
  return new LinkReactor(registry_, lease_ttl_ms_, superseded_grace_ms_);
}

}  // namespace tether::registry
