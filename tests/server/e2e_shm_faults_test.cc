// What gstabd does with a worker's shared memory objects when the worker misbehaves or dies.
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

#include "absl/strings/str_cat.h"
#include "client_lib/client.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

using testing::DaemonProcess;
using testing::TempDir;
using testing::TestWorker;

// A worker that leaves holes in its shared memory, with /dev/shm too full to fill them, makes
// gstabd's touch of them raise SIGBUS: that step fails, naming the object, and gstabd serves on,
// its other jobs untouched. (The holes hide from the check of allocated pages: blocks reserved
// past the object's end count as its own, within its last huge page.)
//
// Needs root, for a small /dev/shm of its own (a mount namespace of this test's thread, which
// gstabd, started from it, shares).
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

// gstabd run as a user of its own, without CAP_DAC_OVERRIDE, cannot open another user's
// objects (a worker makes them 0600): the refusal says whose the object is and whose gstabd is.
TEST(E2eShmFaultsTest, AnObjectGstabdCannotOpenIsRefusedNamingItsOwner) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run gstabd as another user";
  TempDir dir;
  ASSERT_EQ(chmod(dir.path().c_str(), 01777), 0);  // for gstabd's socket and state (sticky)
  auto daemon = DaemonProcess::Start(
      dir.path(), {}, {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto worker = TestWorker::Create(daemon->socket(), testing::JobOptions("unopenable"));
  ASSERT_FALSE(worker.ok());
  EXPECT_EQ(worker.status().code(), absl::StatusCode::kPermissionDenied) << worker.status();
  EXPECT_NE(
      worker.status().message().find("it is uid 0's, mode 0600, and gstabd runs as uid 65534"),
      std::string::npos)
      << worker.status();
  EXPECT_EQ(daemon->Stop().value_or(-1), 0) << daemon->Log();
}

// gstabd removes the objects of a worker of another pid namespace (whose death it cannot see)
// when its lease expires, by name: but only while the name is still that object's. A name
// given to a new object since (a restarted worker's) is left alone.
TEST(E2eShmFaultsTest, AnExpiredWorkersNameGivenToANewObjectIsKept) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path(), {"--lease_ms=1000"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  // Names no process of this pid namespace makes ("1" is no namespace's number).
  const std::string kept = absl::StrCat("/gstab-1-kept-", getpid());
  const std::string removed = absl::StrCat("/gstab-1-removed-", getpid());
  auto make = [](const std::string& name) {
    const int fd = shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    const bool made = fd >= 0 && posix_fallocate(fd, 0, 4096) == 0;
    if (fd >= 0) close(fd);
    return made;
  };
  auto exists = [](const std::string& name) {
    struct stat st;
    return stat(("/dev/shm" + name).c_str(), &st) == 0;
  };
  ASSERT_TRUE(make(kept) && make(removed)) << strerror(errno);

  // A session of the raw protocol, which no thread keeps alive: its lease runs out.
  auto client = Client::Connect(daemon->socket());
  ASSERT_TRUE(client.ok()) << client.status();
  v1::AttachRequest attach;
  attach.set_job("expiring");
  attach.set_world_size(1);
  attach.set_local_world_size(1);
  attach.set_node_count(1);
  v1::AttachResponse attached;
  grpc::ClientContext attach_ctx;
  ASSERT_TRUE((*client)->stub()->Attach(&attach_ctx, attach, &attached).ok());
  v1::RegisterBuffersRequest request;
  request.set_session(attached.session());
  for (const std::string& name : {kept, removed}) {
    v1::Buffer* b = request.add_buffers();
    b->set_transport(v1::TRANSPORT_HOST_SHM);
    b->set_shm_name(name);
    b->set_size_bytes(4096);
    b->set_dtype(v1::DTYPE_FLOAT32);
    v1::Tensor* t = request.add_tensors();
    t->set_name(name.substr(1));
    t->set_buffer(request.buffers_size() - 1);
    t->set_numel(1024);
  }
  v1::RegisterBuffersResponse registered;
  grpc::ClientContext register_ctx;
  const grpc::Status status =
      (*client)->stub()->RegisterBuffers(&register_ctx, request, &registered);
  ASSERT_TRUE(status.ok()) << status.error_message();

  // The worker's successor makes a new object under one of its names.
  ASSERT_EQ(shm_unlink(kept.c_str()), 0);
  ASSERT_TRUE(make(kept));
  EXPECT_TRUE(daemon->WaitForLog("kept shared memory '" + kept, absl::Seconds(10)))
      << daemon->Log();
  EXPECT_TRUE(daemon->WaitForLog("removed shared memory '" + removed)) << daemon->Log();
  EXPECT_TRUE(exists(kept)) << "the new object under the expired worker's name was removed";
  EXPECT_FALSE(exists(removed));
  shm_unlink(kept.c_str());
  shm_unlink(removed.c_str());
  EXPECT_EQ(daemon->Stop().value_or(-1), 0) << daemon->Log();
}

}  // namespace
}  // namespace gstab
