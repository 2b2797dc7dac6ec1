// How the CUDA path's finished steps reach the metrics and events (Job's step callback): each
// once, in order, untimed; those the GPU finishes after the Step that queued them without
// waiting for the worker's next Step; a clean detach's last ones; a dead worker's voided ones
// never.
#include <cstdint>
#include <optional>
#include <vector>

#include "gtest/gtest.h"
#include "server/job.h"
#include "tests/server/fake_gpu.h"

namespace gstab {
namespace {

// A job of one local GPU on a fake GPU whose reports (their results steps) are recorded.
struct ReportedJob {
  ReportedJob() { registered = worker.Register(&job); }
  int live = 0;
  FakeGpu gpu;
  std::vector<uint64_t> reported;
  bool timed = false;
  double mean = 0;
  Job job{"gpu-job",
          RuleParams{},
          1,
          nullptr,
          [this](const v1::StepResponse& r, std::optional<absl::Duration> duration) {
            reported.push_back(r.results_step());
            timed |= duration.has_value();
            mean = r.groups(0).norm_mean();
          },
          LaggingBackend(&live, 0, nullptr, &gpu)};
  FakeCudaWorker worker;
  absl::Status registered;
  v1::StepResponse response;

  absl::Status Step(uint64_t step) {
    return job.Step(0, step, absl::Seconds(1), &response, kReady);
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

}  // namespace
}  // namespace gstab
