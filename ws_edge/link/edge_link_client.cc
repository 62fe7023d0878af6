#include "ws_edge/link/edge_link_client.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <string>

#include "common/log.h"

namespace tether::edge {

// One EdgeLink call: one write in flight with a queue in front, reads delivered to the client.
//
// Lanes: a heartbeat jumps the queue (at most one waits; a backlog of bulk must not cost every
// node on the edge its lease); everything else keeps its order, because a node's results must
// reach the registry before its socket's `closed`. Bulk (results, events: the edge answers the
// node UNAVAILABLE when refused) is refused above kMaxBulkBytes queued; lifecycle messages are
// never refused: above kMaxQueuedBytes (a registry that reads nothing) the stream is cancelled,
// and the resync on the next stream repairs whatever it carried.
class EdgeLinkClient::Stream final
    : public grpc::ClientBidiReactor<v1::EdgeMessage, v1::RegistryMessage> {
 public:
  Stream(EdgeLinkClient* owner, v1::EdgeLink::Stub* stub, const v1::EdgeMessage& attach,
         uint64_t seq)
      : owner_(owner), seq_(seq) {
    if (!owner->options_.secret.empty()) {
      ctx_.AddMetadata("x-tether-edge-secret", owner->options_.secret);
    }
    stub->async()->Connect(&ctx_, this);
    Enqueue(attach);
    StartRead(&in_);
    StartCall();
  }

  // False when the message will not go out on this stream: the stream is gone, bulk over its
  // bound, or the queue overflowed (then the stream is cancelled).
  bool Enqueue(const v1::EdgeMessage& m) ABSL_LOCKS_EXCLUDED(mu_) {
    const v1::EdgeMessage* start = nullptr;
    bool cancel = false;
    {
      absl::MutexLock lock(&mu_);
      if (done_ || cancelled_) return false;
      if (m.has_heartbeat()) {
        if (heartbeat_waiting_) return true;  // one is enough
        heartbeat_waiting_ = true;
      } else {
        const size_t size = m.ByteSizeLong();
        const bool bulk = m.has_result() || m.has_event();
        if (bulk && queued_bytes_ + size > kMaxBulkBytes && !queue_.empty()) return false;
        if (queued_bytes_ + size > kMaxQueuedBytes) {
          cancelled_ = true;  // never drop a lifecycle message silently: start over
          cancel = true;
        } else {
          queued_bytes_ += size;
          queue_.push_back(m);
        }
      }
      if (!cancel && !writing_) start = NextLocked();
    }
    if (cancel) {
      owner_->overflows_.fetch_add(1);
      ctx_.TryCancel();
      return false;
    }
    // gRPC may run OnWriteDone inline from StartWrite: never call it with mu_ held.
    if (start != nullptr) StartWrite(start);
    return true;
  }

  // Waits up to `timeout` for queued writes to go out (for a clean drain).
  void Flush(absl::Duration timeout) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto flushed = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return (queue_.empty() && !writing_) || done_;
    };
    mu_.AwaitWithTimeout(absl::Condition(&flushed), timeout);
  }

  void Cancel() { ctx_.TryCancel(); }

  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    const v1::EdgeMessage* next = nullptr;
    {
      absl::MutexLock lock(&mu_);
      if (writing_heartbeat_) {
        writing_heartbeat_ = false;
      } else {
        queued_bytes_ -= queue_.front().ByteSizeLong();
        queue_.pop_front();
      }
      writing_ = false;
      if (ok) next = NextLocked();
    }
    if (next != nullptr) StartWrite(next);
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    if (in_.has_attach_ack()) {
      owner_->heartbeat_from_ack_ = in_.attach_ack().heartbeat_interval_ms();
      owner_->OnAttached(this);
    } else {
      v1::RegistryMessage copy = in_;
      owner_->callbacks_.post([owner = owner_, seq = seq_, copy = std::move(copy)] {
        if (owner->StaleOnLoop(seq)) return;  // from a stream a newer one replaced
        owner->callbacks_.on_message(copy);
      });
    }
    StartRead(&in_);
  }

  void OnDone(const grpc::Status& status) override {
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
      queue_.clear();
      queued_bytes_ = 0;
    }
    status_ = status;
    owner_->OnStreamDone(this);
  }

  uint64_t seq() const { return seq_; }
  // How the call ended; valid once OnDone ran.
  const grpc::Status& status() const { return status_; }

 private:
  // Picks the next write (the waiting heartbeat first) and marks it in flight; null if none.
  const v1::EdgeMessage* NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (heartbeat_waiting_) {
      heartbeat_waiting_ = false;
      writing_heartbeat_ = true;
      writing_ = true;
      return &heartbeat_;
    }
    if (queue_.empty()) return nullptr;
    writing_ = true;
    return &queue_.front();
  }

  EdgeLinkClient* owner_;
  const uint64_t seq_;  // which of this client's streams it is (1, 2, ...)
  grpc::ClientContext ctx_;
  v1::RegistryMessage in_;
  grpc::Status status_;
  absl::Mutex mu_;
  static constexpr size_t kMaxBulkBytes = 128 << 20;
  static constexpr size_t kMaxQueuedBytes = 256 << 20;
  std::deque<v1::EdgeMessage> queue_ ABSL_GUARDED_BY(mu_);
  size_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_heartbeat_ ABSL_GUARDED_BY(mu_) = false;  // the write in flight is heartbeat_
  bool heartbeat_waiting_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;  // overflowed: ending
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  const v1::EdgeMessage heartbeat_ = [] {
    v1::EdgeMessage m;
    m.mutable_heartbeat();
    return m;
  }();
};

