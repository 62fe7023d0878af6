// QueuedWriteReactor over a fake gRPC reactor base: every path must call Finish exactly once,
// because gRPC calls OnDone (where the reactors unwatch, detach the edge and delete themselves)
// only after Finish.
#include "registry_service/server/queued_write_reactor.h"

#include <vector>

#include "gtest/gtest.h"

namespace tether::registry {
namespace {

// Stands in for grpc::ServerWriteReactor<int>: records StartWrite and Finish.
class FakeBase {
 public:
  virtual ~FakeBase() = default;
  void StartWrite(const int* msg) { writes.push_back(*msg); }
  void Finish(grpc::Status status) { finishes.push_back(status); }
  virtual void OnWriteDone(bool /*ok*/) {}

  std::vector<int> writes;
  std::vector<grpc::Status> finishes;
};

class Reactor final : public QueuedWriteReactor<FakeBase, int> {
 public:
  explicit Reactor(size_t max_queue) : QueuedWriteReactor(max_queue) {}
  void WriteDone(bool ok) { OnWriteDone(ok); }  // what gRPC does when a write completes
};

TEST(QueuedWriteReactor, FinishAfterWritesThenDrainedWriteFinishesOnce) {
  Reactor r(10);
  ASSERT_TRUE(r.Enqueue(1));
  r.FinishAfterWrites(grpc::Status::OK);
  EXPECT_TRUE(r.finishes.empty());
  r.WriteDone(true);
  EXPECT_EQ(r.finishes.size(), 1u);
}

// WatchReactor::OnCancel or LinkReactor::OnReadDone(false) while a write is in flight, then
// that write fails (the peer is gone): OnWriteDone(false) calls BeginFinishLocked, which returns
// false because finishing_ is already set, so Finish is never called: no OnDone, the reactor
// leaks, WatchReactor never Unwatches, LinkReactor never DetachEdges.
TEST(QueuedWriteReactor, FinishAfterWritesThenFailedWriteStillFinishes) {
  Reactor r(10);
  ASSERT_TRUE(r.Enqueue(1));
  ASSERT_TRUE(r.Enqueue(2));
  r.FinishAfterWrites(grpc::Status::CANCELLED);
  r.WriteDone(false);
  EXPECT_EQ(r.finishes.size(), 1u) << "Finish never called: OnDone never runs";
  EXPECT_EQ(r.writes.size(), 1u);  // no write after the failure
}

// Same hole via the slow-reader path: the queue overflows (finishing_ set, write in flight),
// then the in-flight write fails.
TEST(QueuedWriteReactor, OverflowThenFailedWriteStillFinishes) {
  Reactor r(2);
  ASSERT_TRUE(r.Enqueue(1));
  ASSERT_TRUE(r.Enqueue(2));
  EXPECT_FALSE(r.Enqueue(3));  // too slow: finishing with RESOURCE_EXHAUSTED
  EXPECT_TRUE(r.finishes.empty());
  r.WriteDone(false);
  EXPECT_EQ(r.finishes.size(), 1u) << "Finish never called: OnDone never runs";
}

}  // namespace
}  // namespace tether::registry
