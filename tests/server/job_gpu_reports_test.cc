// How the CUDA path's finished steps reach the metrics and events (Job's step callback): each
// once, in order, untimed; those the GPU finishes after the Step that queued them without
// waiting for the worker's next Step; a clean detach's last ones, and those finished before a
// generation ended otherwise; a dead worker's voided ones never; a step the GPU voided, as one
// that applied nothing.
#include <cstdint>
#include <optional>
#include <vector>

#include "gtest/gtest.h"
#include "server/job.h"
#include "tests/server/fake_gpu.h"

namespace gstab {
namespace {

// A job of one local GPU on a fake GPU whose reports (their results steps) are recorded;
// `extra_flags` as LaggingPipeline's.
struct ReportedJob {
  explicit ReportedJob(uint32_t extra_flags = 0)
      : job(
            "gpu-job", RuleParams{}, 1, nullptr,
            [this](const v1::StepResponse& r, std::optional<absl::Duration> duration) {
              reported.push_back(r.results_step());
              timed |= duration.has_value();
              mean = r.groups(0).norm_mean();
              last = r;
            },
            LaggingBackend(&live, extra_flags, nullptr, &gpu)) {
    registered = worker.Register(&job);
  }
  int live = 0;
  FakeGpu gpu;
  std::vector<uint64_t> reported;
  bool timed = false;
  double mean = 0;
  v1::StepResponse last;  // the newest report
  Job job;
  FakeCudaWorker worker;
  absl::Status registered;
  v1::StepResponse response;

