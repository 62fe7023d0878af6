// WorkerPool: an Offload that runs work on a few threads and hands results back to the loop.
#ifndef TETHER_WS_EDGE_TRANSPORT_WORKER_POOL_H_
#define TETHER_WS_EDGE_TRANSPORT_WORKER_POOL_H_

#include <asio/post.hpp>
#include <asio/thread_pool.hpp>
#include <functional>
#include <utility>

#include "ws_edge/core/ports.h"

namespace tether::edge {

// Owns its threads (joined on destruction, after the queued work ran). `post_to_loop` queues a
// task on the edge's event loop and must be thread-safe. Thread-safe.
class WorkerPool final : public Offload {
 public:
  WorkerPool(int threads, std::function<void(std::function<void()>)> post_to_loop)
      : pool_(static_cast<size_t>(threads)), post_(std::move(post_to_loop)) {}
  ~WorkerPool() override { pool_.join(); }

  void Run(std::function<void()> work, std::function<void()> then) override {
    asio::post(pool_, [this, work = std::move(work), then = std::move(then)]() mutable {
      work();
      post_(std::move(then));
    });
  }

 private:
  asio::thread_pool pool_;
  std::function<void(std::function<void()>)> post_;
};

}  // namespace tether::edge

#endif  // TETHER_WS_EDGE_TRANSPORT_WORKER_POOL_H_
