// An import into a job on one GPU while the worker steps: it waits for the step queued there,
// holding the job's next steps meanwhile, for a bounded time.
#include <atomic>
#include <set>
#include <string>
#include <thread>
#include <utility>

#include "gtest/gtest.h"
#include "server/job.h"
#include "tests/server/fake_gpu.h"
#include "tests/server/job_a_state.h"

namespace gstab {
namespace {

// Steps 1 to 3 of `one`'s job, then its state edited to import: 77 accepted steps, at step 50.
void StepThenEditState(OneGpuJob* one, v1::JobState* state) {
  ASSERT_TRUE(one->registered.ok()) << one->registered;
  v1::StepResponse response;
  for (uint64_t step = 1; step <= 3; ++step) {
    ASSERT_TRUE(one->job.Step(0, step, absl::Seconds(1), &response, NextReady()).ok());
  }
  *state = one->job.ExportState();
  state->mutable_groups(0)->set_t(77);
  state->set_last_step(50);
}

// Checkpoints of `one`'s job while its GPU runs the step just queued, then once it has finished:
// the accepted steps (t) and the step each is at.
void ExpectExports(OneGpuJob* one, std::pair<uint64_t, uint64_t> during,
                   std::pair<uint64_t, uint64_t> after) {
  one->gpu.busy = true;
  const v1::JobState running = one->job.ExportState();
  EXPECT_EQ(running.groups(0).t(), during.first);
  EXPECT_EQ(running.last_step(), during.second);
  one->gpu.busy = false;
  const v1::JobState finished = one->job.ExportState();
  EXPECT_EQ(finished.groups(0).t(), after.first);
  EXPECT_EQ(finished.last_step(), after.second);
}

TEST(JobGpuImportTest, AnImportWaitsForTheQueuedStepAndTheNextStepWaitsForTheImport) {
  OneGpuJob one;
  v1::JobState state;
  ASSERT_NO_FATAL_FAILURE(StepThenEditState(&one, &state));

  // Step 3 is still queued (held at its worker's ready word, say): the import waits for it.
  one.gpu.busy = true;
  const int checks_before = one.gpu.idle_checks.load();
  std::atomic<bool> imported{false};
  absl::Status import_status;
  std::thread importer([&] {
    import_status = one.job.ImportState(state, false);
    imported = true;
  });
  // Waiting: it has seen the GPU busy and looked again.
  while (one.gpu.idle_checks.load() < checks_before + 2) absl::SleepFor(absl::Milliseconds(1));
  // The worker's next step arrives meanwhile: it waits for the import, not the other way.
  std::atomic<bool> stepped{false};
  absl::Status step_status;
  std::thread stepper([&] {
    v1::StepResponse r;
    step_status = one.job.Step(0, 51, absl::Seconds(1), &r, NextReady());
    stepped = true;
  });
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_FALSE(imported.load());
  EXPECT_FALSE(stepped.load());
  // Neither holds up the job's other callers.
  v1::GetStatsResponse stats;
  one.job.GetStats(&stats);
  EXPECT_EQ(stats.groups_size(), 1);

  one.gpu.busy = false;  // step 3 finishes
  importer.join();
  stepper.join();
  ASSERT_TRUE(import_status.ok()) << import_status;
  ASSERT_TRUE(step_status.ok()) << step_status;
  // Step 51 ran on the imported statistics: 77 accepted steps, then its own.
  const v1::JobState after = one.job.ExportState();
  EXPECT_EQ(after.groups(0).t(), 78u);
  EXPECT_EQ(after.last_step(), 51u);
}

TEST(JobGpuImportTest, AnImportWhoseWaitRunsOutChangesNothingAndStepsGoOn) {
  OneGpuJob one;
  ASSERT_TRUE(one.registered.ok()) << one.registered;
  v1::StepResponse response;
  ASSERT_TRUE(one.job.Step(0, 1, absl::Seconds(1), &response, NextReady()).ok());
  v1::JobState state = one.job.ExportState();
  state.mutable_groups(0)->set_t(77);

  one.gpu.busy = true;  // a worker that stopped before its ready write, say
  absl::Status refused = one.job.ImportState(state, false, absl::Milliseconds(300));
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("still queued on its GPU after 300ms"), std::string::npos)
      << refused;
  // Steps are no longer held: the next is taken at once.
  ASSERT_TRUE(one.job.Step(0, 2, absl::Seconds(1), &response, NextReady()).ok());

