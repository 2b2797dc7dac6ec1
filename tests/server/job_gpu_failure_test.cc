// How a job's GPU generation with several local GPUs ends when one of them fails: a worker that
// dies with a step queued, a step that never finishes, a communicator that breaks. Driven through
// the GpuPipeline seam by fake pipelines (tests/server/fake_gpu.h), so it runs without a GPU;
// CudaStepper's side of the same calls is tested on a GPU by cuda_ipc_test.
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "common/done_written.h"
#include "gtest/gtest.h"
#include "server/job.h"
#include "tests/server/fake_gpu.h"

namespace gstab {
namespace {

using Calls = std::vector<std::string>;

// A job of `local_world_size` local GPUs whose workers took step 1 and enqueued step 2.
struct LocalGpus {
  explicit LocalGpus(uint32_t local_world_size = 2)
      : job("pair", RuleParams{}, local_world_size, nullptr, nullptr,
            LaggingBackend(&live, 0, nullptr, &gpu)),
        workers(local_world_size) {
    for (uint32_t rank = 0; rank < local_world_size; ++rank) {
      EXPECT_TRUE(workers[rank].Register(&job, rank, static_cast<int>(rank)).ok());
    }
    for (uint64_t step = 1; step <= 2; ++step) {
      for (uint32_t rank = 0; rank < local_world_size; ++rank) {
        v1::StepResponse r;
        EXPECT_TRUE(job.Step(rank, step, absl::Seconds(1), &r, NextReady()).ok());
      }
    }
  }
  int live = 0;
  FakeGpu gpu;
  Job job;
  std::vector<FakeCudaWorker> workers;
};

// Local rank 1's worker died before its ready write of step 2, so local rank 0's step 2 waits in
// its all-reduce for rank 1. Rank 1's steps are released first: then rank 0's all-reduce meets
// it and finishes, nothing is aborted, every results buffer is freed, and the job's lock is not
// held for a wait per rank.
TEST(JobGpuFailureTest, AGoneWorkersStepsAreReleasedFirstSoItsPeersFinish) {
  LocalGpus t;
  t.gpu.busy = true;
  t.gpu.on_release = [&](uint32_t rank) {
    if (rank == 1) t.gpu.busy = false;
  };
  t.gpu.calls.clear();
  t.job.RemoveWorker(1, /*gone=*/true);
  EXPECT_EQ(t.gpu.calls, (Calls{"release 1", "take idle 0", "take idle 1"}));
  EXPECT_EQ(t.live, 0);
  // The gone worker maps nothing: its results buffer goes. Local rank 0's is kept until it
  // registers again (its worker still maps it).
  EXPECT_TRUE(t.gpu.results[1].expired());
  EXPECT_FALSE(t.gpu.results[0].expired());
  v1::StepResponse r;
  absl::Status again = t.job.Step(0, 3, absl::Seconds(1), &r, NextReady());
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(again.message().find("local rank 1 left"), std::string::npos) << again;
}

// Steps that still do not finish (a peer stalls): the pipelines still busy have their held
// steps released, then every communicator is aborted, each step once for all ranks, so closing
// takes three waits at most whatever the number of local GPUs. A pipeline that the abort does
// not free either is given up on: its results buffer is left to it.
TEST(JobGpuFailureTest, StuckStepsAreReleasedThenAbortedOnceForAllRanks) {
  LocalGpus t(3);
  t.gpu.busy_ranks = {1, 2};
  t.gpu.on_abort = [&](uint32_t rank) {
    if (rank == 1) t.gpu.busy_ranks.erase(1);
  };
  t.gpu.calls.clear();
  const absl::Time start = absl::Now();
  t.job.RemoveWorker(0);
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(t.gpu.calls, (Calls{"release 1", "release 2", "abort 0", "abort 1", "abort 2",
                                "take idle 0", "take idle 1", "take busy 2"}));
  EXPECT_GE(took, absl::Seconds(5.5));  // before the releases, the aborts, and after them
  EXPECT_LT(took, absl::Seconds(15));   // not waits per rank
  EXPECT_EQ(t.live, 0);
  v1::GetStatsResponse stats;
  t.job.GetStats(&stats);
  EXPECT_EQ(stats.groups(0).accepted_steps(), 2u);  // the statistics outlive the generation
}

// A checkpoint does not wait on a job whose lock a closing generation holds (its pipelines'
// waits): ExportStateWithin gives up, so that the daemon saves its other jobs first.
TEST(JobGpuFailureTest, AJobsStateIsNotWaitedForWhileItsGenerationCloses) {
  LocalGpus t;
  t.gpu.busy = true;
  absl::Notification releasing, go_on;
  t.gpu.on_release = [&](uint32_t rank) {
    if (rank != 1) return;
    releasing.Notify();
    go_on.WaitForNotification();
    t.gpu.busy = false;
  };
  std::thread closing([&] { t.job.RemoveWorker(1, /*gone=*/true); });
  releasing.WaitForNotification();
  EXPECT_FALSE(t.job.ExportStateWithin(absl::Milliseconds(50), true).has_value());
  go_on.Notify();
  closing.join();
  std::optional<v1::JobState> state = t.job.ExportStateWithin(absl::Milliseconds(50), true);
  ASSERT_TRUE(state.has_value());
  EXPECT_EQ(state->groups(0).t(), 2u);  // the two steps the generation finished
}

// Local GPUs that stopped at different steps (local rank 1's worker died before its step 3):
// their collectives cannot meet. Every held step is released before any communicator is
// aborted, so that no collective is left queued behind a ready word under an aborted one.
TEST(JobGpuFailureTest, LocalGpusAtDifferentStepsAreReleasedThenAborted) {
  LocalGpus t;
  v1::StepResponse r;
  ASSERT_TRUE(t.job.Step(0, 3, absl::Seconds(1), &r, NextReady()).ok());
  t.gpu.calls.clear();
  t.job.RemoveWorker(1, /*gone=*/true);
  EXPECT_EQ(t.gpu.calls,
            (Calls{"release 1", "release 0", "abort 0", "abort 1", "take idle 0", "take idle 1"}));
  EXPECT_EQ(t.live, 0);
}

// A step whose pipeline finds the local GPUs' communicator broken ends the generation: its
// memory goes, the worker is told that every local worker registers again, and the other local
// workers hear why; after they have, the job steps on from its statistics.
TEST(JobGpuFailureTest, ABrokenCommunicatorEndsTheGeneration) {
  LocalGpus t;
  t.gpu.enqueue_error = absl::UnavailableError(
      "step 3: the check all-reduce of job 'pair' rank 1 of 2 failed: the NCCL communicator was "
      "aborted");  // as CudaStepper's cross-node stage says it
  MarkDoneWritten(&t.gpu.enqueue_error);  // part of the step was queued
  v1::StepResponse r;
  absl::Status broken = t.job.Step(1, 3, absl::Seconds(1), &r, NextReady());
  EXPECT_EQ(broken.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(broken.message().find("local rank 1 of job 'pair': step 3: the check all-reduce"),
            std::string::npos)
      << broken;
  EXPECT_NE(broken.message().find(
                "this ended the job's GPU generation: every local worker registers its buffers "
                "again"),
            std::string::npos)
      << broken;
  EXPECT_TRUE(DoneWritten(broken)) << "the worker's stream would not wait for its done word";
  EXPECT_EQ(t.live, 0);
  absl::Status other = t.job.Step(0, 3, absl::Seconds(1), &r, NextReady());
  EXPECT_EQ(other.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(other.message().find("local rank 1's step 3 failed in the GPU communicator"),
            std::string::npos)
      << other;

  t.gpu.enqueue_error = absl::OkStatus();
  ASSERT_TRUE(t.workers[0].Register(&t.job, 0, 0).ok());
  ASSERT_TRUE(t.workers[1].Register(&t.job, 1, 1).ok());
  EXPECT_TRUE(t.job.Step(0, 3, absl::Seconds(1), &r, NextReady()).ok());
  EXPECT_TRUE(t.job.Step(1, 3, absl::Seconds(1), &r, NextReady()).ok());
  v1::GetStatsResponse stats;
  t.job.GetStats(&stats);
  EXPECT_EQ(stats.groups(0).accepted_steps(), 2u);

  // Other errors end nothing: the generation goes on.
  t.gpu.enqueue_error = absl::InternalError("cudaLaunchKernel: too many resources requested");
  EXPECT_EQ(t.job.Step(0, 4, absl::Seconds(1), &r, NextReady()).code(),
            absl::StatusCode::kInternal);
  EXPECT_EQ(t.live, 2);
  // A communicator that timed out ends it, like one that failed.
  t.gpu.enqueue_error = absl::DeadlineExceededError("joining the NCCL communicator timed out");
  absl::Status late = t.job.Step(0, 4, absl::Seconds(1), &r, NextReady());
  EXPECT_EQ(late.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(late.message().find("local rank 0 of job 'pair': joining"), std::string::npos) << late;
  EXPECT_EQ(t.live, 0);

  // A job of one GPU has no communicator to break: its pipeline's error is passed on as it is.
  int live = 0;
  FakeGpu gpu;
  Job one("one", RuleParams{}, 1, nullptr, nullptr, LaggingBackend(&live, 0, nullptr, &gpu));
  FakeCudaWorker worker;
  ASSERT_TRUE(worker.Register(&one).ok());
  gpu.enqueue_error = absl::UnavailableError("the device is gone");
  EXPECT_EQ(one.Step(0, 1, absl::Seconds(1), &r, NextReady()).message(), "the device is gone");
  MarkDoneWritten(&gpu.enqueue_error);
  EXPECT_TRUE(DoneWritten(one.Step(0, 2, absl::Seconds(1), &r, NextReady())));
  EXPECT_EQ(live, 1);
}

// A CUDA step that reaches gstabd's queue after its worker's call gave up (gstabd stalled past
// the call's deadline) is not enqueued: the client made its stream wait for no done word, so the
// kernels would scale gradients the next backward pass writes. With one GPU the job goes on
// unchanged; with several (whose other GPUs' collectives of the step would wait for it) the
// generation ends, and the workers are told why; a step refused anyway ends nothing.
TEST(JobGpuFailureTest, AStepPastItsCallsDeadlineIsNotEnqueued) {
  const absl::Time gave_up = absl::Now() - absl::Seconds(1);
  v1::StepResponse r;
  OneGpuJob one;
  ASSERT_TRUE(one.registered.ok()) << one.registered;
  ASSERT_TRUE(one.job.Step(0, 1, absl::Seconds(1), &r, NextReady()).ok());
  const absl::Status late = one.job.Step(0, 2, absl::Seconds(1), &r, NextReady(), 0, gave_up);
  EXPECT_EQ(late.code(), absl::StatusCode::kDeadlineExceeded) << late;
  EXPECT_NE(late.message().find("step 2 of job 'gpu-job' local rank 0 came after its worker's call "
                                "gave up (gstabd stalled past the call's deadline); nothing of "
                                "it was enqueued"),
            std::string::npos)
      << late;
  EXPECT_FALSE(DoneWritten(late)) << "nothing queued writes its done word";
  EXPECT_EQ(one.job.ExportState().groups(0).t(), 1u);  // the GPU ran step 1 alone
  EXPECT_EQ(one.job.ExportState().last_step(), 1u);
  EXPECT_EQ(one.live, 1);
  ASSERT_TRUE(one.job.Step(0, 2, absl::Seconds(1), &r, NextReady()).ok()) << "sent again, in time";
  EXPECT_EQ(one.job.ExportState().groups(0).t(), 2u);

  LocalGpus t;
  ASSERT_TRUE(t.job.Step(0, 3, absl::Seconds(1), &r, NextReady()).ok());
  // One refused anyway (here a step already taken) is refused as such, ending nothing.
  EXPECT_EQ(t.job.Step(1, 2, absl::Seconds(1), &r, NextReady(), 0, gave_up).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.live, 2);
  const absl::Status ended = t.job.Step(1, 3, absl::Seconds(1), &r, NextReady(), 0, gave_up);
  EXPECT_EQ(ended.code(), absl::StatusCode::kDeadlineExceeded) << ended;
  EXPECT_NE(ended.message().find("nothing of it was enqueued; this ended the job's GPU "
                                 "generation: every local worker registers its buffers again"),
            std::string::npos)
      << ended;
  EXPECT_EQ(t.live, 0);
  const absl::Status other = t.job.Step(0, 4, absl::Seconds(1), &r, NextReady());
  EXPECT_EQ(other.code(), absl::StatusCode::kFailedPrecondition) << other;
  EXPECT_NE(other.message().find("local rank 1's step 3 came after its worker's call gave up, "
                                 "which ends the job's GPU communicator"),
            std::string::npos)
      << other;
}

// A local rank's refused registration (its client has let go of the earlier one) ends the
// generation: its own steps name the refusal, the other rank's ask it to register again.
TEST(JobGpuFailureTest, ARefusedRegistrationEndsTheGeneration) {
  LocalGpus t;
  t.job.DropRegistration(1, /*session=*/0, absl::InvalidArgumentError("tensor 'w' is bad"));
  EXPECT_EQ(t.live, 0);
  v1::StepResponse r;
  const absl::Status own = t.job.Step(1, 3, absl::Seconds(1), &r, NextReady());
  EXPECT_EQ(own.code(), absl::StatusCode::kFailedPrecondition) << own;
  EXPECT_NE(own.message().find("its last registration was refused (tensor 'w' is bad)"),
            std::string::npos)
      << own;
  const absl::Status other = t.job.Step(0, 3, absl::Seconds(1), &r, NextReady());
  EXPECT_NE(other.message().find("local rank 1's registration was refused, which ends the "
                                 "job's GPU communicator: register the buffers again"),
            std::string::npos)
      << other;
  for (uint32_t rank = 0; rank < 2; ++rank) {
    EXPECT_TRUE(t.workers[rank].Register(&t.job, rank, static_cast<int>(rank)).ok());
  }
  EXPECT_EQ(t.live, 2);
}

}  // namespace
}  // namespace gstab
