// A job's statistics across configuration changes and state moves: the stabilizer's EMAs are
// always expressed for the configuration they are written or used with (RescaleStabilizerEmas).
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

}  // namespace
}  // namespace gstab
