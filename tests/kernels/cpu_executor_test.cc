#include "kernels/cpu_executor.h"

#include <algorithm>
#include <atomic>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace gstab {
namespace {

// Which threads ran a loop's indices, and how often each index ran.
struct Record {
  explicit Record(int64_t n) : runs(static_cast<size_t>(n)) {}
  void Ran(int64_t i) {
    runs[static_cast<size_t>(i)].fetch_add(1);
    absl::MutexLock lock(&mu);
    threads.insert(std::this_thread::get_id());
  }
  std::vector<std::atomic<int>> runs;
  absl::Mutex mu;
  std::set<std::thread::id> threads ABSL_GUARDED_BY(mu);
};

TEST(CpuExecutorTest, ALongLoopRunsEachIndexOnceOnThePoolNotTheCaller) {
  CpuExecutor executor(3);
  EXPECT_EQ(executor.num_threads(), 3);
  constexpr int64_t kLong = 3 * CpuExecutor::kCallerWaitsFrom;
  for (int max_threads : {2, 3, 8}) {
    Record record(kLong);
    executor.ParallelFor(kLong, max_threads, [&](int64_t i) { record.Ran(i); });
    for (size_t i = 0; i < record.runs.size(); ++i) ASSERT_EQ(record.runs[i].load(), 1) << i;
    absl::MutexLock lock(&record.mu);
    // The caller waits: its CPU is wherever its own wake-up put it, often a pool thread's.
    EXPECT_EQ(record.threads.count(std::this_thread::get_id()), 0u) << max_threads;
    EXPECT_LE(record.threads.size(), static_cast<size_t>(std::min(max_threads, 3)));
  }
}

TEST(CpuExecutorTest, AShortLoopRunsEachIndexOnceOnTheCallerAndThePool) {
  CpuExecutor executor(2);
  const int64_t n = CpuExecutor::kCallerWaitsFrom;  // half that a thread: the caller takes part
  for (int loop = 0; loop < 500; ++loop) {  // a thread late from one loop must not join the next
    Record record(n);
    executor.ParallelFor(n, 2, [&](int64_t i) { record.Ran(i); });
    for (size_t i = 0; i < record.runs.size(); ++i) ASSERT_EQ(record.runs[i].load(), 1) << i;
    absl::MutexLock lock(&record.mu);
    EXPECT_LE(record.threads.size(), 2u);
  }
}

TEST(CpuExecutorTest, ALoopOfOneThreadOrAPoolOfOneRunsInlineOnTheCaller) {
  CpuExecutor pool(4);
  CpuExecutor single(1);
  EXPECT_EQ(single.num_threads(), 1);
  for (CpuExecutor* executor : {&pool, &single}) {
    for (auto [n, max_threads] : {std::pair<int64_t, int>{100, 1}, {1, 4}}) {
      Record record(n);
      executor->ParallelFor(n, max_threads, [&](int64_t i) { record.Ran(i); });
      for (size_t i = 0; i < record.runs.size(); ++i) ASSERT_EQ(record.runs[i].load(), 1);
      absl::MutexLock lock(&record.mu);
      EXPECT_EQ(record.threads, std::set<std::thread::id>{std::this_thread::get_id()});
    }
  }
}

TEST(CpuExecutorTest, ConcurrentLoopsEachRunWhole) {
  CpuExecutor executor(2);
  std::vector<std::thread> callers;
  std::atomic<int64_t> total{0};
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (int loop = 0; loop < 50; ++loop) {
        executor.ParallelFor(64, 2, [&](int64_t i) { total.fetch_add(i + 1); });
      }
    });
  }
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(total.load(), int64_t{4} * 50 * (64 * 65 / 2));
}

}  // namespace
}  // namespace gstab
