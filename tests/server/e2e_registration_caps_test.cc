// End-to-end: what gstabd refuses at registration for its caps, against a real gstabd process:
// the mappings it holds over every job and per owner, the buffers and tensors of one
// registration, and the tensors one owner's registrations hold. Each refusal names the cap, and the
// jobs within it go on.
#include <string>

#include "gtest/gtest.h"
#include "tests/server/faults_fixture.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

class E2eMappingCapsTest : public testing::FaultsFixture {};

// gstabd maps each registered object once, over every job, up to --max_mappings (the kernel caps
// a process's mappings). A registration past it is refused, naming the cap, and the jobs already
// mapped go on; a mapping let go makes room.
TEST_F(E2eMappingCapsTest, SharedMemoryPastTheDaemonsMappingCapIsRefusedAndOthersGoOn) {
  testing::TempDir dir;
  auto daemon = testing::DaemonProcess::Start(dir.path(), {"--max_mappings=2", "--metrics_port=0"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  absl::StatusOr<int> port = daemon->MetricsPort();
  ASSERT_TRUE(port.ok()) << port.status();
  auto metric = [&](const std::string& series) {
    absl::StatusOr<testing::HttpResponse> r = testing::HttpRequest(*port, "GET", "/metrics");
    return r.ok() && r->body.find(series + "\n") != std::string::npos;
  };
  EXPECT_TRUE(metric("gstab_shm_mappings 0"));  // from the start
  EXPECT_TRUE(metric("gstab_shm_mappings_limit 2"));
  auto a = testing::TestWorker::Create(daemon->socket(), testing::JobOptions("a"));
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = testing::TestWorker::Create(daemon->socket(), testing::JobOptions("b"));
  ASSERT_TRUE(b.ok()) << b.status();
  ExpectServing(a->get(), 1);

  auto c = testing::TestWorker::Create(daemon->socket(), testing::JobOptions("c"));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted) << c.status();
  EXPECT_NE(c.status().message().find("already maps 2 objects"), std::string::npos) << c.status();
  EXPECT_NE(c.status().message().find("--max_mappings"), std::string::npos) << c.status();
  EXPECT_TRUE(metric("gstab_shm_mappings 2"));
  EXPECT_TRUE(metric("gstab_shm_mappings_limit 2"));
  ExpectServing(a->get(), 2);
  ExpectServing(b->get(), 1);

  ASSERT_TRUE((*b)->client().Detach().ok());  // b's mapping is let go at once
  b->reset();
  auto again = testing::TestWorker::Create(daemon->socket(), testing::JobOptions("c"));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(metric("gstab_shm_mappings 2"));
  ExpectServing(again->get(), 1);
  ExpectServing(a->get(), 3);
}

// --max_mappings_per_owner reaches the registry: a uid's second object is refused, naming it.
TEST_F(E2eMappingCapsTest, SharedMemoryPastTheOwnersMappingCapIsRefused) {
  testing::TempDir dir;
  auto daemon = testing::DaemonProcess::Start(dir.path(), {"--max_mappings_per_owner=1"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto a = testing::TestWorker::Create(daemon->socket(), testing::JobOptions("a"));
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = testing::TestWorker::Create(daemon->socket(), testing::JobOptions("b"));
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted) << b.status();
  EXPECT_NE(b.status().message().find("--max_mappings_per_owner"), std::string::npos) << b.status();
  ExpectServing(a->get(), 1);
}

// gstabd's --max_buffers and --max_tensors reach its checks: a registration past either is
// refused, saying which cap, and one within them goes on.
TEST(E2eRegistrationCapsTest, BufferAndTensorCapsComeFromTheFlags) {
  testing::TempDir dir;
  auto daemon = testing::DaemonProcess::Start(dir.path(), {"--max_buffers=1", "--max_tensors=2"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto client = Client::Connect(daemon->socket());
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->Attach(testing::JobOptions("capped")).ok());
  GradientArena a, b, wide;
  a.AddTensor("a", 16, DType::kFloat32);
  b.AddTensor("b", 16, DType::kFloat32);
  for (const char* name : {"w0", "w1", "w2"}) wide.AddTensor(name, 16, DType::kFloat32);
  ASSERT_TRUE(a.Allocate().ok() && b.Allocate().ok() && wide.Allocate().ok());
  v1::RegisterBuffersRequest two = a.RegistrationRequest();
  const v1::RegisterBuffersRequest second = b.RegistrationRequest();
  for (v1::Tensor t : second.tensors()) {
    t.set_buffer(1);
    *two.add_tensors() = t;
  }
  *two.add_buffers() = second.buffers(0);
  absl::Status buffers = (*client)->RegisterBuffers(two);
  EXPECT_EQ(buffers.code(), absl::StatusCode::kResourceExhausted) << buffers;
  EXPECT_NE(buffers.message().find("2 buffers exceed this daemon's cap of 1"), std::string::npos)
      << buffers;
  absl::Status tensors = (*client)->RegisterBuffers(wide.RegistrationRequest());
  EXPECT_EQ(tensors.code(), absl::StatusCode::kResourceExhausted) << tensors;
  EXPECT_NE(tensors.message().find("3 tensors exceed this daemon's cap of 2"), std::string::npos)
      << tensors;
  EXPECT_TRUE((*client)->Register(a).ok());
}

// --max_tensors_per_owner counts an owner's registered tensors over all its jobs: a second job's
// registration past it is refused, saying how many the owner holds, while a worker registering
// again (its new registration replaces its own) and its steps go on; a detach makes room.
TEST_F(E2eMappingCapsTest, TensorsPastTheOwnersCapAreRefusedOverAllItsJobs) {
  testing::TempDir dir;
  auto daemon = testing::DaemonProcess::Start(dir.path(), {"--max_tensors_per_owner=6"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto a = testing::TestWorker::Create(daemon->socket(), testing::JobOptions("a"));  // 4 tensors
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = testing::TestWorker::Create(daemon->socket(), testing::JobOptions("b"));
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted) << b.status();
  EXPECT_NE(b.status().message().find("this registration's 4 tensors would pass the 6"),
            std::string::npos)
      << b.status();
  EXPECT_NE(b.status().message().find("--max_tensors_per_owner): its jobs' workers hold 4"),
            std::string::npos)
      << b.status();
  ASSERT_TRUE((*a)->client().Register((*a)->arena()).ok());  // replaces its own 4
  ExpectServing(a->get(), 1);

  ASSERT_TRUE((*a)->client().Detach().ok());
  a->reset();
  auto again = testing::TestWorker::Create(daemon->socket(), testing::JobOptions("b"));
  ASSERT_TRUE(again.ok()) << again.status();
  ExpectServing(again->get(), 1);
}

}  // namespace
}  // namespace gstab
