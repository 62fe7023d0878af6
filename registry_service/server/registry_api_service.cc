#include "registry_service/server/registry_api_service.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "registry_service/server/convert.h"
#include "registry_service/server/queued_write_reactor.h"

namespace tether::registry {
namespace {

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

// One InvokeNode call: admitted on arrival (from then on the Registry answers it by its
// deadline, even while the call waits for a worker behind an overloaded store), started on a
// worker, and finished when the Registry ends the invoke; turns the caller's cancellation (or
// expired deadline) into CancelInvoke. Deletes itself in OnDone.
//
// Lifetime: Finish (in Complete) may be followed by OnDone, and so by `delete this`, on any
// thread at once, and the Registry may run the invoke's `done` (which calls Complete) at any
// time after Admit: before the worker starts it (the deadline passed, the caller cancelled),
// or before Start returns. So nothing may touch the reactor after Admit except through
// CompleteOnce: the worker's task (Start) holds only the registry, the shared State and its own
// copy of the request, and Complete runs once, guarded by State::finished. (Found by the Redis
// invoke benchmark at 5,000/s: Start locked the mutex of a reactor that a quick completion had
// already deleted; the registry crashed in gRPC's executor thread.)
class InvokeReactor final : public grpc::ServerUnaryReactor {
 public:
  // Admits the call (cheap, no store call); `pool` then starts it.
  InvokeReactor(Registry& registry, WorkerPool& pool, grpc::CallbackServerContext* ctx,
                const v1::InvokeNodeRequest* req, v1::InvokeNodeResponse* resp, std::string caller)
      : registry_(registry), ctx_(ctx), resp_(resp), state_(std::make_shared<State>()) {
    InvokeParams p;
    p.caller = std::move(caller);
    p.node_id = req->node_id();
    p.command = req->command();
    p.params_json = req->params_json();
    p.timeout_ms = req->timeout_ms();
    p.idempotency_key = req->idempotency_key();
    const auto deadline = ctx->deadline();
    if (deadline != std::chrono::system_clock::time_point::max()) {
      // Both ends of the difference come from the same clock at the same moment.
      p.caller_remaining_ms =
          std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::milliseconds>(
                                   deadline - std::chrono::system_clock::now())
                                   .count());
    }
    std::shared_ptr<State> state = state_;
    const InvokeTicket admitted = registry.Admit(
        p, [state, self = this](const InvokeResult& r) { CompleteOnce(state, self, r); });
    // `this` may be finishing from here on (a deadline already passed): only the locals.
    {
      absl::MutexLock lock(&state->mu);
      state->ticket = admitted;
    }
    pool.Post([&registry, state, admitted, p = std::move(p)] {
      const InvokeTicket ticket = registry.Start(admitted, p);
      {
        absl::MutexLock lock(&state->mu);
        if (state->finished || ticket.invoke_id.empty()) return;
        state->ticket = ticket;  // a joined invoke's
        if (!state->cancelled) return;
      }
      registry.CancelInvoke(ticket);  // the caller gave up while the invoke was starting
    });
  }

  void OnCancel() override {
    Registry& registry = registry_;
    InvokeTicket ticket;
    {
      absl::MutexLock lock(&state_->mu);
      state_->cancelled = true;
      if (state_->finished) return;
      ticket = state_->ticket;  // set since the constructor: the admitted, or a joined, invoke
    }
    registry.CancelInvoke(ticket);  // runs Complete if the invoke still waits: `this` may go
  }

  void OnDone() override { delete this; }

 private:
  // Shared with the Registry's callback and the start task, so it outlives the reactor.
  struct State {
    absl::Mutex mu;
    InvokeTicket ticket ABSL_GUARDED_BY(mu);  // what a cancel names
    bool cancelled ABSL_GUARDED_BY(mu) = false;
    bool finished ABSL_GUARDED_BY(mu) = false;  // Complete ran (or runs): the reactor may be gone
  };

  static void CompleteOnce(const std::shared_ptr<State>& state, InvokeReactor* self,
                           const InvokeResult& r) {
    {
      absl::MutexLock lock(&state->mu);
      if (state->finished) return;
      state->finished = true;
    }
    self->Complete(r);  // alive: only this call finishes the reactor
  }

  void Complete(const InvokeResult& r) {
    resp_->set_invoke_id(r.invoke_id);
    resp_->set_idempotency_key(r.idempotency_key);
    resp_->set_effective_timeout_ms(r.effective_timeout_ms);
    resp_->set_replayed(r.replayed);
    resp_->set_conn_id(r.outcome.conn_id);
    resp_->set_generation(r.outcome.generation);
    if (r.outcome.code == InvokeCode::kOk) {
      resp_->set_payload_json(r.outcome.payload_json);
      Finish(grpc::Status::OK);
      return;
    }
    ctx_->AddTrailingMetadata("tether-error-code", InvokeCodeName(r.outcome.code));
    ctx_->AddTrailingMetadata("tether-invoke-error-bin", ToInvokeError(r).SerializeAsString());
    std::string message = std::string(InvokeCodeName(r.outcome.code)) + ": " + r.outcome.message;
    if (!r.outcome.node_error_code.empty()) message += " (" + r.outcome.node_error_code + ")";
    Finish(grpc::Status(InvokeStatusCode(r.outcome.code), message));  // last touch of `this`
  }

