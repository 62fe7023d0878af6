// QueuedWriteReactor over a fake gRPC reactor base, one case per transition of the table in
// queued_write_reactor.h: every path must call Finish exactly once and never while a write is
// in flight, because gRPC calls OnDone (where the reactors unwatch, detach the edge and delete
// themselves) only after Finish.
#include "registry_service/server/queued_write_reactor.h"

#include <atomic>
#include <chrono>
#include <random>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace tether::registry {
namespace {

// Stands in for grpc::ServerWriteReactor<int>: records StartWrite and Finish, and checks the
// rules gRPC imposes (one write in flight; nothing after Finish).
class FakeBase {
 public:
  virtual ~FakeBase() = default;
  // Virtual only so that a hostile subclass can complete the write inline.
  virtual void StartWrite(const int* msg) {
    absl::MutexLock lock(&mu);
    EXPECT_FALSE(in_flight) << "two writes in flight";
    EXPECT_TRUE(finishes.empty()) << "write after Finish";
    in_flight = true;
    writes.push_back(*msg);
  }
  void Finish(grpc::Status status) {
    absl::MutexLock lock(&mu);
    EXPECT_FALSE(in_flight) << "Finish with a write in flight";
    finishes.push_back(status);
  }
  virtual void OnWriteDone(bool /*ok*/) {}

