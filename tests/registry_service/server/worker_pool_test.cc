// WorkerPool and Strand: tasks of one strand run one at a time in post order, strands run side
// by side, and a pool runs what was queued before it is destroyed.
#include "registry_service/server/worker_pool.h"

#include <atomic>
#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace tether::registry {
namespace {

TEST(StrandTest, RunsItsTasksOneAtATimeInPostOrder) {
  WorkerPool pool(8);
  auto strand = std::make_shared<Strand>(pool);
  absl::Mutex mu;
  std::vector<int> order;
  std::atomic<int> running{0};
  std::atomic<bool> overlapped{false};
  absl::Notification done;
  constexpr int kTasks = 1000;  // more than one batch: the strand yields and resumes in order
  for (int i = 0; i < kTasks; ++i) {
    strand->Post([&, i] {
      if (running.fetch_add(1) != 0) overlapped = true;
      {
        absl::MutexLock lock(&mu);
        order.push_back(i);
      }
      running.fetch_sub(1);
      if (i == kTasks - 1) done.Notify();
    });
  }
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_FALSE(overlapped.load());
  absl::MutexLock lock(&mu);
  ASSERT_EQ(order.size(), static_cast<size_t>(kTasks));
  for (int i = 0; i < kTasks; ++i) ASSERT_EQ(order[i], i);
}

TEST(StrandTest, AStrandThatWaitsDoesNotHoldUpAnother) {
  WorkerPool pool(2);
  auto slow = std::make_shared<Strand>(pool);
  auto fast = std::make_shared<Strand>(pool);
  absl::Notification release, fast_ran;
  slow->Post([&] { release.WaitForNotification(); });
  fast->Post([&] { fast_ran.Notify(); });
  EXPECT_TRUE(fast_ran.WaitForNotificationWithTimeout(absl::Seconds(10)));
  release.Notify();
}

TEST(WorkerPoolTest, RunsWhatWasQueuedBeforeItIsDestroyed) {
  std::atomic<int> ran{0};
  {
    WorkerPool pool(1);
    absl::Notification release;
    pool.Post([&] { release.WaitForNotification(); });
    for (int i = 0; i < 100; ++i) pool.Post([&] { ran.fetch_add(1); });
    release.Notify();
  }
  EXPECT_EQ(ran.load(), 100);
}

}  // namespace
}  // namespace tether::registry
