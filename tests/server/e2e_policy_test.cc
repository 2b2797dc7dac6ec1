// End-to-end: a real gstabd process, real clients over its unix socket, real shared memory.
// Results must equal the core rule and CPU kernels applied to the same gradients.
#include <csignal>
#include <cstring>
#include <fstream>
#include <thread>

#include "core/config.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

using testing::DaemonProcess;
using testing::JobOptions;
using testing::Reference;
using testing::TempDir;
using testing::TestWorker;

const char* const kGroups[] = {"g", "c", "big"};

// Steps `worker` and the reference together and checks they agree exactly.
void StepAndCompare(TestWorker* worker, Reference* ref, uint64_t step, uint32_t seed,
                    float factor = 1.0f) {
  worker->Fill(step, seed, factor);
  const testing::ReferenceStep expected = ref->Step(*worker);
  absl::StatusOr<v1::StepResponse> r = worker->client().Step(step);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->groups_size(), 3);
  for (int g = 0; g < 3; ++g) {
    const v1::GroupResult& got = r->groups(g);
    EXPECT_EQ(got.group(), kGroups[g]);
    if (std::isnan(expected.outcomes[g].norm)) {
      EXPECT_TRUE(std::isnan(got.norm()));
    } else {
      EXPECT_EQ(got.norm(), expected.outcomes[g].norm) << "step " << step << " group " << g;
    }
    EXPECT_EQ(got.scale(), expected.outcomes[g].scale) << "step " << step << " group " << g;
    EXPECT_EQ(got.spike(), (expected.outcomes[g].flags & (kFlagSpike | kFlagSpikeRatio)) != 0);
    EXPECT_EQ(got.skipped(), (expected.outcomes[g].flags & kFlagSkipped) != 0);
  }
  EXPECT_TRUE(worker->Bytes() == expected.bytes) << "gradients differ after step " << step;
}

class E2ePolicyTest : public ::testing::TestWithParam<v1::Policy> {};

TEST_P(E2ePolicyTest, WholeApiPathEqualsTheCoreReference) {
  TempDir dir;
  absl::StatusOr<DaemonProcess> daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  v1::PolicyConfig config;
  config.set_policy(GetParam());
  config.mutable_zclip()->set_warmup_steps(5);
  config.mutable_spike()->set_warmup_steps(5);
  auto worker = TestWorker::Create(daemon->socket(), JobOptions("policy", config));
  ASSERT_TRUE(worker.ok()) << worker.status();
  Reference ref(*ResolveConfig(config));
  for (uint64_t step = 1; step <= 30; ++step) {
    const float factor = step == 20 ? 1e4f : 1.0f;
    StepAndCompare(worker->get(), &ref, step, 7, factor);
  }
  // A NaN gradient: the step is skipped, statistics untouched (every group's: the finite ones
  // are skipped with it), the reference agrees.
  (*worker)->Fill(31, 7);
  static_cast<float*>((*worker)->arena().data(0))[5] = NAN;
  const testing::ReferenceStep expected = ref.Step(**worker);
  absl::StatusOr<v1::StepResponse> r = (*worker)->client().Step(31);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->skip());
  EXPECT_TRUE(r->groups(0).skipped());
  EXPECT_TRUE(std::isnan(r->groups(0).norm()));
  EXPECT_TRUE(r->groups(2).skipped());
  EXPECT_TRUE(std::isfinite(r->groups(2).norm()));
  EXPECT_TRUE((*worker)->Bytes() == expected.bytes);
  // The steps after it go on from the statistics as they were before it: had the skipped step
  // moved them, these would differ from the reference's.
  for (uint64_t step = 32; step <= 34; ++step) StepAndCompare(worker->get(), &ref, step, 7);
  EXPECT_EQ(daemon->Stop().value_or(-1), 0);
}

INSTANTIATE_TEST_SUITE_P(Policies, E2ePolicyTest,
                         ::testing::Values(v1::POLICY_STABILIZE, v1::POLICY_CLIP, v1::POLICY_ZCLIP,
                                           v1::POLICY_MONITOR));

