// A job's statistics across configuration changes and state moves: the stabilizer's EMAs are
// always expressed for the configuration they are written or used with (RescaleStabilizerEmas).
#include <limits>
#include <thread>
#include <vector>

#include "core/config.h"
#include "core/rule.h"
#include "gtest/gtest.h"
#include "server/job.h"
#include "server/state_codec.h"

namespace gstab {
namespace {

RuleParams Betas(double beta1, double beta2) {
  RuleParams p;
  p.beta1 = beta1;
  p.beta2 = beta2;
  return p;
}

GroupStats Warm() {
  GroupStats s;
  s.t = 5;
  s.m = 0.4;
  s.v = 0.05;
  return s;
}

v1::JobState StateWith(const RuleParams& config, const GroupStats& stats) {
  v1::JobState state;
  state.set_format_version(1);
  state.set_job("j");
  state.set_last_step(5);
  *state.mutable_config() = EffectiveConfig(config);
  *state.add_groups() = GroupStateToProto("g", stats);
  return state;
}

// A checkpoint saved with other betas than the job now has (it attached with another
// configuration) is re-expressed for the job's; one imported with its configuration is not.
TEST(JobStateTest, ImportedStatisticsAreExpressedForTheJobsConfiguration) {
  const RuleParams saved = Betas(0.9, 0.99);
  const RuleParams job_config = Betas(0.6, 0.999);
  Job job("j", job_config, 1, nullptr);
  ASSERT_TRUE(job.ImportState(StateWith(saved, Warm()), /*with_config=*/false).ok());
  GroupStats expected = Warm();
  RescaleStabilizerEmas(saved, job_config, &expected);
  v1::JobState exported = job.ExportState();
  EXPECT_EQ(exported.groups(0).m(), expected.m);
  EXPECT_EQ(exported.groups(0).v(), expected.v);

  Job other("j", job_config, 1, nullptr);
  ASSERT_TRUE(other.ImportState(StateWith(saved, Warm()), /*with_config=*/true).ok());
  EXPECT_EQ(other.ExportState().groups(0).m(), Warm().m);
  EXPECT_EQ(other.params().beta1, 0.9);
}

// A state whose configuration this gstabd refuses (a newer release's setting, a hand edit),
// imported without it: its statistics are still re-expressed from its betas.
TEST(JobStateTest, AStateOfARefusedConfigurationIsReExpressedFromItsBetas) {
  const RuleParams saved = Betas(0.9, 0.99);
  const RuleParams job_config = Betas(0.6, 0.999);
  v1::JobState state = StateWith(saved, Warm());
  state.mutable_config()->mutable_clip()->set_max_norm(-1);  // refused
  ASSERT_FALSE(ResolveConfig(state.config()).ok());
  Job job("j", job_config, 1, nullptr);
  // With it, refused, saying the configuration is the state's and the way in without it.
  const absl::Status with_it = job.ImportState(state, /*with_config=*/true);
  EXPECT_EQ(with_it.code(), absl::StatusCode::kInvalidArgument) << with_it;
  EXPECT_NE(with_it.message().find("the imported state's configuration: config field "
                                   "clip.max_norm = -1"),
            std::string::npos)
      << with_it;
  EXPECT_NE(with_it.message().find("keep_config"), std::string::npos) << with_it;
  ASSERT_TRUE(job.ImportState(state, /*with_config=*/false).ok());
  GroupStats expected = Warm();
  RescaleStabilizerEmas(saved, job_config, &expected);
  EXPECT_EQ(job.ExportState().groups(0).m(), expected.m);
  EXPECT_EQ(job.ExportState().groups(0).v(), expected.v);
  // Betas an older gstabd took and this one refuses (beta1 above sqrt(beta2)) are read too.
  const RuleParams older = Betas(0.95, 0.9);
  ASSERT_FALSE(ResolveConfig(EffectiveConfig(older)).ok());
  Job other("j", job_config, 1, nullptr);
  ASSERT_TRUE(other.ImportState(StateWith(older, Warm()), /*with_config=*/false).ok());
  GroupStats from_older = Warm();
  RescaleStabilizerEmas(older, job_config, &from_older);
  EXPECT_EQ(other.ExportState().groups(0).m(), from_older.m);
}

// New betas count from the next step, but what the job shows and exports before it is already
// expressed for them (an export then imported elsewhere must not be re-expressed twice or never).
TEST(JobStateTest, AnExportRightAfterNewBetasIsExpressedForThem) {
  const RuleParams before = Betas(0.6, 0.999);
  Job job("j", before, 1, nullptr);
  ASSERT_TRUE(job.ImportState(StateWith(before, Warm()), /*with_config=*/true).ok());
  v1::PolicyConfig update;
  update.mutable_stabilize()->set_beta1(0.9);
  update.mutable_stabilize()->set_beta2(0.99);
  v1::UpdateConfigResponse response;
  ASSERT_TRUE(job.UpdateConfig(update, &response).ok());
  GroupStats expected = Warm();
  RescaleStabilizerEmas(before, job.params(), &expected);
  EXPECT_EQ(job.ExportState().groups(0).m(), expected.m);
  v1::GetStatsResponse stats;
  job.GetStats(&stats);
  EXPECT_EQ(stats.groups(0).v(), expected.v);
  // Moved to another job with its configuration: taken as it is.
  Job moved("j", before, 1, nullptr);
  ASSERT_TRUE(moved.ImportState(job.ExportState(), /*with_config=*/true).ok());
  EXPECT_EQ(moved.ExportState().groups(0).m(), expected.m);
}

// A restored job's configuration versions go on from its checkpoint's; a history out of order
// (not one gstabd wrote) is ignored; a checkpoint whose last version is not the configuration
// the job now has gets a new version for it.
TEST(JobStateTest, ARestoredJobsConfigurationVersionsGoOn) {
  const RuleParams clip = [] {
    RuleParams p;
    p.policy = PolicyKind::kClip;
    return p;
  }();
  google::protobuf::RepeatedPtrField<v1::ConfigChange> history;
  for (uint64_t version : {4, 5}) {
    v1::ConfigChange* change = history.Add();
    change->set_version(version);
    change->set_effective_step(version * 10);
    *change->mutable_config() = EffectiveConfig(clip);
  }
  Job same("j", clip, 1, nullptr);
  same.RestoreConfigHistory(history);
  v1::GetStatsResponse stats;
  same.GetStats(&stats);
  ASSERT_EQ(stats.config_history_size(), 2);
  EXPECT_EQ(stats.config_history(1).version(), 5u);
  EXPECT_EQ(stats.config_history(1).effective_step(), 50u);

  Job other("j", RuleParams{}, 1, nullptr);  // read otherwise: a new version
  other.RestoreConfigHistory(history);
  stats.Clear();
  other.GetStats(&stats);
  ASSERT_EQ(stats.config_history_size(), 3);
  EXPECT_EQ(stats.config_history(2).version(), 6u);

  history.Mutable(1)->set_version(3);  // out of order
  Job unordered("j", clip, 1, nullptr);
  unordered.RestoreConfigHistory(history);
  stats.Clear();
  unordered.GetStats(&stats);
  ASSERT_EQ(stats.config_history_size(), 1);
  EXPECT_EQ(stats.config_history(0).version(), 1u);
}

// One float32 tensor "w" in host memory, as MapRegistration would give it.
MappedRegistration HostRegistration(std::vector<float>* grads) {
  MappedRegistration m;
  PlannedBuffer buffer;
  buffer.shm_name = "/gstab-test";
  buffer.size = grads->size() * sizeof(float);
  m.plan.buffers.push_back(buffer);
  PlannedTensor tensor;
  tensor.name = tensor.group = "w";
  tensor.numel = grads->size();
  m.plan.tensors.push_back(tensor);
  m.plan.total_bytes = buffer.size;
  m.tensor_data.push_back(grads->data());
  return m;
}

// A clip scale below fp32's range (max_norm 1e-6 of gradients near FLT_MAX) is applied as the
// smallest positive float, scaling the gradients down (to about 4e-7), and does not zero them (a
// scale of 0, to the kernels).
TEST(JobRoundTest, AScaleBelowFloatsRangeScalesRatherThanZeroes) {
  CpuExecutor executor(1);
  RuleParams clip;
  clip.policy = PolicyKind::kClip;
  clip.clip_max_norm = 1e-6;
  Job job("j", clip, /*local_world_size=*/1, &executor);
  std::vector<float> grads(2048, 3e38f);  // norm 1.4e40: a scale of 7e-47
  v1::RegisterBuffersResponse registered;
  ASSERT_TRUE(job.Register(0, HostRegistration(&grads), &registered).ok());
  v1::StepResponse r;
  ASSERT_TRUE(job.Step(0, 1, absl::Seconds(10), &r).ok());
  ASSERT_EQ(r.groups_size(), 1);
  EXPECT_GT(r.groups(0).scale(), 0.0);
  EXPECT_FALSE(r.skip());
  EXPECT_EQ(grads[0], 3e38f * std::numeric_limits<float>::denorm_min());
  EXPECT_EQ(grads[0], grads[2047]);
}

// A worker restarted while its old session's Step waits in a round registers again before that
// session's removal reaches the job: the old Step leaves the round, which then waits for the
// new session's Step rather than run on its buffers.
TEST(JobRoundTest, AnOlderSessionsStepIsNotRunOnTheRanksNewRegistration) {
  CpuExecutor executor(1);
  RuleParams clip;  // norm 16 (128 ones of two ranks) clipped to 1: a scale of 1/16 shows
  clip.policy = PolicyKind::kClip;
  Job job("j", clip, /*local_world_size=*/2, &executor);
  std::vector<float> old_grads(64, 1.0f), new_grads(64, 1.0f), other(64, 1.0f);
  v1::RegisterBuffersResponse registered;
  ASSERT_TRUE(job.Register(0, HostRegistration(&old_grads), &registered, /*session=*/1).ok());
  ASSERT_TRUE(job.Register(1, HostRegistration(&other), &registered, /*session=*/2).ok());
  absl::Status old_status;
  std::thread old_step([&] {
    v1::StepResponse r;
    old_status = job.Step(0, 1, absl::Seconds(10), &r, 0, /*session=*/1);
  });
  for (v1::GetStatsResponse stats; stats.arrived_local_ranks_size() == 0;) {
    absl::SleepFor(absl::Milliseconds(1));
    job.GetStats(&stats);
  }
  ASSERT_TRUE(job.Register(0, HostRegistration(&new_grads), &registered, /*session=*/3).ok());
  v1::StepResponse r;
  const absl::Status alone = job.Step(1, 1, absl::Milliseconds(300), &r, 0, /*session=*/2);
  old_step.join();
  EXPECT_EQ(old_status.code(), absl::StatusCode::kUnauthenticated) << old_status;
  EXPECT_EQ(alone.code(), absl::StatusCode::kDeadlineExceeded) << alone;
  // No round ran: neither registration's gradients were touched.
  EXPECT_EQ(old_grads, std::vector<float>(64, 1.0f));
  EXPECT_EQ(new_grads, std::vector<float>(64, 1.0f));
  EXPECT_EQ(other, std::vector<float>(64, 1.0f));
  std::thread new_step([&] {
    v1::StepResponse mine;
    EXPECT_TRUE(job.Step(0, 1, absl::Seconds(10), &mine, 0, /*session=*/3).ok());
  });
  EXPECT_TRUE(job.Step(1, 1, absl::Seconds(10), &r, 0, /*session=*/2).ok());
  new_step.join();
  // The round both ranks' current sessions stepped scaled their current buffers, and the old
  // session's not.
  ASSERT_EQ(r.groups_size(), 1);
  const float scale = static_cast<float>(r.groups(0).scale());
  EXPECT_LT(scale, 0.1f);
  EXPECT_EQ(new_grads, std::vector<float>(64, scale));
  EXPECT_EQ(other, std::vector<float>(64, scale));
  EXPECT_EQ(old_grads, std::vector<float>(64, 1.0f));
}

// A state saved before the job's first step (its workers registered and never stepped: the
// checkpoint at a stop, an early export) leaves step 0 to come; one saved after a step at 0
// does not.
TEST(JobStateTest, AStateSavedBeforeAnyStepLeavesStepZeroToCome) {
  CpuExecutor executor(1);
  std::vector<float> grads(64, 1.0f);
  for (const uint64_t steps : {0, 1}) {
    Job job("j", RuleParams{}, 1, &executor);
    v1::RegisterBuffersResponse registered;
    ASSERT_TRUE(job.Register(0, HostRegistration(&grads), &registered, /*session=*/1).ok());
    GroupStats stats;
    stats.steps = steps;
    v1::JobState state = StateWith(RuleParams{}, stats);
    state.set_last_step(0);
    state.mutable_groups(0)->set_name("w");
    ASSERT_TRUE(job.ImportState(state, /*with_config=*/false).ok());
    v1::StepResponse r;
    const absl::Status s = job.Step(0, 0, absl::Seconds(10), &r, 0, /*session=*/1);
    if (steps == 0) {
      EXPECT_TRUE(s.ok()) << s;
    } else {
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    }
  }
}

}  // namespace
}  // namespace gstab