  // An import refused whatever the steps do is refused at once, for what it is.
  state.mutable_config()->mutable_stabilize()->set_beta1(0.5);
  // (Had it waited for the queued step first, it would be refused for that, after 1m.)
  absl::Status betas = one.job.ImportState(state, true, absl::Seconds(60));
  EXPECT_EQ(betas.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(betas.message().find("beta1, beta2 and bias_correction"), std::string::npos) << betas;
  one.gpu.busy = false;
  EXPECT_EQ(one.job.ExportState().groups(0).t(), 2u);
}

// What GetStats and checkpoints read while a step runs on the GPU is the newest finished step's
// copy: after an import, the imported statistics, until a step enqueued since finishes.
TEST(JobGpuImportTest, ReadsAfterAnImportGiveTheImportedStateUntilALaterStepFinishes) {
  OneGpuJob one;
  v1::JobState state;
  ASSERT_NO_FATAL_FAILURE(StepThenEditState(&one, &state));
  v1::StepResponse response;
  ASSERT_TRUE(one.job.ImportState(state, false).ok());
  v1::GetStatsResponse stats;
  one.job.GetStats(&stats);
  EXPECT_EQ(stats.groups(0).accepted_steps(), 77u);
  EXPECT_EQ(stats.last_step(), 50u);

  // Step 51 runs: a checkpoint meanwhile is the imported state, not a step before it.
  ASSERT_TRUE(one.job.Step(0, 51, absl::Seconds(1), &response, NextReady()).ok());
  ExpectExports(&one, {77, 50}, {78, 51});
}

// A generation's first step, still running: a checkpoint then is at the step the generation
// started from, with its statistics (not at the step queued, with the statistics before it).
TEST(JobGpuImportTest, ReadsDuringAGenerationsFirstStepGiveTheStepItStartedFrom) {
  OneGpuJob one;
  ASSERT_TRUE(one.registered.ok()) << one.registered;
  v1::StepResponse response;
  for (uint64_t step = 1; step <= 3; ++step) {
    ASSERT_TRUE(one.job.Step(0, step, absl::Seconds(1), &response, NextReady()).ok());
  }
  one.job.RemoveWorker(0);  // the generation ends; the worker registers again
  ASSERT_TRUE(one.worker.Register(&one.job).ok());
  ASSERT_TRUE(one.job.Step(0, 4, absl::Seconds(1), &response, NextReady()).ok());
  ExpectExports(&one, {3, 3}, {4, 4});
}

// A registration refused after it put the groups of a job with no worker registered in its
// order (server/job.cc, Register) leaves them as they were, statistics included: here a
// cuda_ipc registration on a job without a CUDA pipeline, refused at the pipeline's making.
TEST(JobGpuImportTest, ARefusedRegistrationLeavesTheGroupsInTheirOrder) {
  Job job("no-gpu", RuleParams{}, 1, nullptr);
  v1::JobState state = testing::JobA(5);
  state.mutable_groups(0)->set_name("v");
  state.mutable_groups(0)->set_t(3);
  v1::GroupState* w = state.add_groups();
  w->set_name("w");
  w->set_t(4);
  ASSERT_TRUE(job.ImportState(state, false).ok());
  FakeCudaWorker worker;  // its group "w" first: the job's order would be w, v
  absl::Status s = worker.Register(&job);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  v1::JobState after = job.ExportState();
  ASSERT_EQ(after.groups_size(), 2);
  EXPECT_EQ(after.groups(0).name(), "v");
  EXPECT_EQ(after.groups(0).t(), 3u);
  EXPECT_EQ(after.groups(1).name(), "w");
  EXPECT_EQ(after.groups(1).t(), 4u);
}

// A refused GPU registration after the job's betas changed (its statistics not re-expressed for
// them yet, as they are at the next use) leaves statistics that match the betas they are taken
// for: the same as a job that was never offered the registration. The pipeline's making fails
// here, after the registration re-expressed them.
TEST(JobGpuImportTest, ARefusedRegistrationLeavesTheStatisticsOfTheirConfiguration) {
  auto run = [](bool offered) {
    GpuBackend failing;
    failing.make_pipeline = [](int, const ChunkTable&, const std::vector<GroupStats>&,
                               const GpuJobSpec&) -> absl::StatusOr<std::unique_ptr<GpuPipeline>> {
      return absl::ResourceExhaustedError("out of device memory");
    };
    failing.new_nccl_id = [] { return absl::StatusOr<std::string>(Id(1)); };
    Job job("betas", RuleParams{}, 1, nullptr, nullptr, failing);
    // "v" first: the registration's "w" reorders them.
    const v1::JobState state = testing::JobAWithGroups(5, {"v", "w"}, 4);
    EXPECT_TRUE(job.ImportState(state, false).ok());
    v1::PolicyConfig betas;
    betas.mutable_stabilize()->set_beta1(0.9);
    betas.mutable_stabilize()->set_beta2(0.95);
    v1::UpdateConfigResponse response;
    EXPECT_TRUE(job.UpdateConfig(betas, &response).ok());
    if (offered) {
      FakeCudaWorker worker;
      absl::Status s = worker.Register(&job);
      EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
    }
    return job.ExportState();
  };
  const v1::JobState refused = run(true), never = run(false);
  ASSERT_EQ(refused.groups_size(), 2);
  for (int g = 0; g < 2; ++g) {
    EXPECT_EQ(refused.groups(g).name(), never.groups(g).name());
    EXPECT_DOUBLE_EQ(refused.groups(g).m(), never.groups(g).m()) << never.groups(g).name();
    EXPECT_DOUBLE_EQ(refused.groups(g).v(), never.groups(g).v()) << never.groups(g).name();
  }
  EXPECT_NE(never.groups(0).m(), 2.0) << "the betas' change did not re-express them";
}

// A group only an import brought (saved under a name no worker registers now: a model wrapped
// since, say) keeps its statistics on the GPU, as on the CPU: it comes after the registered
// ones, takes no part in the cross-node stage, and is not among the steps' groups.
TEST(JobGpuImportTest, AGroupOnlyAnImportBroughtKeepsItsStatistics) {
  int live = 0;
  GpuJobSpec seen;
  Job job("renamed", RuleParams{}, 1, nullptr, nullptr, LaggingBackend(&live, 0, &seen));
  // "old" first: the registration's "w" reorders them.
  const v1::JobState state = testing::JobAWithGroups(50, {"old", "w"}, 77);
  ASSERT_TRUE(job.ImportState(state, false).ok());
  FakeCudaWorker worker;
  ASSERT_TRUE(worker.Register(&job).ok());
  ASSERT_EQ(seen.modes.size(), 2u);
  EXPECT_EQ(seen.modes[1], kUnregistered);
  EXPECT_EQ(seen.cross_node_groups.value_or(0), 1u);  // "w" alone
  std::set<std::string> reported;
  for (uint64_t step = 51; step <= 54; ++step) {
    v1::StepResponse response;
    ASSERT_TRUE(job.Step(0, step, absl::Seconds(1), &response, NextReady()).ok());
    for (const v1::GroupResult& g : response.groups()) reported.insert(g.group());
  }
  EXPECT_EQ(reported, std::set<std::string>{"w"});
  const v1::JobState after = job.ExportState();
  ASSERT_EQ(after.groups_size(), 2);
  EXPECT_EQ(after.groups(0).name(), "w");
  EXPECT_EQ(after.groups(0).t(), 81u);
  EXPECT_EQ(after.groups(1).name(), "old");
  EXPECT_EQ(after.groups(1).t(), 77u);
  EXPECT_DOUBLE_EQ(after.groups(1).m(), 2.0);
  // Not stepped at all: not even as steps of a zero norm.
  EXPECT_EQ(after.groups(1).steps(), 0u) << "the GPU stepped a group no worker registers";
  EXPECT_EQ(after.groups(1).zero_norm_steps(), 0u);
}

// Nor one a worker registered before and registers no more (its model's parameters renamed, or
// frozen): as on the CPU backend, its statistics stay as they were, not stepped as zero norms.
TEST(JobGpuImportTest, AGroupRegisteredBeforeAndNoMoreKeepsItsStatistics) {
  int live = 0;
  GpuJobSpec seen;
  Job job("renamed-later", RuleParams{}, 1, nullptr, nullptr, LaggingBackend(&live, 0, &seen));
  FakeCudaWorker before;  // group "w"
  ASSERT_TRUE(before.Register(&job).ok());
  for (uint64_t step = 1; step <= 2; ++step) {
    v1::StepResponse response;
    ASSERT_TRUE(job.Step(0, step, absl::Seconds(1), &response, NextReady()).ok());
  }
  FakeCudaWorker after;
  after.tensor = "v";
  ASSERT_TRUE(after.Register(&job).ok());
  ASSERT_EQ(seen.modes.size(), 2u);
  EXPECT_EQ(seen.modes[0], kUnregistered);  // "w"
  for (uint64_t step = 3; step <= 5; ++step) {
    v1::StepResponse response;
    ASSERT_TRUE(job.Step(0, step, absl::Seconds(1), &response, NextReady()).ok());
    for (const v1::GroupResult& g : response.groups()) EXPECT_EQ(g.group(), "v");
  }
  const v1::JobState state = job.ExportState();
  ASSERT_EQ(state.groups_size(), 2);
  EXPECT_EQ(state.groups(0).name(), "w");
  EXPECT_EQ(state.groups(0).steps(), 2u) << "the GPU stepped a group no longer registered";
  EXPECT_EQ(state.groups(0).zero_norm_steps(), 0u);
  EXPECT_EQ(state.groups(1).name(), "v");
  EXPECT_EQ(state.groups(1).steps(), 3u);
}

}  // namespace
}  // namespace gstab