TEST(E2eTest, UpdateConfigTakesEffectOnTheNextStepAndIsRecorded) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok());
  auto worker = TestWorker::Create(daemon->socket(), JobOptions("update"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  Reference ref(RuleParams{});
  for (uint64_t step = 1; step <= 5; ++step) StepAndCompare(worker->get(), &ref, step, 3);

  v1::PolicyConfig clip;
  clip.set_policy(v1::POLICY_CLIP);
  clip.mutable_clip()->set_max_norm(0.5);
  absl::StatusOr<v1::UpdateConfigResponse> updated = (*worker)->client().UpdateConfig(clip);
  ASSERT_TRUE(updated.ok()) << updated.status();
  EXPECT_EQ(updated->version(), 2u);
  EXPECT_EQ(updated->effective_config().policy(), v1::POLICY_CLIP);
  ref.set_params(*ResolveConfig(clip));
  StepAndCompare(worker->get(), &ref, 6, 3, 100.0f);  // big enough to be clipped

  absl::StatusOr<v1::GetStatsResponse> stats = (*worker)->client().GetStats();
  ASSERT_TRUE(stats.ok());
  ASSERT_EQ(stats->config_history_size(), 2);
  EXPECT_EQ(stats->config_history(1).effective_step(), 6u);
  EXPECT_EQ(stats->config_history(1).config().clip().max_norm(), 0.5);

  // Other betas mid-run: the EMAs are re-expressed for them, so the target norm goes on from
  // where it was.
  v1::PolicyConfig betas;
  betas.set_policy(v1::POLICY_STABILIZE);
  betas.mutable_stabilize()->set_beta1(0.9);
  betas.mutable_stabilize()->set_beta2(0.99);
  updated = (*worker)->client().UpdateConfig(betas);
  ASSERT_TRUE(updated.ok()) << updated.status();
  absl::StatusOr<RuleParams> merged = ResolveConfig(updated->effective_config());
  ASSERT_TRUE(merged.ok());
  ref.set_params(*merged);
  for (uint64_t step = 7; step <= 9; ++step) StepAndCompare(worker->get(), &ref, step, 3);

  v1::PolicyConfig bad;
  bad.mutable_stabilize()->set_beta1(2.0);
  absl::StatusOr<v1::UpdateConfigResponse> rejected = (*worker)->client().UpdateConfig(bad);
  EXPECT_EQ(rejected.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(rejected.status().message().find("stabilize.beta1"), std::string::npos);
}

TEST(E2eTest, ExportImportRoundTripContinuesWithTheSameStatistics) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok());
  auto original = TestWorker::Create(daemon->socket(), JobOptions("export-src"));
  ASSERT_TRUE(original.ok());
  Reference ref(RuleParams{});
  for (uint64_t step = 1; step <= 10; ++step) StepAndCompare(original->get(), &ref, step, 5);
  absl::StatusOr<std::string> state = (*original)->client().ExportState();
  ASSERT_TRUE(state.ok());

  auto resumed = TestWorker::Create(daemon->socket(), JobOptions("export-dst"));
  ASSERT_TRUE(resumed.ok());
  ASSERT_TRUE((*resumed)->client().ImportState(*state).ok());
  // Both continue from step 11 with the same gradients and must agree with the reference.
  Reference ref_copy = ref;
  StepAndCompare(original->get(), &ref, 11, 5);
  StepAndCompare(resumed->get(), &ref_copy, 11, 5);

  EXPECT_EQ((*resumed)->client().ImportState("not a state").code(),
            absl::StatusCode::kInvalidArgument);
  // An older step number than the imported state's is refused.
  (*resumed)->Fill(3, 5);
  EXPECT_EQ((*resumed)->client().Step(3).status().code(), absl::StatusCode::kInvalidArgument);
  // So is a step number of 2^62 or more (a negative one passed as unsigned), which would leave
  // the job no later step; the job goes on from where it was.
  for (uint64_t huge : {~uint64_t{0}, uint64_t{1} << 62}) {
    const absl::Status refused = (*resumed)->client().Step(huge).status();
    EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
    EXPECT_NE(refused.message().find("is not below 2^62"), std::string::npos) << refused;
  }
  StepAndCompare(resumed->get(), &ref_copy, 12, 5);
}

// Each group's statistics in `copy` are those of `source` (the last step's norms and scales are
// not statistics: an import does not carry them).
void ExpectSameStatistics(const v1::GetStatsResponse& source, const v1::GetStatsResponse& copy) {
  ASSERT_EQ(copy.groups_size(), source.groups_size());
  for (int g = 0; g < source.groups_size(); ++g) {
    v1::GroupStats a = source.groups(g), b = copy.groups(g);
    for (v1::GroupStats* s : {&a, &b}) {
      s->clear_last_norm();
      s->clear_last_stabilized_norm();
      s->clear_last_scale();
    }
    ASSERT_EQ(a.SerializeAsString(), b.SerializeAsString())
        << "group " << g << ":\n" << a.DebugString() << "vs\n" << b.DebugString();
  }
}

