// The GPU path end to end: gstabd with --backend=cuda and a separate worker process whose
// gradients stay in its GPU memory (CUDA IPC, ready/done events). Skipped without a GPU.
#include "gtest/gtest.h"
#include "server/cuda/cuda_ipc.h"
#include "tests/testing/subprocess.h"

namespace gstab {
namespace {

TEST(CudaE2eTest, WorkerStepsThroughGstabdOnTheGpu) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  testing::TempDir dir;
  auto daemon = testing::DaemonProcess::Start(dir.path(), {"--backend=cuda"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto worker = testing::Subprocess::Start(
      {testing::BinaryPath("tests/cuda_e2e_worker"), daemon->socket(), "gpu-job"});
  ASSERT_TRUE(worker.ok());
  const std::string out = worker->ReadAll();
  EXPECT_EQ(worker->Wait(absl::Seconds(60)).value_or(-1), 0) << out;
  EXPECT_NE(out.find("RESULT ok"), std::string::npos) << out;
  EXPECT_EQ(daemon->Stop().value_or(-1), 0);
}

TEST(CudaE2eTest, CudaBackendRefusesToStartWithoutAGpu) {
  if (CudaDeviceCount() > 0) GTEST_SKIP() << "this machine has a GPU";
  auto [rc, out] = testing::RunShell(testing::GstabdPath() + " --backend=cuda --socket=/tmp/x");
  EXPECT_EQ(rc, 2);
  EXPECT_NE(out.find("no CUDA device is usable here"), std::string::npos) << out;
}

}  // namespace
}  // namespace gstab
