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
    absl::MutexLock lock(&mu_);
    if (finishing_) return false;
    if (queue_.size() >= max_queue_) {
      FinishLocked(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                "stream reader too slow; reconnect"));
      return false;
    }
    queue_.push_back(std::move(msg));
    if (!writing_) {
      writing_ = true;
      this->StartWrite(&queue_.front());
    }
    return true;
  }

  void FinishAfterWrites(const grpc::Status& status) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    FinishLocked(status);
  }

 protected:
  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    queue_.pop_front();
    writing_ = false;
    if (!ok) {
      queue_.clear();
      FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "write failed"));
      return;
    }
    if (!queue_.empty()) {
      writing_ = true;
      this->StartWrite(&queue_.front());
    } else if (finishing_ && !finished_) {
      finished_ = true;
      this->Finish(final_);
    }
  }

 private:
  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finishing_) return;
    finishing_ = true;
    final_ = status;
    if (!writing_) {
      finished_ = true;
      this->Finish(final_);
    }
  }

  const size_t max_queue_;
  absl::Mutex mu_;
  std::deque<Msg> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tether::registry

#endif  // TETHER_REGISTRY_SERVICE_SERVER_QUEUED_WRITE_REACTOR_H_
