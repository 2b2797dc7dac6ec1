// The gate between gstabd's stop and steps' local work: the stop's last resort (exiting without
// stuck calls) succeeds only while no step runs its kernels or rule, and then no step begins any.
#include "server/local_work.h"

#include "gtest/gtest.h"

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

}  // namespace
}  // namespace gstab