EdgeLinkClient::EdgeLinkClient(const LinkOptions& options, LinkCallbacks callbacks)
    : options_(options), callbacks_(std::move(callbacks)), rng_(std::random_device{}()) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 5'000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5'000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2'000);
  args.SetInt(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, 64 << 20);
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!options_.ca_pem.empty() || !options_.cert_pem.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options_.ca_pem;
    ssl.pem_cert_chain = options_.cert_pem;
    ssl.pem_private_key = options_.key_pem;
    creds = grpc::SslCredentials(ssl);
    if (!options_.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(options_.tls_server_name);
    }
  }
  channel_ = grpc::CreateCustomChannel(options_.target, creds, args);
  stub_ = v1::EdgeLink::NewStub(channel_);
}

EdgeLinkClient::~EdgeLinkClient() { Stop(); }

void EdgeLinkClient::Start() {
  supervisor_ = std::thread([this] { Supervise(); });
}

void EdgeLinkClient::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  std::shared_ptr<Stream> s;  // keeps the stream alive even if it ends during the flush
  {
    absl::MutexLock lock(&mu_);
    s = stream_;
  }
  if (s != nullptr) s->Flush(absl::Seconds(2));
  {
    absl::MutexLock lock(&mu_);
    if (stream_ != nullptr) stream_->Cancel();
  }
  if (supervisor_.joinable()) supervisor_.join();
}

bool EdgeLinkClient::Send(const v1::EdgeMessage& message) {
  absl::MutexLock lock(&mu_);
  if (!attached_ || stream_ == nullptr) return false;
  return stream_->Enqueue(message);
}

bool EdgeLinkClient::attached() {
  absl::MutexLock lock(&mu_);
  return attached_;
}

uint64_t EdgeLinkClient::reconnects() {
  absl::MutexLock lock(&mu_);
  return reconnects_;
}

bool EdgeLinkClient::StaleOnLoop(uint64_t seq) const { return seq < loop_stream_seq_; }

void EdgeLinkClient::OnAttached(Stream* stream) {
  {
    absl::MutexLock lock(&mu_);
    if (stream_.get() != stream) return;
    attached_ = true;
    just_attached_ = true;  // wakes the supervisor to heartbeat at the registry's interval
    heartbeat_ms_ = std::max<int64_t>(heartbeat_from_ack_, 50);
  }
  callbacks_.post([this, seq = stream->seq()] {
    loop_stream_seq_ = std::max(loop_stream_seq_, seq);
    if (StaleOnLoop(seq)) return;
    callbacks_.on_up();
  });
}