  absl::Mutex mu;
  bool in_flight = false;
  std::vector<int> writes;
  std::vector<grpc::Status> finishes;
};

class Reactor final : public QueuedWriteReactor<FakeBase, int> {
 public:
  explicit Reactor(size_t max_queue, size_t max_bytes = 0, Sizer sizer = nullptr)
      : QueuedWriteReactor(max_queue, max_bytes, std::move(sizer)) {}
  // What gRPC does when the write in flight completes.
  void WriteDone(bool ok) {
    {
      absl::MutexLock lock(&mu);
      ASSERT_TRUE(in_flight) << "no write in flight";
      in_flight = false;
    }
    OnWriteDone(ok);
  }
};

// A hostile base: the write completes inline from StartWrite, as gRPC may do.
class InlineReactor final : public QueuedWriteReactor<FakeBase, int> {
 public:
  explicit InlineReactor(size_t max_queue) : QueuedWriteReactor(max_queue) {}
  void StartWrite(const int* msg) override {
    FakeBase::StartWrite(msg);
    {
      absl::MutexLock lock(&mu);
      in_flight = false;
    }
    OnWriteDone(ok_next);
  }
  bool ok_next = true;
};

// --- kIdle ---------------------------------------------------------------------------------

TEST(QueuedWriteReactor, IdleEnqueueStartsWrite) {
  Reactor r(10);
  EXPECT_TRUE(r.Enqueue(1));
  EXPECT_EQ(r.writes, std::vector<int>{1});
  EXPECT_TRUE(r.finishes.empty());
  EXPECT_FALSE(r.finishing());
}

TEST(QueuedWriteReactor, IdleFinishAfterWritesFinishesAtOnce) {
  Reactor r(10);
  r.FinishAfterWrites(grpc::Status(grpc::StatusCode::OUT_OF_RANGE, "re-list"));
  ASSERT_EQ(r.finishes.size(), 1u);
  EXPECT_EQ(r.finishes[0].error_code(), grpc::StatusCode::OUT_OF_RANGE);
  EXPECT_TRUE(r.finishing());
}

// --- kWriting ------------------------------------------------------------------------------

TEST(QueuedWriteReactor, WritingEnqueueQueuesBehindTheWriteInFlight) {
  Reactor r(10);
  ASSERT_TRUE(r.Enqueue(1));
  EXPECT_TRUE(r.Enqueue(2));
  EXPECT_EQ(r.writes, std::vector<int>{1});  // one write in flight at a time
}

TEST(QueuedWriteReactor, WritingEnqueueWhenFullCutsTheSlowReaderOff) {
  Reactor r(2);
  common::Counter cuts;
  r.CountCutsIn(&cuts);
  ASSERT_TRUE(r.Enqueue(1));
  ASSERT_TRUE(r.Enqueue(2));
  EXPECT_EQ(cuts.value(), 0u);
  EXPECT_FALSE(r.Enqueue(3));   // too slow: finishing with RESOURCE_EXHAUSTED
  EXPECT_EQ(cuts.value(), 1u);  // counted once
  EXPECT_FALSE(r.Enqueue(4));
  EXPECT_EQ(cuts.value(), 1u);
  EXPECT_TRUE(r.finishing());
  EXPECT_TRUE(r.finishes.empty());  // the write in flight must complete first
  r.WriteDone(true);
  EXPECT_EQ(r.writes, std::vector<int>{1});  // the queued write was dropped
  ASSERT_EQ(r.finishes.size(), 1u);
  EXPECT_EQ(r.finishes[0].error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

// A few huge messages must not hold gigabytes: with a sizer, bytes are bounded too (here each
// message "weighs" its value).
TEST(QueuedWriteReactor, WritingEnqueueOverTheByteBoundCutsTheSlowReaderOff) {
  Reactor r(1000, 100, [](const int& m) { return static_cast<size_t>(m); });
  common::Counter cuts;
  r.CountCutsIn(&cuts);
  ASSERT_TRUE(r.Enqueue(40));   // in flight
  ASSERT_TRUE(r.Enqueue(50));   // 90 queued
  EXPECT_FALSE(r.Enqueue(20));  // 110 > 100
  EXPECT_EQ(cuts.value(), 1u);
  EXPECT_TRUE(r.finishing());
  r.WriteDone(true);
  EXPECT_EQ(r.writes, std::vector<int>{40});
  ASSERT_EQ(r.finishes.size(), 1u);
  EXPECT_EQ(r.finishes[0].error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST(QueuedWriteReactor, WrittenMessagesFreeTheirBytes) {
  Reactor r(1000, 100, [](const int& m) { return static_cast<size_t>(m); });
  ASSERT_TRUE(r.Enqueue(60));  // in flight
  ASSERT_TRUE(r.Enqueue(30));  // 90 queued
  for (int i = 0; i < 20; ++i) {
    r.WriteDone(true);  // the older one is written: its bytes are free again
    ASSERT_TRUE(r.Enqueue(i % 2 == 0 ? 60 : 30)) << i;  // never over 90 queued
  }
  EXPECT_TRUE(r.finishes.empty());
}

TEST(QueuedWriteReactor, WritingWriteDoneStartsTheNextQueuedWrite) {
  Reactor r(10);
  ASSERT_TRUE(r.Enqueue(1));
  ASSERT_TRUE(r.Enqueue(2));
  r.WriteDone(true);
  EXPECT_EQ(r.writes, (std::vector<int>{1, 2}));
  EXPECT_TRUE(r.finishes.empty());
}

TEST(QueuedWriteReactor, WritingWriteDoneWithNothingQueuedGoesIdle) {
  Reactor r(10);
  ASSERT_TRUE(r.Enqueue(1));
  r.WriteDone(true);
  EXPECT_TRUE(r.finishes.empty());
  EXPECT_FALSE(r.finishing());
  EXPECT_TRUE(r.Enqueue(2));  // idle again: the next message starts a write at once
  EXPECT_EQ(r.writes, (std::vector<int>{1, 2}));
}

// The hole behind the registry_server_test hang (issue 9): a write fails (the peer went away)
// while no finish was requested. The old code marked the stream finished but dropped the
// decision to call Finish, so OnDone never ran: the reactor leaked its watcher or edge route
// and the server's Shutdown waited forever.
TEST(QueuedWriteReactor, WritingFailedWriteWithNoFinishPendingFinishes) {
  Reactor r(10);
  ASSERT_TRUE(r.Enqueue(1));
  ASSERT_TRUE(r.Enqueue(2));
  r.WriteDone(false);
  ASSERT_EQ(r.finishes.size(), 1u) << "Finish never called: OnDone never runs";
  EXPECT_EQ(r.finishes[0].error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(r.writes, std::vector<int>{1});  // nothing written after the failure
  EXPECT_FALSE(r.Enqueue(3));
}

TEST(QueuedWriteReactor, WritingFinishAfterWritesDrainsTheQueueFirst) {
  Reactor r(10);
  ASSERT_TRUE(r.Enqueue(1));
  ASSERT_TRUE(r.Enqueue(2));
  r.FinishAfterWrites(grpc::Status::OK);
  EXPECT_TRUE(r.finishing());
  EXPECT_TRUE(r.finishes.empty());
  r.WriteDone(true);  // 2 still goes out
  EXPECT_EQ(r.writes, (std::vector<int>{1, 2}));
  EXPECT_TRUE(r.finishes.empty());
  r.WriteDone(true);
  ASSERT_EQ(r.finishes.size(), 1u);
  EXPECT_TRUE(r.finishes[0].ok());
}

// --- kDraining -----------------------------------------------------------------------------

TEST(QueuedWriteReactor, DrainingFailedWriteFinishesWithTheRequestedStatus) {
  Reactor r(10);
  ASSERT_TRUE(r.Enqueue(1));
  ASSERT_TRUE(r.Enqueue(2));
  r.FinishAfterWrites(grpc::Status::CANCELLED);
  r.WriteDone(false);
  ASSERT_EQ(r.finishes.size(), 1u) << "Finish never called: OnDone never runs";
  EXPECT_EQ(r.finishes[0].error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(r.writes, std::vector<int>{1});  // no write after the failure
}

TEST(QueuedWriteReactor, DrainingAfterOverflowFailedWriteStillFinishes) {
  Reactor r(2);
  ASSERT_TRUE(r.Enqueue(1));
  ASSERT_TRUE(r.Enqueue(2));
  EXPECT_FALSE(r.Enqueue(3));
  r.WriteDone(false);
  ASSERT_EQ(r.finishes.size(), 1u) << "Finish never called: OnDone never runs";
  EXPECT_EQ(r.finishes[0].error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST(QueuedWriteReactor, DrainingRefusesNewMessages) {
  Reactor r(10);
  ASSERT_TRUE(r.Enqueue(1));
  r.FinishAfterWrites(grpc::Status::OK);
  EXPECT_FALSE(r.Enqueue(2));
  r.WriteDone(true);
  EXPECT_EQ(r.writes, std::vector<int>{1});
  EXPECT_EQ(r.finishes.size(), 1u);
}

TEST(QueuedWriteReactor, DrainingSecondFinishIsIgnoredAndTheFirstStatusWins) {
  Reactor r(10);
  ASSERT_TRUE(r.Enqueue(1));
  r.FinishAfterWrites(grpc::Status(grpc::StatusCode::OUT_OF_RANGE, "first"));
  r.FinishAfterWrites(grpc::Status::CANCELLED);  // e.g. OnCancel right after
  r.WriteDone(true);
  ASSERT_EQ(r.finishes.size(), 1u);
  EXPECT_EQ(r.finishes[0].error_code(), grpc::StatusCode::OUT_OF_RANGE);
}

// --- kDone ---------------------------------------------------------------------------------

TEST(QueuedWriteReactor, DoneIgnoresEverything) {
  Reactor r(10);
  r.FinishAfterWrites(grpc::Status::OK);
  EXPECT_FALSE(r.Enqueue(1));
  r.FinishAfterWrites(grpc::Status::CANCELLED);
  EXPECT_TRUE(r.writes.empty());
  EXPECT_EQ(r.finishes.size(), 1u);
}

// --- Hostile bases and interleavings -------------------------------------------------------

// gRPC may complete a write inline from StartWrite: no deadlock, order kept, one Finish.
TEST(QueuedWriteReactor, WriteCompletedInlineFromStartWrite) {
  InlineReactor r(10);
  EXPECT_TRUE(r.Enqueue(1));
  EXPECT_TRUE(r.Enqueue(2));
  EXPECT_EQ(r.writes, (std::vector<int>{1, 2}));
  r.ok_next = false;
  EXPECT_TRUE(r.Enqueue(3));
  EXPECT_EQ(r.finishes.size(), 1u);  // the write failed inline: finished at once
  r.FinishAfterWrites(grpc::Status::OK);
  EXPECT_EQ(r.finishes.size(), 1u);
}

// Concurrent Enqueue (registry threads), FinishAfterWrites (OnReadDone/OnCancel) and write
// completions (gRPC's threads), many times over: Finish exactly once, never with a write in
// flight (FakeBase checks that), and never a write after it.
TEST(QueuedWriteReactor, ConcurrentCallersFinishExactlyOnce) {
  for (int round = 0; round < 300; ++round) {
    Reactor r(4);
    std::atomic<bool> stop{false};
    std::thread completer([&] {
      std::mt19937 local(round * 7 + 1);
      while (!stop.load()) {
        bool pending = false;
        {
          absl::MutexLock lock(&r.mu);
          pending = r.in_flight;
        }
        if (pending) r.WriteDone(local() % 8 != 0);
        std::this_thread::yield();
      }
      // Complete the last write so a pending finish can happen.
      bool pending = false;
      {
        absl::MutexLock lock(&r.mu);
        pending = r.in_flight;
      }
      if (pending) r.WriteDone(true);
    });
    std::thread producer([&] {
      for (int i = 0; i < 50; ++i) {
        r.Enqueue(i);
        if (i % 10 == 0) std::this_thread::yield();
      }
    });
    std::thread finisher([&] {
      std::this_thread::yield();
      r.FinishAfterWrites(grpc::Status::OK);
    });
    producer.join();
    finisher.join();
    // The completer drains what is left (at most the queue bound); bounded in time.
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < give_up) {
      {
        absl::MutexLock lock(&r.mu);
        if (!r.finishes.empty()) break;
      }
      std::this_thread::yield();
    }
    stop = true;
    completer.join();
    absl::MutexLock lock(&r.mu);
    ASSERT_EQ(r.finishes.size(), 1u) << "round " << round;
  }
}

}  // namespace
}  // namespace tether::registry
