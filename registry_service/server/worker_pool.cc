#include "registry_service/server/worker_pool.h"

#include <algorithm>
#include <utility>

namespace tether::registry {

WorkerPool::WorkerPool(int threads) {
  for (int i = 0; i < std::max(threads, 1); ++i) threads_.emplace_back([this] { Work(); });
}

WorkerPool::~WorkerPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

void WorkerPool::Post(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(task));
}

void WorkerPool::Work() {
  for (;;) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !queue_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // stopping, and nothing left to run
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

void Strand::Post(std::function<void()> task) {
  {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(task));
    if (scheduled_) return;
    scheduled_ = true;
  }
  pool_.Post([self = shared_from_this()] { self->Run(); });
}

void Strand::Run() {
  constexpr int kBatch = 64;
  for (int i = 0; i < kBatch; ++i) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&mu_);
      if (queue_.empty()) {
        scheduled_ = false;
        return;
      }
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
  // More is queued: go to the back of the pool's queue so other strands get a turn.
  pool_.Post([self = shared_from_this()] { self->Run(); });
}

}  // namespace tether::registry