  Registry& registry_;
  grpc::CallbackServerContext* ctx_;
  v1::InvokeNodeResponse* resp_;
  const std::shared_ptr<State> state_;
};

using WatchBase = grpc::ServerWriteReactor<v1::PresenceEvent>;

// A slow watcher is cut off with RESOURCE_EXHAUSTED; it resumes from its last revision.
constexpr size_t kMaxQueuedToWatcher = 100'000;

// One WatchPresence stream. Deletes itself in OnDone, after unsubscribing.
class WatchReactor final : public QueuedWriteReactor<WatchBase, v1::PresenceEvent> {
 public:
  WatchReactor(Registry& registry, uint64_t from_revision, const grpc::Status& allowed)
      : QueuedWriteReactor(kMaxQueuedToWatcher), registry_(registry) {
    CountCutsIn(&registry_.stats().watchers_cut);
    if (!allowed.ok()) {
      FinishAfterWrites(allowed);
      return;
    }
    auto id = registry_.Watch(
        from_revision,
        [this](const PresenceEvent& e) {
          v1::PresenceEvent out;
          ToProto(e, &out);
          Enqueue(std::move(out));
        },
        [this](const absl::Status& s) {
          FinishAfterWrites(grpc::Status(grpc::StatusCode::OUT_OF_RANGE,
                                         std::string(s.message()) + "; re-list and watch again"));
        });
    if (!id.ok()) {
      FinishAfterWrites(ToGrpc(id.status()));
      return;
    }
    watch_id_ = *id;
  }

  void OnCancel() override { FinishAfterWrites(grpc::Status::CANCELLED); }

  void OnDone() override {
    if (watch_id_ != 0) registry_.Unwatch(watch_id_);
    delete this;
  }

 private:
  Registry& registry_;
  uint64_t watch_id_ = 0;
};

}  // namespace

grpc::Status RegistryApiService::Serving(grpc::CallbackServerContext* ctx) const {
  absl::Status s = registry_.ServingStatus();
  if (s.ok()) return grpc::Status::OK;
  ctx->AddTrailingMetadata("retry-after-ms", std::to_string(registry_.RetryAfterMs()));
  return ToGrpc(s);
}

grpc::ServerUnaryReactor* RegistryApiService::Offload(grpc::CallbackServerContext* ctx,
                                                      std::function<grpc::Status()> work) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  pool_->Post([reactor, work = std::move(work)] { reactor->Finish(work()); });
  return reactor;
}

