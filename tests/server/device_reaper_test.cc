// gstabd's background releases of GPU memory: each device's in order, none behind another
// device's. Needs no GPU (the releases here touch none).
#include "server/cuda/device_reaper.h"

#include <atomic>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace gstab {
namespace {

TEST(DeviceReaperTest, AHeldDeviceHoldsUpOnlyItsOwnReleases) {
  // Device ordinals no other test uses: the reapers live as long as the process.
  constexpr int kHeld = 1000;
  constexpr int kOther = 1001;
  absl::Notification let_go;
  std::atomic<bool> behind_held{false};
  absl::Notification other_ran;
  // As a cudaFree waiting for another job's stream held at its worker's ready word.
  DeferDeviceRelease(kHeld, [&] { let_go.WaitForNotification(); });
  DeferDeviceRelease(kHeld, [&] { behind_held = true; });
  DeferDeviceRelease(kOther, [&] { other_ran.Notify(); });

  EXPECT_TRUE(other_ran.WaitForNotificationWithTimeout(absl::Seconds(10)))
      << "a release on another device waited for the held one";
  EXPECT_FALSE(behind_held) << "a device's releases ran out of order";
  EXPECT_FALSE(FlushDeviceReleases(absl::Milliseconds(50))) << "a flush ignored a held release";

  let_go.Notify();
  EXPECT_TRUE(FlushDeviceReleases(absl::Seconds(10)));
  EXPECT_TRUE(behind_held);
}

}  // namespace
}  // namespace gstab
