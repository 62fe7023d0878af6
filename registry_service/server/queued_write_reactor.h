// QueuedWriteReactor: a gRPC server-stream reactor base with a bounded write queue.
#ifndef TETHER_REGISTRY_SERVICE_SERVER_QUEUED_WRITE_REACTOR_H_
#define TETHER_REGISTRY_SERVICE_SERVER_QUEUED_WRITE_REACTOR_H_

#include <grpcpp/grpcpp.h>

#include <deque>
#include <functional>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "common/metrics.h"

namespace tether::registry {

// Adds to a server streaming reactor (`Base` is grpc::ServerBidiReactor<In, Msg> or
// grpc::ServerWriteReactor<Msg>) what the callback API leaves to us: one write in flight at a
// time, a queue in front of it bounded by `max_queue` messages and, when a `sizer` is given,
// by `max_bytes` of them (a count alone lets a few huge messages hold gigabytes), and Finish
// exactly once, only when no
// write is in flight. gRPC calls OnDone (where reactors unwatch, detach and delete themselves)
// only after Finish, so a path that never calls Finish leaks the stream and hangs the server's
// shutdown.
//
// States and transitions (each has a case in queued_write_reactor_test.cc):
//
//   state     event                         next      action
//   --------  ----------------------------  --------  ---------------------------------------
//   kIdle     Enqueue                       kWriting  StartWrite(msg)
//   kIdle     FinishAfterWrites(s)          kDone     Finish(s)
//   kWriting  Enqueue, queue has room       kWriting  queued
//   kWriting  Enqueue, queue full (count    kDraining drop the queued (not the in-flight) write;
//             or bytes)
//                                                     status RESOURCE_EXHAUSTED; returns false
//   kWriting  OnWriteDone(true), queued     kWriting  StartWrite(next)
//   kWriting  OnWriteDone(true), none       kIdle
//   kWriting  OnWriteDone(false)            kDone     drop the queue; Finish(UNAVAILABLE)
//   kWriting  FinishAfterWrites(s)          kDraining status s; queued writes still go out
//   kDraining OnWriteDone(true), queued     kDraining StartWrite(next)
//   kDraining OnWriteDone(true), none       kDone     Finish(first status)
//   kDraining OnWriteDone(false)            kDone     drop the queue; Finish(first status)
//   kDraining Enqueue                       kDraining returns false
//   kDraining FinishAfterWrites             kDraining ignored: the first status wins
//   kDone     Enqueue / FinishAfterWrites   kDone     returns false / ignored
//
// A read that fails (OnReadDone(false)) and a cancellation (OnCancel) are FinishAfterWrites
// calls of the subclass. The decision to call Finish is taken under the lock by the one
// transition that enters kDone, and carried out by that same call after the lock is released:
// no flag is shared between threads, so concurrent OnWriteDone/OnReadDone/Enqueue calls cannot
// lose or duplicate it. StartWrite and Finish run without the lock: gRPC may run OnWriteDone
// inline from StartWrite, and OnDone (which may delete this) from Finish, so nothing touches
// the object after Finish.
//
// Thread-safe: Enqueue and FinishAfterWrites may be called from any thread.
template <class Base, class Msg>
class QueuedWriteReactor : public Base {
 public:
  using Sizer = std::function<size_t(const Msg&)>;
  explicit QueuedWriteReactor(size_t max_queue, size_t max_bytes = 0, Sizer sizer = nullptr)
      : max_queue_(max_queue), max_bytes_(max_bytes), sizer_(std::move(sizer)) {}