// An import that keeps the job's configuration takes the statistics and step count only: the
// way in for a state whose configuration this gstabd refuses (an older release's spike.beta 0).
TEST(E2eTest, AnImportCanKeepTheJobsConfiguration) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok());
  v1::PolicyConfig clip;
  clip.set_policy(v1::POLICY_CLIP);
  auto source = TestWorker::Create(daemon->socket(), JobOptions("keep-src", clip));
  ASSERT_TRUE(source.ok());
  for (uint64_t step = 1; step <= 4; ++step) {
    (*source)->Fill(step, 5);
    ASSERT_TRUE((*source)->client().Step(step).ok());
  }
  absl::StatusOr<std::string> exported = (*source)->client().ExportState();
  ASSERT_TRUE(exported.ok());
  absl::StatusOr<v1::GetStatsResponse> source_stats = (*source)->client().GetStats();
  ASSERT_TRUE(source_stats.ok());
  v1::JobState old;
  ASSERT_TRUE(old.ParseFromString(*exported));
  old.mutable_config()->mutable_spike()->set_beta(0);  // refused since
  const std::string state = old.SerializeAsString();

  auto target = TestWorker::Create(daemon->socket(), JobOptions("keep-dst"));
  ASSERT_TRUE(target.ok());
  absl::Status whole = (*target)->client().ImportState(state);
  EXPECT_EQ(whole.code(), absl::StatusCode::kInvalidArgument) << whole;
  EXPECT_NE(whole.message().find("spike.beta"), std::string::npos) << whole;
  v1::ImportStateResponse imported;
  ASSERT_TRUE((*target)->client().ImportState(state, &imported, /*keep_config=*/true).ok());
  EXPECT_EQ(imported.groups(), 3u);
  EXPECT_EQ(imported.unregistered_groups(), 0u) << imported.first_unregistered();
  absl::StatusOr<v1::GetStatsResponse> stats = (*target)->client().GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->config().policy(), v1::POLICY_STABILIZE);  // its own, kept
  EXPECT_EQ(stats->config_history_size(), 1);
  EXPECT_EQ(stats->last_step(), 4u);
  ExpectSameStatistics(*source_stats, *stats);  // the betas are the same: nothing re-expressed
  (*target)->Fill(5, 5);
  EXPECT_TRUE((*target)->client().Step(5).ok());
}

// A job's state grows with its groups; one of 65,536 (the cap; about 5 MB exported) still goes
// through ExportState and ImportState whole.
TEST(E2eTest, StateOfTensOfThousandsOfGroupsRoundTrips) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok());
  constexpr int kWide = 65536;  // the most a job may have
  GradientArena arena;
  for (int i = 0; i < kWide; ++i) arena.AddTensor("p" + std::to_string(i), 4, DType::kFloat32);
  ASSERT_TRUE(arena.Allocate().ok());
  for (int i = 0; i < kWide; ++i) {
    for (int k = 0; k < 4; ++k) {
      static_cast<float*>(arena.data(i))[k] = 0.001f * static_cast<float>(i % 97 + k + 1);
    }
  }
  auto source = Client::Connect(daemon->socket());
  ASSERT_TRUE(source.ok());
  ASSERT_TRUE((*source)->Attach(JobOptions("wide")).ok());
  ASSERT_TRUE((*source)->Register(arena).ok());
  ASSERT_TRUE((*source)->Step(1).ok());
  absl::StatusOr<std::string> state = (*source)->ExportState();
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_GT(state->size(), size_t{4} << 20);  // past gRPC's default message size

  auto copy = Client::Connect(daemon->socket());
  ASSERT_TRUE(copy.ok());
  ASSERT_TRUE((*copy)->Attach(JobOptions("wide-copy")).ok());
  ASSERT_TRUE((*copy)->ImportState(*state).ok());
  absl::StatusOr<v1::GetStatsResponse> stats = (*copy)->GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->groups_size(), kWide);
  absl::StatusOr<v1::GetStatsResponse> source_stats = (*source)->GetStats();
  ASSERT_TRUE(source_stats.ok()) << source_stats.status();
  ExpectSameStatistics(*source_stats, *stats);
}

