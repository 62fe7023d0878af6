// QueuedWriteReactor: a gRPC server-stream reactor base with a bounded write queue.
#ifndef TETHER_REGISTRY_SERVICE_SERVER_QUEUED_WRITE_REACTOR_H_
#define TETHER_REGISTRY_SERVICE_SERVER_QUEUED_WRITE_REACTOR_H_

#include <grpcpp/grpcpp.h>

#include <deque>
#include <utility>

#include "absl/synchronization/mutex.h"

namespace tether::registry {

// Adds to a server streaming reactor (`Base` is grpc::ServerBidiReactor<In, Msg> or
// grpc::ServerWriteReactor<Msg>) what the callback API leaves to us: one write in flight at a
// time, a queue in front of it bounded by `max_queue`, and Finish only once the queue drained.
// Thread-safe: Enqueue and FinishAfterWrites may be called from any thread.
template <class Base, class Msg>
class QueuedWriteReactor : public Base {
 public:
  explicit QueuedWriteReactor(size_t max_queue) : max_queue_(max_queue) {}

  // False when the stream is finishing or the reader is too slow (the queue is full); then
  // the stream is finished with RESOURCE_EXHAUSTED.
  bool Enqueue(Msg msg) ABSL_LOCKS_EXCLUDED(mu_) {
    Msg* start = nullptr;
    bool ok = true;
    {
      absl::MutexLock lock(&mu_);
      if (finishing_) return false;
      if (queue_.size() >= max_queue_) {
        // Cut the slow reader off now: keep only the write in flight.
        if (writing_) queue_.erase(queue_.begin() + 1, queue_.end());
        finish_now_ = BeginFinishLocked(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                                     "stream reader too slow; reconnect"));
        ok = false;
      } else {
        queue_.push_back(std::move(msg));
        if (!writing_) {
          writing_ = true;
          start = &queue_.front();
        }
      }
    }
    // gRPC may run OnWriteDone inline from StartWrite: never call it with mu_ held.
    if (start != nullptr) this->StartWrite(start);
    if (!ok) MaybeFinish();
    return ok;
  }

  // True once the stream is finishing (no more reads or writes should start).
  bool finishing() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return finishing_;
  }

  void FinishAfterWrites(const grpc::Status& status) ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      finish_now_ = BeginFinishLocked(status);
    }
    MaybeFinish();
  }

 protected:
  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    Msg* next = nullptr;
    {
      absl::MutexLock lock(&mu_);
      queue_.pop_front();
      writing_ = false;
      if (!ok) {
        queue_.clear();
        BeginFinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "write failed"));
      } else if (!queue_.empty()) {
        writing_ = true;
        next = &queue_.front();
      }
      // Whoever asked to finish, Finish is due once no write is in flight: gRPC calls OnDone
      // (where the reactors unwatch, detach and delete themselves) only after Finish.
      if (finishing_ && !writing_ && !finished_) {
        finished_ = true;
        finish_now_ = true;
      }
    }
    if (next != nullptr) this->StartWrite(next);
    MaybeFinish();
  }

 private:
  // Marks the stream finishing; true when Finish may be called now (no write in flight).
  bool BeginFinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finishing_) return false;
    finishing_ = true;
    final_ = status;
    if (writing_ || finished_) return false;
    finished_ = true;
    return true;
  }

  void MaybeFinish() ABSL_LOCKS_EXCLUDED(mu_) {
    grpc::Status status;
    {
      absl::MutexLock lock(&mu_);
      if (!finish_now_) return;
      finish_now_ = false;
      status = final_;
    }
    this->Finish(status);
  }

  const size_t max_queue_;
  absl::Mutex mu_;
  std::deque<Msg> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_ ABSL_GUARDED_BY(mu_);
  bool finish_now_ ABSL_GUARDED_BY(mu_) = false;  // Finish is due, outside the lock
};

}  // namespace tether::registry

#endif  // TETHER_REGISTRY_SERVICE_SERVER_QUEUED_WRITE_REACTOR_H_
