// A worker that leaves holes in its shared memory, with /dev/shm too full to fill them, makes
// gstabd's touch of them raise SIGBUS: that step fails, naming the object, and gstabd serves on,
// its other jobs untouched. (The holes hide from the check of allocated pages: blocks reserved
// past the object's end count as its own.)
//
// Needs root, for a small /dev/shm of its own (a mount namespace of this test's thread, which
// gstabd, started from it, shares).
#include <fcntl.h>
#include <linux/falloc.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

using testing::DaemonProcess;
using testing::TempDir;
using testing::TestWorker;

TEST(E2eShmFaultsTest, HolesThatCannotBeFilledFailTheirStepNotGstabd) {
  if (geteuid() != 0) GTEST_SKIP() << "a /dev/shm of the test's own needs root";
  if (unshare(CLONE_NEWNS) != 0 ||
      mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
      mount("tmpfs", "/dev/shm", "tmpfs", 0, "size=4m") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs of its own here: " << strerror(errno);
  }
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path(), {});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto bystander = TestWorker::Create(daemon->socket(), testing::JobOptions("bystander"));
  auto victim = TestWorker::Create(daemon->socket(), testing::JobOptions("holes"));
  ASSERT_TRUE(bystander.ok()) << bystander.status();
  ASSERT_TRUE(victim.ok()) << victim.status();
  (*bystander)->Fill(1, 1);
  (*victim)->Fill(1, 2);
  ASSERT_TRUE((*bystander)->client().Step(1).ok());
  ASSERT_TRUE((*victim)->client().Step(1).ok());

  // Every page but the first released, and as many reserved past the end.
  const int fd = shm_open((*victim)->arena().shm_name().c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  struct stat st;
  ASSERT_EQ(fstat(fd, &st), 0);
  const off_t pages = (st.st_size + 4095) / 4096 * 4096;
  ASSERT_EQ(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, pages - 4096), 0);
  ASSERT_EQ(fallocate(fd, FALLOC_FL_KEEP_SIZE, pages, pages - 4096), 0);
  close(fd);
  // /dev/shm full.
  const int filler = open("/dev/shm/filler", O_RDWR | O_CREAT, 0600);
  ASSERT_GE(filler, 0);
  const std::vector<char> page(4096);
  while (write(filler, page.data(), page.size()) > 0) {
  }

  absl::StatusOr<v1::StepResponse> lost = (*victim)->client().Step(2);
  ASSERT_FALSE(lost.ok());
  EXPECT_EQ(lost.status().code(), absl::StatusCode::kFailedPrecondition) << lost.status();
  EXPECT_NE(lost.status().message().find("(SIGBUS)"), std::string::npos) << lost.status();
  EXPECT_NE(lost.status().message().find((*victim)->arena().shm_name()), std::string::npos)
      << lost.status();
  EXPECT_NE(lost.status().message().find("nothing was applied to this step"), std::string::npos)
      << lost.status();
  EXPECT_TRUE(daemon->WaitForLog("job 'holes' step 2: local rank 0: gstabd could not touch"))
      << daemon->Log();  // the operator hears of it too
  // And at every step after, until the worker registers again.
  absl::StatusOr<v1::StepResponse> still = (*victim)->client().Step(2);
  EXPECT_NE(still.status().message().find("(SIGBUS)"), std::string::npos) << still.status();

  (*bystander)->Fill(2, 1);
  absl::StatusOr<v1::StepResponse> served = (*bystander)->client().Step(2);
  EXPECT_TRUE(served.ok()) << served.status();
  EXPECT_EQ(served->results_step(), 2u);

  // With room again, the registered-again object steps (its holes now on gstabd's account).
  close(filler);
  unlink("/dev/shm/filler");
  ASSERT_TRUE((*victim)->client().Register((*victim)->arena()).ok());
  absl::StatusOr<v1::StepResponse> again = (*victim)->client().Step(2);
  EXPECT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(daemon->Stop().value_or(-1), 0) << daemon->Log();
}

}  // namespace
}  // namespace gstab