TEST(E2eTest, SigtermThenRestartRestoresStatistics) {
  TempDir dir;
  Reference ref(RuleParams{});
  {
    auto daemon = DaemonProcess::Start(dir.path());
    ASSERT_TRUE(daemon.ok());
    auto worker = TestWorker::Create(daemon->socket(), JobOptions("restart"));
    ASSERT_TRUE(worker.ok());
    for (uint64_t step = 1; step <= 20; ++step) StepAndCompare(worker->get(), &ref, step, 9);
    EXPECT_EQ(daemon->Stop().value_or(-1), 0);  // graceful: checkpoint, exit 0
  }
  auto daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok());
  auto worker = TestWorker::Create(daemon->socket(), JobOptions("restart"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  EXPECT_TRUE((*worker)->client().attach_response().restored());
  // The next step's scale equals what the uninterrupted reference gives.
  for (uint64_t step = 21; step <= 23; ++step) StepAndCompare(worker->get(), &ref, step, 9);
}

// A gstabd killed outright (the OOM killer, a node's hard reset: no checkpoint on the way out)
// comes back from its last periodic checkpoint.
TEST(E2eTest, SigkillThenRestartRestoresThePeriodicCheckpoint) {
  TempDir dir;
  Reference ref(RuleParams{});
  const std::string file = dir.path() + "/state/crashed.jobstate";
  {
    auto daemon = DaemonProcess::Start(dir.path(), {"--checkpoint_interval_s=1"});
    ASSERT_TRUE(daemon.ok());
    auto worker = TestWorker::Create(daemon->socket(), JobOptions("crashed"));
    ASSERT_TRUE(worker.ok());
    for (uint64_t step = 1; step <= 20; ++step) StepAndCompare(worker->get(), &ref, step, 9);
    // The periodic checkpoint that has step 20 (one a second).
    v1::JobState saved;
    for (int i = 0; i < 300 && saved.last_step() != 20; ++i) {
      absl::SleepFor(absl::Milliseconds(100));
      std::ifstream in(file, std::ios::binary);
      if (!in || !saved.ParseFromIstream(&in)) saved.Clear();
    }
    ASSERT_EQ(saved.last_step(), 20u) << "no periodic checkpoint of step 20 within 30 s";
    daemon->process().Signal(SIGKILL);
    ASSERT_TRUE(daemon->process().Wait(absl::Seconds(10)).ok());
  }
  auto daemon = DaemonProcess::Start(dir.path());  // over the dead one's socket file
  ASSERT_TRUE(daemon.ok());
  auto worker = TestWorker::Create(daemon->socket(), JobOptions("crashed"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  EXPECT_TRUE((*worker)->client().attach_response().restored());
  absl::StatusOr<v1::GetStatsResponse> stats = (*worker)->client().GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->last_step(), 20u);
  for (uint64_t step = 21; step <= 23; ++step) StepAndCompare(worker->get(), &ref, step, 9);
}

// A job comes back from its checkpoint with the configuration it had (changed since its first
// attach): an attach asking for another is refused naming what differs, one asking for none
// gets the job's.
TEST(E2eTest, ARestoredJobKeepsItsConfigurationAndSaysWhatDiffers) {
  TempDir dir;
  v1::PolicyConfig clip;
  clip.set_policy(v1::POLICY_CLIP);
  {
    auto daemon = DaemonProcess::Start(dir.path());
    ASSERT_TRUE(daemon.ok());
    auto worker = TestWorker::Create(daemon->socket(), JobOptions("kept", clip));
    ASSERT_TRUE(worker.ok()) << worker.status();
    v1::PolicyConfig tighter;
    tighter.mutable_clip()->set_max_norm(0.25);
    ASSERT_TRUE((*worker)->client().UpdateConfig(tighter).ok());
    (*worker)->Fill(1, 1);
    ASSERT_TRUE((*worker)->client().Step(1).ok());
    EXPECT_EQ(daemon->Stop().value_or(-1), 0);
  }
  auto daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok());
  clip.mutable_clip()->set_max_norm(1);
  auto asking = TestWorker::Create(daemon->socket(), JobOptions("kept", clip));
  ASSERT_FALSE(asking.ok());
  EXPECT_EQ(asking.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(asking.status().message().find("came back from gstabd's checkpoint"),
            std::string::npos)
      << asking.status();
  EXPECT_NE(asking.status().message().find("clip.max_norm 0.25 (asked: 1)"), std::string::npos)
      << asking.status();
  // Refused attaches, one or several at once (a job's local ranks), leave the job a checkpoint
  // as it was, not held for them.
  auto tools = Client::Connect(daemon->socket());
  ASSERT_TRUE(tools.ok());
  auto expect_checkpoint_only = [&] {
    grpc::ClientContext ctx;
    v1::ListJobsRequest list;
    list.set_include_retired(true);
    v1::ListJobsResponse jobs;
    ASSERT_TRUE((*tools)->stub()->ListJobs(&ctx, list, &jobs).ok());
    ASSERT_EQ(jobs.jobs_size(), 1);
    EXPECT_TRUE(jobs.jobs(0).retired()) << jobs.ShortDebugString();
    EXPECT_EQ(jobs.jobs(0).last_step(), 1u);
  };
  expect_checkpoint_only();
  std::vector<std::thread> ranks;
  for (uint32_t rank = 0; rank < 4; ++rank) {
    ranks.emplace_back([&, rank] {
      AttachOptions o = JobOptions("kept", clip);
      o.local_rank = rank;
      o.local_world_size = 4;
      EXPECT_EQ(TestWorker::Create(daemon->socket(), o).status().code(),
                absl::StatusCode::kFailedPrecondition);
    });
  }
  for (std::thread& t : ranks) t.join();
  expect_checkpoint_only();
  v1::PolicyConfig just_clip;  // asks for nothing the job lacks
  just_clip.set_policy(v1::POLICY_CLIP);
  ASSERT_TRUE(TestWorker::Create(daemon->socket(), JobOptions("kept", just_clip)).ok());
  auto plain = TestWorker::Create(daemon->socket(), JobOptions("kept"));
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_TRUE((*plain)->client().attach_response().restored());
  EXPECT_EQ((*plain)->client().attach_response().effective_config().clip().max_norm(), 0.25);
  // Its configuration's versions go on from the checkpoint's: version 2 (the change), which the
  // first step ran with, and the next change is version 3.
  absl::StatusOr<v1::GetStatsResponse> stats = (*plain)->client().GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  ASSERT_EQ(stats->config_history_size(), 2) << stats->ShortDebugString();
  EXPECT_EQ(stats->config_history(1).version(), 2u);
  EXPECT_EQ(stats->config_history(1).effective_step(), 1u);
  EXPECT_EQ(stats->config_history(1).config().clip().max_norm(), 0.25);
  v1::PolicyConfig looser;
  looser.mutable_clip()->set_max_norm(0.5);
  absl::StatusOr<v1::UpdateConfigResponse> updated = (*plain)->client().UpdateConfig(looser);
  ASSERT_TRUE(updated.ok()) << updated.status();
  EXPECT_EQ(updated->version(), 3u);
}

// A node's gstabd replaced under a running worker (a DaemonSet pod restarted): its calls fail
// while no gstabd serves, then say the session is gone; attaching again resumes the job's
// statistics from the checkpoint.
TEST(E2eTest, WorkerOutlivingARestartIsToldToAttachAgainAndResumes) {
  TempDir dir;
  Reference ref(RuleParams{});
  auto first = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(first.ok()) << first.status();
  auto daemon = std::make_unique<DaemonProcess>(*std::move(first));
  auto worker = TestWorker::Create(daemon->socket(), JobOptions("outlives"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  for (uint64_t step = 1; step <= 10; ++step) StepAndCompare(worker->get(), &ref, step, 9);
  ASSERT_EQ(daemon->Stop().value_or(-1), 0);
  absl::Status gone = (*worker)->client().Step(11).status();
  EXPECT_EQ(gone.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(gone.message().find("cannot reach gstabd at unix:"), std::string::npos) << gone;

  auto second = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(second.ok()) << second.status();
  daemon = std::make_unique<DaemonProcess>(*std::move(second));
  absl::Status after = (*worker)->client().Step(11).status();
  // The channel reconnects on its own, after a back-off (1 s, then growing 1.6x a try).
  for (int i = 0; i < 400 && after.code() == absl::StatusCode::kUnavailable; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
    after = (*worker)->client().Step(11).status();
  }
  EXPECT_EQ(after.code(), absl::StatusCode::kUnauthenticated) << after;
  EXPECT_NE(after.message().find("attach again"), std::string::npos) << after;

  auto again = TestWorker::Create(daemon->socket(), JobOptions("outlives"));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE((*again)->client().attach_response().restored());
  for (uint64_t step = 11; step <= 13; ++step) StepAndCompare(again->get(), &ref, step, 9);
}

}  // namespace
}  // namespace gstab