  absl::Status Step(uint64_t step) {
    response.Clear();  // as gstabd's service hands each Step a new one
    return job.Step(0, step, absl::Seconds(1), &response, NextReady());
  }
};

// Steps that finish together on the GPU (it ran behind) each reach the metrics and events once,
// in order, with their statistics; the answer carries the newest. They are not timed.
TEST(JobGpuReportsTest, EveryFinishedStepIsReportedOnceInOrder) {
  ReportedJob t;
  ASSERT_TRUE(t.registered.ok()) << t.registered;
  t.gpu.hold_results = true;
  for (uint64_t step = 1; step <= 3; ++step) ASSERT_TRUE(t.Step(step).ok());
  EXPECT_TRUE(t.reported.empty());
  t.gpu.hold_results = false;
  ASSERT_TRUE(t.Step(4).ok());
  EXPECT_EQ(t.reported, (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(t.response.results_step(), 3u);
  EXPECT_FALSE(t.timed);
  EXPECT_GT(t.mean, 0) << "the statistics after the step were not reported";
}

// A step the GPU finishes after its Step answered is reported by gstabd's housekeeping, not
// at the worker's next Step (a run's last step has none): once, and never again by that Step.
TEST(JobGpuReportsTest, AStepFinishedAfterItsStepIsReportedWithoutTheNext) {
  ReportedJob t;
  ASSERT_TRUE(t.registered.ok()) << t.registered;
  ASSERT_TRUE(t.Step(1).ok());
  ASSERT_TRUE(t.Step(2).ok());
  EXPECT_EQ(t.reported, (std::vector<uint64_t>{1}));  // step 2 is still running
  t.job.ReportFinishedGpuSteps();
  EXPECT_EQ(t.reported, (std::vector<uint64_t>{1}));
  t.gpu.caught_up = true;
  t.job.ReportFinishedGpuSteps();
  EXPECT_EQ(t.reported, (std::vector<uint64_t>{1, 2}));
  t.job.ReportFinishedGpuSteps();
  t.gpu.caught_up = false;
  ASSERT_TRUE(t.Step(3).ok());
  EXPECT_EQ(t.reported, (std::vector<uint64_t>{1, 2}));
  // Its answer still carries the newest finished step, which the housekeeping took.
  EXPECT_EQ(t.response.step(), 3u);
  EXPECT_EQ(t.response.results_step(), 2u);
  ASSERT_EQ(t.response.groups_size(), 1);
  EXPECT_GT(t.response.groups(0).norm(), 0);
  EXPECT_FALSE(t.timed);
}

// A worker that detaches cleanly has its last steps reported as its GPU pipeline closes; a
// worker that is gone (its lease expired) has those that finished reported, and its queued
// ones, voided, not.
TEST(JobGpuReportsTest, ARemovedWorkersFinishedStepsAreReportedAndItsVoidedOnesAreNot) {
  ReportedJob clean;
  ASSERT_TRUE(clean.registered.ok()) << clean.registered;
  ASSERT_TRUE(clean.Step(1).ok());
  ASSERT_TRUE(clean.Step(2).ok());
  clean.gpu.caught_up = true;  // the GPU finishes as the pipeline closes
  clean.job.RemoveWorker(0, /*gone=*/false);
  EXPECT_EQ(clean.reported, (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(clean.live, 0);

  ReportedJob gone;
  ASSERT_TRUE(gone.registered.ok()) << gone.registered;
  ASSERT_TRUE(gone.Step(1).ok());
  ASSERT_TRUE(gone.Step(2).ok());
  ASSERT_TRUE(gone.Step(3).ok());
  EXPECT_EQ(gone.reported, (std::vector<uint64_t>{1, 2}));
  gone.job.RemoveWorker(0, /*gone=*/true);  // step 3 still queued: released
  EXPECT_EQ(gone.reported, (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(gone.live, 0);

  ReportedJob finished;  // gone after its GPU finished every step
  ASSERT_TRUE(finished.registered.ok()) << finished.registered;
  ASSERT_TRUE(finished.Step(1).ok());
  ASSERT_TRUE(finished.Step(2).ok());
  finished.gpu.caught_up = true;
  finished.job.RemoveWorker(0, /*gone=*/true);
  EXPECT_EQ(finished.reported, (std::vector<uint64_t>{1, 2}));
}

// Steps that finished before their generation ended other than by a worker's leaving (here a
// registration again; a communicator failure and a new rendezvous end it the same way) are
// reported: by the housekeeping, or by the primary's next Step, before its own.
TEST(JobGpuReportsTest, StepsFinishedBeforeTheGenerationEndedAreReported) {
  ReportedJob housekept;
  ASSERT_TRUE(housekept.registered.ok()) << housekept.registered;
  ASSERT_TRUE(housekept.Step(1).ok());
  ASSERT_TRUE(housekept.Step(2).ok());
  housekept.gpu.caught_up = true;  // step 2 finishes as the generation ends
  ASSERT_TRUE(housekept.worker.Register(&housekept.job).ok());
  EXPECT_EQ(housekept.reported, (std::vector<uint64_t>{1}));  // not under the job's lock
  housekept.job.ReportFinishedGpuSteps();
  EXPECT_EQ(housekept.reported, (std::vector<uint64_t>{1, 2}));
  housekept.job.ReportFinishedGpuSteps();
  EXPECT_EQ(housekept.reported, (std::vector<uint64_t>{1, 2}));

  ReportedJob stepped;
  ASSERT_TRUE(stepped.registered.ok()) << stepped.registered;
  ASSERT_TRUE(stepped.Step(1).ok());
  ASSERT_TRUE(stepped.Step(2).ok());
  stepped.gpu.caught_up = true;
  ASSERT_TRUE(stepped.worker.Register(&stepped.job).ok());
  stepped.gpu.caught_up = false;
  ASSERT_TRUE(stepped.Step(3).ok());  // the new generation's first: reported with it
  EXPECT_EQ(stepped.reported, (std::vector<uint64_t>{1, 2}));
  // Its answer has no results yet: the old generation's are not its pipeline's.
  EXPECT_EQ(stepped.response.results_step(), 0u);
  EXPECT_EQ(stepped.response.groups_size(), 0);
  ASSERT_TRUE(stepped.Step(4).ok());
  EXPECT_EQ(stepped.reported, (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(stepped.response.results_step(), 3u);
}

// A step the GPU voided (a node or local GPU lost, the all-reduce aborted) is reported as one
// that applied nothing, saying why: the metrics and events then show no non-finite gradient.
TEST(JobGpuReportsTest, AVoidedStepIsReportedAsNotApplied) {
  ReportedJob t(kFlagVoided);
  ASSERT_TRUE(t.registered.ok()) << t.registered;
  ASSERT_TRUE(t.Step(1).ok());
  ASSERT_TRUE(t.Step(2).ok());
  ASSERT_EQ(t.reported, (std::vector<uint64_t>{1}));
  EXPECT_TRUE(t.last.skip());
  EXPECT_NE(t.last.not_applied().find("voided on the GPU"), std::string::npos)
      << t.last.not_applied();
  EXPECT_EQ(t.response.not_applied(), t.last.not_applied());  // the worker's answer says it too
  for (float g : t.worker.grads) ASSERT_EQ(g, 0.5f);          // nothing was scaled

  ReportedJob ran;
  ASSERT_TRUE(ran.registered.ok()) << ran.registered;
  ASSERT_TRUE(ran.Step(1).ok());
  ASSERT_TRUE(ran.Step(2).ok());
  EXPECT_TRUE(ran.last.not_applied().empty()) << ran.last.not_applied();
}

}  // namespace
}  // namespace gstab
