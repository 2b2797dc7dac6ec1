// Shared memory of workers in another pid namespace (containers sharing /dev/shm), whose
// creators no process of gstabd's namespace can see: what gstabd removes when such a worker's
// lease expires, and what it keeps.
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <string>

#include "common/shm_names.h"
#include "gtest/gtest.h"
#include "tests/server/faults_fixture.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

using testing::JobOptions;
using testing::Subprocess;

// gstab's objects in /dev/shm now, by file name.
std::set<std::string> GstabObjects() {
  std::set<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm")) {
    const std::string name = e.path().filename().string();
    if (name.rfind("gstab-", 0) == 0) names.insert(name);
  }
  return names;
}

class E2eShmCleanupTest : public testing::FaultsFixture {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root for a pid namespace";
    // Root in a container without CAP_SYS_ADMIN is refused one.
    if (testing::RunShell("/usr/bin/unshare --pid --fork true 2>&1").first != 0) {
      GTEST_SKIP() << "cannot make a pid namespace here (a container without CAP_SYS_ADMIN?)";
    }
    FaultsFixture::SetUp();
  }
  // The example trainer as job `job`, in a pid namespace of its own, once it has stepped; its
  // objects (those made meanwhile of another namespace: other tests may make objects too) in
  // `objects`, as "/name".
  absl::StatusOr<Subprocess> StartContained(const std::string& job,
                                            std::set<std::string>* objects) {
    const std::set<std::string> before = GstabObjects();
    absl::StatusOr<Subprocess> worker = Subprocess::Start(
        {"/usr/bin/unshare", "--pid", "--fork", "--kill-child",
         testing::BinaryPath("examples/mlp_trainer"), "--socket=" + daemon_->socket(),
         "--job=" + job, "--steps=1000000", "--print_every=1", "--spike_steps="});
    if (!worker.ok()) return worker.status();
    for (int i = 0; i < 3; ++i) {
      if (absl::StatusOr<std::string> line = worker->ReadLine(absl::Seconds(20)); !line.ok()) {
        return line.status();
      }
    }
    for (const std::string& name : GstabObjects()) {
      if (before.count(name) == 0 && !CreatedInThisPidNamespace("/" + name)) {
        objects->insert("/" + name);
      }
    }
    return worker;
  }
};

// A dead worker's shared memory is left behind, and no process of gstabd's namespace can tell
// its creator is gone: gstabd removes it when the worker's lease expires.
TEST_F(E2eShmCleanupTest, DeadWorkerOfAnotherPidNamespaceLeavesNoSharedMemory) {
  std::set<std::string> its;
  absl::StatusOr<Subprocess> worker = StartContained("contained", &its);
  ASSERT_TRUE(worker.ok()) << worker.status();
  ASSERT_FALSE(its.empty());

  worker->Signal(SIGKILL);  // unshare, and with it the worker
  ASSERT_TRUE(worker->Wait(absl::Seconds(10)).ok());
  const absl::Time deadline = absl::Now() + absl::Seconds(10);  // a 1 s lease
  auto left = [&] {
    return std::any_of(its.begin(), its.end(), [](const std::string& n) {
      return std::filesystem::exists("/dev/shm" + n);
    });
  };
  while (left() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(100));
  EXPECT_FALSE(left()) << "the dead worker's shared memory is still in /dev/shm";
  EXPECT_TRUE(daemon_->WaitForLog("(its lease expired)"));
}

// Nor does it remove one that another registration still holds: a slice of the dead worker's
// object that another job registered stays registrable by its name, until that job lets go.
TEST_F(E2eShmCleanupTest, ADeadWorkersObjectAnotherJobHoldsIsKept) {
  std::set<std::string> its;
  absl::StatusOr<Subprocess> worker = StartContained("contained-shared", &its);
  ASSERT_TRUE(worker.ok()) << worker.status();
  ASSERT_FALSE(its.empty());
  const std::string object = *its.begin();
  // Another job registers 8 floats of it: its last, which the worker's progress word leaves
  // free (client_lib/arena.cc gives the word 64 bytes).
  struct stat st;
  ASSERT_EQ(::stat(("/dev/shm" + object).c_str(), &st), 0);
  auto sharer = Client::Connect(daemon_->socket());
  ASSERT_TRUE(sharer.ok()) << sharer.status();
  ASSERT_TRUE((*sharer)->Attach(JobOptions("sharer")).ok());
  v1::RegisterBuffersRequest request;
  v1::Buffer* buffer = request.add_buffers();
  buffer->set_transport(v1::TRANSPORT_HOST_SHM);
  buffer->set_shm_name(object);
  buffer->set_offset(static_cast<uint64_t>(st.st_size) - 32);
  buffer->set_size_bytes(32);
  buffer->set_dtype(v1::DTYPE_FLOAT32);
  v1::Tensor* tensor = request.add_tensors();
  tensor->set_name("slice");
  tensor->set_numel(8);
  const absl::Status registered = (*sharer)->RegisterBuffers(request);
  ASSERT_TRUE(registered.ok()) << registered;

  worker->Signal(SIGKILL);
  ASSERT_TRUE(worker->Wait(absl::Seconds(10)).ok());
  EXPECT_TRUE(daemon_->WaitForLog("whose lease expired, while another registration holds it"));
  EXPECT_TRUE(std::filesystem::exists("/dev/shm" + object));
  EXPECT_TRUE((*sharer)->RegisterBuffers(request).ok());  // by its name, as a worker does
  // Once nothing maps it, it goes (the housekeeping's next tick).
  ASSERT_TRUE((*sharer)->Detach().ok());
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (std::filesystem::exists("/dev/shm" + object) && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_FALSE(std::filesystem::exists("/dev/shm" + object));
  shm_unlink(object.c_str());  // (should the test have failed)
}

}  // namespace
}  // namespace gstab