void EdgeLinkClient::OnStreamDone(Stream* stream) {
  bool was_attached = false;
  {
    absl::MutexLock lock(&mu_);
    if (stream_.get() != stream) return;
    was_attached = attached_;
    attached_ = false;
    stream_done_ = true;
  }
  // A refusal (FAILED_PRECONDITION "edge id in use", UNAUTHENTICATED, ...) must be visible to
  // the operator: the edge keeps retrying with backoff and would otherwise look merely idle.
  // So is why an attached stream ended (transport gone, keepalive timeout, our own cancel on
  // overflow): a storm that keeps dropping links is otherwise undiagnosable from the logs.
  const grpc::Status& status = stream->status();
  if (!status.ok() && (was_attached || (status.error_code() != grpc::StatusCode::UNAVAILABLE &&
                                        status.error_code() != grpc::StatusCode::CANCELLED))) {
    common::Log(common::LogLevel::kWarn, "registry_link_ended",
                {{"code", std::to_string(static_cast<int>(status.error_code()))},
                 {"message", status.error_message()},
                 {"was_attached", was_attached ? "true" : "false"}});
  }
  // Posted from gRPC's thread, this can reach the loop after the next stream's `up` (a stalled
  // thread): a stale `down` would leave the edge refusing every handshake while attached.
  if (was_attached) {
    callbacks_.post([this, seq = stream->seq()] {
      if (StaleOnLoop(seq)) return;
      callbacks_.on_down();
    });
  }
}

void EdgeLinkClient::Supervise() {
  int64_t backoff = options_.backoff_initial_ms;
  v1::EdgeMessage attach;
  attach.mutable_attach()->set_edge_id(options_.edge_id);
  attach.mutable_attach()->set_epoch(options_.epoch);
  attach.mutable_attach()->set_version(options_.version);
  v1::EdgeMessage heartbeat;
  heartbeat.mutable_heartbeat();
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) break;
      stream_done_ = false;
      stream_ = std::make_shared<Stream>(this, stub_.get(), attach, ++stream_seq_);
    }
    // While the stream lives: heartbeat at the registry's interval.
    bool ever_attached = false;
    for (;;) {
      absl::MutexLock lock(&mu_);
      auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stream_done_ || stopping_ || just_attached_;
      };
      mu_.AwaitWithTimeout(absl::Condition(&wake), absl::Milliseconds(heartbeat_ms_));
      if (stream_done_) break;
      if (just_attached_) {
        just_attached_ = false;
        continue;
      }
      if (stopping_) {
        mu_.Await(absl::Condition(&stream_done_));
        break;
      }
      if (attached_) {
        ever_attached = true;
        (void)stream_->Enqueue(heartbeat);  // jumps the queue; coalesced if one is waiting
      }
    }
    {
      absl::MutexLock lock(&mu_);
      ever_attached = ever_attached || attached_;
      stream_.reset();
      if (stopping_) break;
      ++reconnects_;
    }
    if (ever_attached) backoff = options_.backoff_initial_ms;
    // The wait never exceeds half the heartbeat interval the registry asked for (its lease is
    // four of them): a link that comes back well within the lease is re-attached before the
    // lease lapses, however many attempts failed meanwhile. Uncapped, a 1.8 s cut with a 5 s
    // lease cost every node of the edge a false DISCONNECTED (found by the chaos soak).
    const int64_t cap =
        std::max<int64_t>(50, std::min(options_.backoff_max_ms, heartbeat_from_ack_.load() / 2));
    backoff = std::min(backoff, cap);
    // Full jitter: edges that lost the registry together do not come back in lockstep.
    const int64_t sleep_ms = std::uniform_int_distribution<int64_t>(backoff / 2, backoff)(rng_);
    backoff = std::min(backoff * 2, cap);
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::Milliseconds(sleep_ms));
    }
    // This policy is the only one: the channel's own connect backoff (up to 2 s) must not add
    // to it.
    grpc::experimental::ChannelResetConnectionBackoff(channel_.get());
  }
}

}  // namespace tether::edge
