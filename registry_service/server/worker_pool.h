// WorkerPool and Strand: where the EdgeLink service runs the decisions it reads, so that gRPC's
// threads never wait for the store.
#ifndef TETHER_REGISTRY_SERVICE_SERVER_WORKER_POOL_H_
#define TETHER_REGISTRY_SERVICE_SERVER_WORKER_POOL_H_

#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace tether::registry {

// A fixed set of threads running posted tasks in post order (several at a time). Owns its
// threads; the destructor runs what is still queued, then joins them. Thread-safe.
class WorkerPool {
 public:
  explicit WorkerPool(int threads);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  void Post(std::function<void()> task) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Work() ABSL_LOCKS_EXCLUDED(mu_);

  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

// Runs the tasks posted to it one at a time, in post order, on a WorkerPool: a serial lane
// that costs no thread of its own. Hold it by shared_ptr: queued work keeps it alive. The pool
// must outlive it. Thread-safe.
class Strand : public std::enable_shared_from_this<Strand> {
 public:
  explicit Strand(WorkerPool& pool) : pool_(pool) {}
  void Post(std::function<void()> task) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // Runs queued tasks (a bounded batch, then yields the thread to other strands).
  void Run() ABSL_LOCKS_EXCLUDED(mu_);

  WorkerPool& pool_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool scheduled_ ABSL_GUARDED_BY(mu_) = false;  // a Run is queued or running
};

}  // namespace tether::registry

#endif  // TETHER_REGISTRY_SERVICE_SERVER_WORKER_POOL_H_