grpc::ServerUnaryReactor* RegistryApiService::ListNodes(grpc::CallbackServerContext* ctx,
                                                        const v1::ListNodesRequest* req,
                                                        v1::ListNodesResponse* resp) {
  if (grpc::Status a = auth_.Authorize(*ctx, Scope::kRead); !a.ok()) return Done(ctx, a);
  if (grpc::Status r = Serving(ctx); !r.ok()) return Done(ctx, r);
  NodeFilter f;
  if (req->connected() == v1::ListNodesRequest::CONNECTED_ONLY) {
    f.connected = NodeFilter::Connected::kOnly;
  } else if (req->connected() == v1::ListNodesRequest::DISCONNECTED_ONLY) {
    f.connected = NodeFilter::Connected::kNot;
  }
  if (req->paired() == v1::ListNodesRequest::PAIRED_ONLY) {
    f.paired = NodeFilter::Paired::kOnly;
  } else if (req->paired() == v1::ListNodesRequest::UNPAIRED_ONLY) {
    f.paired = NodeFilter::Paired::kNot;
  }
  if (req->page_size() < 0) {
    return Done(ctx, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "negative page_size"));
  }
  return Offload(ctx, [this, f, req, resp] {
    auto page = registry_.store().ListNodes(f, req->page_token(), req->page_size());
    if (!page.ok()) return ToGrpc(page.status());
    for (const NodeView& n : page->nodes) ToProto(n, resp->add_nodes());
    resp->set_next_page_token(page->next_page_token);
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* RegistryApiService::GetNode(grpc::CallbackServerContext* ctx,
                                                      const v1::GetNodeRequest* req,
                                                      v1::Node* resp) {
  if (grpc::Status a = auth_.Authorize(*ctx, Scope::kRead); !a.ok()) return Done(ctx, a);
  if (grpc::Status r = Serving(ctx); !r.ok()) return Done(ctx, r);
  return Offload(ctx, [this, req, resp] {
    auto node = registry_.store().GetNode(req->node_id());
    if (!node.ok()) return ToGrpc(node.status());
    ToProto(*node, resp);
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* RegistryApiService::InvokeNode(grpc::CallbackServerContext* ctx,
                                                         const v1::InvokeNodeRequest* req,
                                                         v1::InvokeNodeResponse* resp) {
  std::string caller;
  if (grpc::Status a = auth_.Authorize(*ctx, Scope::kWrite, &caller); !a.ok()) {
    return Done(ctx, a);
  }
  if (grpc::Status r = Serving(ctx); !r.ok()) return Done(ctx, r);
  return new InvokeReactor(registry_, *pool_, ctx, req, resp, std::move(caller));
}

grpc::ServerUnaryReactor* RegistryApiService::GetPresence(grpc::CallbackServerContext* ctx,
                                                          const v1::GetPresenceRequest*,
                                                          v1::GetPresenceResponse* resp) {
  if (grpc::Status a = auth_.Authorize(*ctx, Scope::kRead); !a.ok()) return Done(ctx, a);
  if (grpc::Status r = Serving(ctx); !r.ok()) return Done(ctx, r);
  return Offload(ctx, [this, resp] {
    auto snap = registry_.store().GetPresence();
    if (!snap.ok()) return ToGrpc(snap.status());
    for (const NodeView& n : snap->nodes) ToProto(n, resp->add_nodes());
    resp->set_revision(snap->revision);
    return grpc::Status::OK;
  });
}

grpc::ServerWriteReactor<v1::PresenceEvent>* RegistryApiService::WatchPresence(
    grpc::CallbackServerContext* ctx, const v1::WatchPresenceRequest* req) {
  grpc::Status a = auth_.Authorize(*ctx, Scope::kRead);
  if (a.ok()) a = Serving(ctx);
  return new WatchReactor(registry_, a.ok() ? req->from_revision() : 0, a);
}

grpc::ServerUnaryReactor* RegistryApiService::ListPairingRequests(
    grpc::CallbackServerContext* ctx, const v1::ListPairingRequestsRequest*,
    v1::ListPairingRequestsResponse* resp) {
  if (grpc::Status a = auth_.Authorize(*ctx, Scope::kRead); !a.ok()) return Done(ctx, a);
  return Offload(ctx, [this, resp] {
    for (const PairingRequest& r : registry_.store().ListPairingRequests()) {
      ToProto(r, resp->add_requests());
    }
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* RegistryApiService::ApprovePairing(grpc::CallbackServerContext* ctx,
                                                             const v1::ApprovePairingRequest* req,
                                                             v1::ApprovePairingResponse* resp) {
  if (grpc::Status a = auth_.Authorize(*ctx, Scope::kPairing); !a.ok()) return Done(ctx, a);
  return Offload(ctx, [this, req, resp] {
    const std::string by = req->approved_by().empty() ? "api" : req->approved_by();
    auto device = registry_.ApprovePairing(req->request_id(), by);
    if (!device.ok()) return ToGrpc(device.status());
    ToProto(*device, resp->mutable_device());
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* RegistryApiService::RejectPairing(grpc::CallbackServerContext* ctx,
                                                            const v1::RejectPairingRequest* req,
                                                            v1::RejectPairingResponse*) {
  if (grpc::Status a = auth_.Authorize(*ctx, Scope::kPairing); !a.ok()) return Done(ctx, a);
  return Offload(
      ctx, [this, req] { return ToGrpc(registry_.store().RejectPairing(req->request_id())); });
}

grpc::ServerUnaryReactor* RegistryApiService::RevokeDevice(grpc::CallbackServerContext* ctx,
                                                           const v1::RevokeDeviceRequest* req,
                                                           v1::RevokeDeviceResponse* resp) {
  if (grpc::Status a = auth_.Authorize(*ctx, Scope::kPairing); !a.ok()) return Done(ctx, a);
  return Offload(ctx, [this, req, resp] {
    auto closed = registry_.RevokeDevice(req->node_id());
    if (!closed.ok()) return ToGrpc(closed.status());
    resp->set_closed_connections(*closed);
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* RegistryApiService::ListDevices(grpc::CallbackServerContext* ctx,
                                                          const v1::ListDevicesRequest*,
                                                          v1::ListDevicesResponse* resp) {
  if (grpc::Status a = auth_.Authorize(*ctx, Scope::kRead); !a.ok()) return Done(ctx, a);
  return Offload(ctx, [this, resp] {
    for (const Device& d : registry_.store().ListDevices()) ToProto(d, resp->add_devices());
    return grpc::Status::OK;
  });
}

}  // namespace tether::registry