  // False when the stream is finishing or the reader is too slow (the queue is full); then
  // the stream is finished with RESOURCE_EXHAUSTED.
  bool Enqueue(Msg msg) ABSL_LOCKS_EXCLUDED(mu_) {
    Msg* start = nullptr;
    {
      absl::MutexLock lock(&mu_);
      switch (state_) {
        case State::kDraining:
        case State::kDone:
          return false;
        case State::kIdle:
          queued_bytes_ += SizeOf(msg);
          queue_.push_back(std::move(msg));
          state_ = State::kWriting;
          start = &queue_.front();
          break;
        case State::kWriting: {
          const size_t size = SizeOf(msg);
          if (queue_.size() >= max_queue_ ||
              (sizer_ != nullptr && queued_bytes_ + size > max_bytes_)) {
            // Cut the slow reader off now: keep only the write in flight.
            queue_.erase(queue_.begin() + 1, queue_.end());
            queued_bytes_ = SizeOf(queue_.front());
            status_ = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                   "stream reader too slow; reconnect");
            state_ = State::kDraining;
            if (cuts_ != nullptr) cuts_->Add();
            return false;
          }
          queued_bytes_ += size;
          queue_.push_back(std::move(msg));
          break;
        }
      }
    }
    // Deque elements stay put while others are pushed or erased behind them, and only
    // OnWriteDone of this very write pops it.
    if (start != nullptr) this->StartWrite(start);
    return true;
  }

  // Counts each cut-off of a too slow reader in `cuts` (not owned; outlives the stream).
  void CountCutsIn(common::Counter* cuts) { cuts_ = cuts; }

  // True once the stream is finishing (no more reads or writes should start).
  bool finishing() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return state_ == State::kDraining || state_ == State::kDone;
  }

  // Finishes with `status` once the queued writes went out (at once when none is in flight).
  // Later calls are ignored.
  void FinishAfterWrites(const grpc::Status& status) ABSL_LOCKS_EXCLUDED(mu_) {
    grpc::Status finish;
    {
      absl::MutexLock lock(&mu_);
      switch (state_) {
        case State::kDraining:
        case State::kDone:
          return;
        case State::kWriting:
          status_ = status;
          state_ = State::kDraining;
          return;
        case State::kIdle:
          state_ = State::kDone;
          finish = status;
          break;
      }
    }
    this->Finish(finish);
  }

 protected:
  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    Msg* next = nullptr;
    grpc::Status finish;
    bool do_finish = false;
    {
      absl::MutexLock lock(&mu_);
      queued_bytes_ -= SizeOf(queue_.front());
      queue_.pop_front();
      if (!ok) {
        // The peer is gone: nothing more can be written.
        queue_.clear();
        queued_bytes_ = 0;
        if (state_ == State::kWriting) {
          status_ = grpc::Status(grpc::StatusCode::UNAVAILABLE, "write failed");
        }
      }
      if (!queue_.empty()) {
        next = &queue_.front();
      } else if (state_ == State::kWriting) {
        state_ = ok ? State::kIdle : State::kDone;
        do_finish = !ok;
      } else if (state_ == State::kDraining) {
        state_ = State::kDone;
        do_finish = true;
      }
      if (do_finish) finish = status_;
    }
    if (next != nullptr) {
      this->StartWrite(next);
    } else if (do_finish) {
      this->Finish(finish);
    }
  }

 private:
  enum class State { kIdle, kWriting, kDraining, kDone };

  size_t SizeOf(const Msg& msg) const { return sizer_ != nullptr ? sizer_(msg) : 0; }

  const size_t max_queue_;
  const size_t max_bytes_;
  const Sizer sizer_;
  absl::Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_) = State::kIdle;
  // Front is the write in flight (kWriting, kDraining); empty otherwise.
  std::deque<Msg> queue_ ABSL_GUARDED_BY(mu_);
  size_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // by sizer_, the write in flight included
  grpc::Status status_ ABSL_GUARDED_BY(mu_);      // what Finish will say (kDraining)
  common::Counter* cuts_ = nullptr;               // set before the first Enqueue
};

}  // namespace tether::registry

#endif  // TETHER_REGISTRY_SERVICE_SERVER_QUEUED_WRITE_REACTOR_H_
