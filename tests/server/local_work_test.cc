// The stop's guards: the gate between gstabd's stop and steps' local work (the stop's last
// resort, exiting without stuck calls, succeeds only while no step runs its kernels or rule, and
// then no step begins any), and the limit on the stop's whole length.
#include "server/local_work.h"

#include <atomic>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/stop_limit.h"

namespace gstab {
namespace {

TEST(LocalWorkTest, ClosesOnlyWhenIdleAndThenRefusesNewWork) {
  {
    const LocalWork first;
    ASSERT_TRUE(first.began());
    {
      const LocalWork second;  // another step's, meanwhile
      EXPECT_TRUE(second.began());
      EXPECT_FALSE(LocalWork::Close());
    }
    EXPECT_FALSE(LocalWork::Close());  // the first still runs
  }
  EXPECT_TRUE(LocalWork::Close());
  const LocalWork late;  // a step that would begin now: it does not, and does not wait
  EXPECT_FALSE(late.began());
  EXPECT_TRUE(LocalWork::Close());  // closed already: still closed, and says so
}

TEST(StopLimitTest, RunsItsExpiryOnlyForAStopPastTheLimit) {
  std::atomic<int> expired{0};
  {
    StopLimit limit(absl::Milliseconds(50), [&] { expired += 1; });
    const absl::Time until = absl::Now() + absl::Seconds(10);  // a stop that runs past it
    while (expired == 0 && absl::Now() < until) absl::SleepFor(absl::Milliseconds(10));
    EXPECT_EQ(expired, 1);
  }
  EXPECT_EQ(expired, 1);
  const absl::Time start = absl::Now();
  {
    StopLimit limit(absl::Seconds(30), [&] { expired += 1; });
  }  // a stop that ends within it: not waited for to the limit
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(expired, 1);
}

}  // namespace
}  // namespace gstab
