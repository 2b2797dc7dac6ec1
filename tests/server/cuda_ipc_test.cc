// gstabd's CUDA pieces on a real GPU: a separate worker process exports its gradients over
// CUDA IPC and signals through the pipeline's ready and done words; this process opens them and
// runs the stream-ordered pipeline. Skipped, not failed, where no GPU exists (ctest label
// `gpu`).
#include "server/cuda/cuda_ipc.h"

#include <cuda_runtime.h>
#include <signal.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "kernels/cross_node_mode.h"
#include "server/cuda/cuda_stepper.h"
#include "server/cuda/device_reaper.h"
#include "server/cuda/nccl_comm.h"
#include "server/nccl_settings.h"
#include "tests/testing/gpu.h"
#include "tests/testing/subprocess.h"

namespace gstab {
namespace {

// CUDA's default, made explicit before CUDA starts (static initialisation): the first test
// below then checks that the pipeline loads its kernels before it waits on a worker.
const bool kLazyModuleLoading = setenv("CUDA_MODULE_LOADING", "LAZY", 1) == 0;
// As gstabd has it (CUDA's default is 8): the release stream of a pipeline is not to share a
// hardware queue with the stream it releases.
const bool kConnections = setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", 1) == 0;
// NCCL as gstabd runs it (connected at initialisation, not at the first collective).
const bool kNccl = (SetGstabdNcclEnvironment(), true);

// Device memory is released on a background thread: let it finish before the process exits.
class FlushReleases : public ::testing::Environment {
 public:
  void TearDown() override {
    EXPECT_TRUE(FlushDeviceReleases(absl::Seconds(20))) << "device releases still running";
  }
};
::testing::Environment* const kFlushReleases =
    ::testing::AddGlobalTestEnvironment(new FlushReleases);
::testing::Environment* const kGpuOnly = ::testing::AddGlobalTestEnvironment(
    new testing::GpuOnlyBinary(+[] { return CudaDeviceCount() > 0; }));

TEST(CudaIpcTest, WorkerGradientsAreStabilizedInPlaceThroughIpc) {
  GSTAB_SKIP_WITHOUT_GPU(CudaDeviceCount() > 0);
  testing::TempDir dir;
  const std::string flag = dir.path() + "/stepped";
  auto worker = testing::Subprocess::Start({testing::BinaryPath("tests/cuda_ipc_worker"), flag});
  ASSERT_TRUE(worker.ok());
  absl::StatusOr<std::string> line = worker->ReadLine(absl::Seconds(60));
  ASSERT_TRUE(line.ok()) << line.status();
  const std::vector<std::string> parts = absl::StrSplit(*line, ' ');
  ASSERT_EQ(parts.size(), 2u) << *line;
  const std::string mem = absl::HexStringToBytes(parts[1]);

  CudaIpcRegistry registry;
  EXPECT_EQ(registry.Open(mem, 0, 0, 1ull << 40).status().code(),
            absl::StatusCode::kInvalidArgument);  // beyond the real allocation
  EXPECT_EQ(registry.Open(mem.substr(1), 0, 0, 64).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.Open(mem, 99, 0, 64).status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<std::shared_ptr<IpcRegion>> region = registry.Open(mem, 0, 0, 8192 + 70001 * 4);
  ASSERT_TRUE(region.ok()) << region.status();
  auto again = registry.Open(mem, 0, 4096, 1554);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->get(), region->get());  // one mapping per allocation
  EXPECT_EQ(registry.LiveRegions(), 1);

  char* base = static_cast<char*>((*region)->base);
  ChunkTable table = *ChunkTable::Create(
      {Chunk{base, 1000, DType::kFloat32, 0}, Chunk{base + 4096, 777, DType::kBFloat16, 0},
       Chunk{base + 8192, 70001, DType::kFloat32, 1}},
      2);
  GpuJobSpec spec;
  spec.job = "ipc-job";
  spec.modes = {0, 1};  // one rank: a replicated group keeps its local sum anyway
  spec.nccl.timeout = absl::Seconds(5);
  auto stepper = CudaStepper::Create(0, table, std::vector<GroupStats>(2), spec);
  ASSERT_TRUE(stepper.ok()) << stepper.status();
  // Queued before the worker has even uploaded its gradients: the ready word holds it back on
  // the GPU, and Enqueue returns at once. On another thread, so that a host wait for the ready
  // word (a kernel loaded at its first launch waits for the device) fails the test instead of
  // hanging it: the worker is told where to write either way.
  ASSERT_TRUE(kLazyModuleLoading && kConnections);
  absl::Notification enqueued;
  absl::Status enqueue_status;
  std::thread enqueue([&] {
    enqueue_status = (*stepper)->Enqueue(1, RuleParams{}, 1, absl::InfiniteFuture());
    enqueued.Notify();
  });
  EXPECT_TRUE(enqueued.WaitForNotificationWithTimeout(absl::Seconds(10)))
      << "Enqueue waited on the host for the worker's ready write";
  {
    std::ofstream out(flag + ".tmp");
    out << absl::BytesToHexString((*stepper)->ResultsHandle()) << " " << (*stepper)->ReadyOffset()
        << " " << (*stepper)->DoneOffset() << "\n";
  }
  std::filesystem::rename(flag + ".tmp", flag);  // the worker reads all of it or nothing
  if (!enqueued.WaitForNotificationWithTimeout(absl::Seconds(20))) {
    // Stuck inside CUDA with no ready write coming: nothing can end that thread.
    std::cerr << "Enqueue still blocked 20 s after the worker was told where to write\n";
    worker->Signal(SIGKILL);
    std::_Exit(1);
  }
  enqueue.join();
  ASSERT_TRUE(enqueue_status.ok()) << enqueue_status;
  absl::StatusOr<std::string> result = worker->ReadLine(absl::Seconds(20));
  ASSERT_TRUE(result.ok()) << result.status() << " (the worker's step did not complete)";
  EXPECT_EQ(result->rfind("RESULT ok", 0), 0u) << *result;
  EXPECT_EQ(worker->Wait(absl::Seconds(30)).value_or(-1), 0);

  std::optional<GpuStepResult> completed;
  for (int i = 0; i < 500 && !completed; ++i) {
    std::vector<GpuStepResult> done = (*stepper)->Poll();
    if (!done.empty()) completed = done.back();
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_TRUE(completed.has_value());
  EXPECT_EQ(completed->step, 1u);
  EXPECT_GT(completed->outcomes[0].norm, 0);
  EXPECT_TRUE(completed->outcomes[1].flags & kFlagAccepted);
}

TEST(CudaIpcTest, TenThousandStepsLeakNoDeviceMemory) {
  GSTAB_SKIP_WITHOUT_GPU(CudaDeviceCount() > 0);
  void* d;
  ASSERT_EQ(cudaMalloc(&d, 1 << 20), cudaSuccess);
  ASSERT_EQ(cudaMemset(d, 0x3c, 1 << 20), cudaSuccess);
  ChunkTable table = *ChunkTable::Create({Chunk{d, (1 << 20) / 4, DType::kFloat32, 0}}, 1);
  GpuJobSpec spec;
  spec.modes = {0};
  spec.nccl_one_rank = true;  // the cross-node stage through NCCL, as a multi-node job has it
  auto stepper = CudaStepper::Create(0, table, std::vector<GroupStats>(1), spec);
  ASSERT_TRUE(stepper.ok()) << stepper.status();
  size_t free_before, free_after, total;
  for (uint64_t step = 1; step <= 100; ++step) {
    ASSERT_TRUE(
        (*stepper)->Enqueue(step, RuleParams{}, 0, absl::InfiniteFuture()).ok());  // 0: ready now
  }
  ASSERT_TRUE((*stepper)->Statistics().ok());
  cudaMemGetInfo(&free_before, &total);
  for (uint64_t step = 101; step <= 10100; ++step) {
    ASSERT_TRUE((*stepper)->Enqueue(step, RuleParams{}, 0, absl::InfiniteFuture()).ok()) << step;
  }
  absl::StatusOr<std::vector<GroupStats>> stats = (*stepper)->Statistics();
  ASSERT_TRUE(stats.ok());
  cudaMemGetInfo(&free_after, &total);
  EXPECT_EQ(free_after, free_before);
  EXPECT_EQ((*stats)[0].steps, 10100u);
  cudaFree(d);
}

// kThrees fp32 3.0s on device 0, the caller's to cudaFree; null when CUDA failed.
constexpr int kThrees = 1 << 16;
void* DeviceThrees() {
  void* d = nullptr;
  const std::vector<float> host(kThrees, 3.0f);
  if (cudaSetDevice(0) != cudaSuccess || cudaMalloc(&d, kThrees * 4) != cudaSuccess) return nullptr;
  if (cudaMemcpy(d, host.data(), kThrees * 4, cudaMemcpyHostToDevice) != cudaSuccess) {
    cudaFree(d);
    return nullptr;
  }
  return d;
}

// A pipeline of job `job` over DeviceThrees' floats at `d`, one group (`nccl`: with the
// cross-node stage, a communicator of one).
absl::StatusOr<std::unique_ptr<CudaStepper>> StepperOver(void* d, const std::string& job,
                                                         bool nccl) {
  absl::StatusOr<ChunkTable> table = ChunkTable::Create({Chunk{d, kThrees, DType::kFloat32, 0}}, 1);
  if (!table.ok()) return table.status();
  GpuJobSpec spec;
  spec.job = job;
  spec.modes = {0};
  spec.nccl_one_rank = nccl;
  return CudaStepper::Create(0, *table, std::vector<GroupStats>(1), spec);
}

// A worker that dies with steps queued never writes their ready word: the pipeline releases
// them, and they neither read nor change the gradients or the statistics.
// `nccl`: with the cross-node stage (whose merge kernel must keep the step void too).
void GoneWorkerStepsChangeNothing(bool nccl) {
  SCOPED_TRACE(nccl ? "with the NCCL stage" : "without the NCCL stage");
  const std::vector<float> host(kThrees, 3.0f);
  void* d = DeviceThrees();
  ASSERT_NE(d, nullptr);
  auto stepper = StepperOver(d, "gone-job", nccl);
  ASSERT_TRUE(stepper.ok()) << stepper.status();
  // Never written; as many as the pipeline reports at once (a worker's host ahead of its GPU).
  for (uint32_t step = 1; step <= CudaStepper::kResultSlots; ++step) {
    ASSERT_TRUE((*stepper)->Enqueue(step, RuleParams{}, step, absl::InfiniteFuture()).ok());
  }
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_FALSE((*stepper)->Idle());  // held at step 1's ready word
  (*stepper)->Release();
  const absl::Time released = absl::Now();
  while (!(*stepper)->Idle() && absl::Now() - released < absl::Seconds(1)) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_TRUE((*stepper)->Idle());
  std::shared_ptr<void> results = (*stepper)->TakeResults(absl::Seconds(2));
  absl::StatusOr<std::vector<GroupStats>> stats = (*stepper)->Statistics();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ((*stats)[0].steps, 0u);
  std::vector<float> after(kThrees);
  ASSERT_EQ(cudaMemcpy(after.data(), d, kThrees * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(after, host);
  std::vector<GpuStepResult> done = (*stepper)->Poll();  // every step, in order
  ASSERT_EQ(done.size(), CudaStepper::kResultSlots);
  for (uint64_t i = 0; i < done.size(); ++i) {
    EXPECT_EQ(done[i].step, i + 1);
    EXPECT_TRUE(done[i].outcomes[0].flags & kFlagSkipped);
  }
  results.reset();
  stepper->reset();
  cudaFree(d);
}

// A group no worker registers (only an import brought it: no chunks, kUnregistered) after the
// registered one: through the cross-node stage (a communicator of one, carrying the first group
// alone), its statistics stay as they were, its outcome flagged, while the other group steps.
TEST(CudaIpcTest, AGroupNoWorkerRegistersKeepsItsStatisticsThroughTheNcclStage) {
  GSTAB_SKIP_WITHOUT_GPU(CudaDeviceCount() > 0);
  void* d = DeviceThrees();
  ASSERT_NE(d, nullptr);
  absl::StatusOr<ChunkTable> table = ChunkTable::Create({Chunk{d, kThrees, DType::kFloat32, 0}}, 2);
  ASSERT_TRUE(table.ok()) << table.status();
  GpuJobSpec spec;
  spec.job = "imported-job";
  spec.modes = {kAddAndTake, kUnregistered};
  spec.cross_node_groups = 1;
  spec.nccl_one_rank = true;
  std::vector<GroupStats> start(2);
  start[1].t = 77;
  start[1].m = 2.0;
  auto stepper = CudaStepper::Create(0, *table, start, spec);
  ASSERT_TRUE(stepper.ok()) << stepper.status();
  for (uint64_t step = 1; step <= 3; ++step) {
    ASSERT_TRUE((*stepper)->Enqueue(step, RuleParams{}, 0, absl::InfiniteFuture()).ok()) << step;
  }
  absl::StatusOr<std::vector<GroupStats>> stats = (*stepper)->Statistics();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ((*stats)[0].steps, 3u);
  EXPECT_EQ(std::memcmp(&(*stats)[1], &start[1], sizeof(GroupStats)), 0);
  std::vector<GpuStepResult> done = (*stepper)->Poll();
  ASSERT_FALSE(done.empty());
  EXPECT_EQ(done.back().outcomes[1].flags, kFlagUnregistered);
  EXPECT_TRUE(done.back().outcomes[0].flags & kFlagAccepted);
  stepper->reset();
  cudaFree(d);
}

// While the worker's host is kResultSlots steps ahead of its GPU, every result slot holds a step
// not finished yet: the newest step that did finish stays the snapshot (GetStats, metrics and
// checkpoints read it), rather than none.
TEST(CudaIpcTest, TheNewestFinishedStepStaysTheSnapshotWhileEverySlotWaits) {
  GSTAB_SKIP_WITHOUT_GPU(CudaDeviceCount() > 0);
  void* d = DeviceThrees();
  ASSERT_NE(d, nullptr);
  auto stepper = StepperOver(d, "ahead-job", /*nccl=*/false);
  ASSERT_TRUE(stepper.ok()) << stepper.status();
  ASSERT_TRUE((*stepper)->Enqueue(1, RuleParams{}, 0, absl::InfiniteFuture()).ok());  // ready now
  std::optional<GpuSnapshot> snapshot;
  for (const absl::Time start = absl::Now(); !(snapshot = (*stepper)->Snapshot()).has_value() &&
                                             absl::Now() - start < absl::Seconds(10);) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_TRUE(snapshot.has_value()) << "step 1 did not finish";
  EXPECT_EQ(snapshot->step, 1u);
  // Steps whose ready word is never written, one for each slot: the last reuses step 1's.
  for (uint32_t step = 2; step <= 1 + CudaStepper::kResultSlots; ++step) {
    ASSERT_TRUE((*stepper)->Enqueue(step, RuleParams{}, step, absl::InfiniteFuture()).ok());
  }
  snapshot = (*stepper)->Snapshot();
  ASSERT_TRUE(snapshot.has_value()) << "no snapshot while every slot holds a waiting step";
  EXPECT_EQ(snapshot->step, 1u);
  ASSERT_EQ(snapshot->stats.size(), 1u);
  EXPECT_EQ(snapshot->stats[0].steps, 1u);
  (*stepper)->Release();
  const absl::Time released = absl::Now();
  while (!(*stepper)->Idle() && absl::Now() - released < absl::Seconds(2)) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  std::shared_ptr<void> results = (*stepper)->TakeResults(absl::Seconds(2));
  results.reset();
  stepper->reset();
  cudaFree(d);
}

TEST(CudaIpcTest, StepsOfAGoneWorkerAreReleasedAndChangeNothing) {
  GSTAB_SKIP_WITHOUT_GPU(CudaDeviceCount() > 0);
  GoneWorkerStepsChangeNothing(/*nccl=*/false);
  GoneWorkerStepsChangeNothing(/*nccl=*/true);
}

// A node that never joins the NCCL communicator: the step fails within the deadline with a
// message naming the job and node, and the communicator stays failed (one GPU suffices: only
// rank 0 of 2 exists).
TEST(NcclCommTest, AMissingNodeFailsTheStepWithinTheDeadline) {
  GSTAB_SKIP_WITHOUT_GPU(CudaDeviceCount() > 0);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  void* d;
  ASSERT_EQ(cudaMalloc(&d, 4096), cudaSuccess);
  ChunkTable table = *ChunkTable::Create({Chunk{d, 1024, DType::kFloat32, 0}}, 1);
  absl::StatusOr<std::string> id = NcclComm::NewUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  GpuJobSpec spec;
  spec.job = "lonely-job";
  spec.modes = {0};
  spec.nccl = NcclRendezvous{*id, 0, 2, absl::Seconds(2)};
  auto stepper = CudaStepper::Create(0, table, std::vector<GroupStats>(1), spec);
  ASSERT_TRUE(stepper.ok()) << stepper.status();
  const absl::Time start = absl::Now();
  absl::Status s = (*stepper)->Enqueue(1, RuleParams{}, 0, absl::InfiniteFuture());
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_NE(s.message().find("job 'lonely-job' rank 0 of 2"), std::string::npos) << s;
  EXPECT_LT(took, absl::Seconds(10));
  std::cout << "missing node detected after " << took << ": " << s << "\n";
  absl::Status again = (*stepper)->Enqueue(2, RuleParams{}, 0, absl::InfiniteFuture());
  EXPECT_FALSE(again.ok());
  stepper->reset();  // closing a failed pipeline does not hang
  // The abort runs in the background; it ends (before the process exits, too).
  EXPECT_TRUE(FlushDeviceReleases(absl::Seconds(10)));
  cudaFree(d);
}

}  // namespace
}  // namespace gstab
