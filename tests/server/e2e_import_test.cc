// End-to-end: an import into a live job waits for the step in progress, through a real gstabd,
// and what it brings shows in the job's gauges at once.
#include <atomic>
#include <memory>
#include <optional>
#include <thread>

#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

using testing::DaemonProcess;
using testing::JobOptions;
using testing::TempDir;
using testing::TestWorker;

// Local rank `rank` of two of job "live-import".
absl::StatusOr<std::unique_ptr<TestWorker>> Rank(const std::string& socket, uint32_t rank) {
  AttachOptions o = JobOptions("live-import");
  o.local_rank = rank;
  o.local_world_size = 2;
  return TestWorker::Create(socket, o);
}

// A gstabd (default step timeout: 60 s, longer than an import's 5 s wait) and the job's two
// local workers.
class E2eImportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<DaemonProcess> started = DaemonProcess::Start(dir_.path());
    ASSERT_TRUE(started.ok()) << started.status();
    daemon_.emplace(*std::move(started));
    for (uint32_t rank : {0u, 1u}) {
      auto worker = Rank(daemon_->socket(), rank);
      ASSERT_TRUE(worker.ok()) << worker.status();
      (rank == 0 ? a_ : b_) = *std::move(worker);
    }
  }
  void TearDown() override {
    if (daemon_.has_value()) {
      EXPECT_EQ(daemon_->Stop().value_or(-1), 0);
    }
  }

  TempDir dir_;
  std::optional<DaemonProcess> daemon_;
  std::unique_ptr<TestWorker> a_, b_;
};

// Steps both workers through `step` (each Step waits for the other's).
void StepBoth(TestWorker* a, TestWorker* b, uint64_t step) {
  a->Fill(step, 3);
  b->Fill(step, 4);
  absl::Status sa, sb;
  std::thread t([&] { sa = a->client().Step(step).status(); });
  sb = b->client().Step(step).status();
  t.join();
  ASSERT_TRUE(sa.ok()) << sa;
  ASSERT_TRUE(sb.ok()) << sb;
}

TEST_F(E2eImportTest, AnImportWaitsForTheStepInProgressAndGoesBeforeTheNext) {
  TestWorker* a = a_.get();
  TestWorker* b = b_.get();
  for (uint64_t step = 1; step <= 3; ++step) StepBoth(a, b, step);
  absl::StatusOr<std::string> exported = a->client().ExportState();
  ASSERT_TRUE(exported.ok()) << exported.status();
  v1::JobState state;
  ASSERT_TRUE(state.ParseFromString(*exported));
  for (v1::GroupState& g : *state.mutable_groups()) g.set_t(77);
  state.set_last_step(50);

  // Step 4 is in progress: local rank 0 has arrived, rank 1 not yet.
  a->Fill(4, 3);
  absl::Status step4, step5;
  std::thread rank0([&] {
    step4 = a->client().Step(4).status();
    step5 = a->client().Step(5).status();  // at once: the import goes first
  });
  ASSERT_TRUE(testing::WaitForArrivals(&a->client(), {0}));
  auto tool = Client::Connect(daemon_->socket());
  ASSERT_TRUE(tool.ok());
  AttachOptions observer = JobOptions("live-import");
  observer.observer = true;
  ASSERT_TRUE((*tool)->Attach(observer).ok());
  std::atomic<bool> imported{false};
  absl::Status import;
  std::thread importer([&] {
    import = (*tool)->ImportState(state.SerializeAsString());
    imported = true;
  });
  // The import waits for step 4 (GetStats says so), and has not ended.
  bool waiting = false;
  for (int i = 0; i < 3000 && !waiting && !imported.load(); ++i) {
    absl::SleepFor(absl::Milliseconds(10));
    absl::StatusOr<v1::GetStatsResponse> stats = (*tool)->GetStats();
    waiting = stats.ok() && stats->imports_waiting() == 1;
  }
  EXPECT_TRUE(waiting) << "no import waited for step 4 within 30 s";
  EXPECT_FALSE(imported.load()) << "the import did not wait for step 4: " << import;

  b->Fill(4, 4);
  ASSERT_TRUE(b->client().Step(4).ok());
  importer.join();
  rank0.join();
  EXPECT_TRUE(step4.ok()) << step4;
  EXPECT_TRUE(import.ok()) << import;
  // Rank 0's next step, sent at once, comes after the import: it meets the imported state's
  // step number. (It may reach gstabd after the import is done; gstabd holds it when it comes
  // sooner, a race this test does not force: job_cpu_test does.)
  EXPECT_EQ(step5.code(), absl::StatusCode::kInvalidArgument) << step5;
  EXPECT_NE(step5.message().find("go on from step 51"), std::string::npos) << step5;
  absl::StatusOr<v1::GetStatsResponse> stats = (*tool)->GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->last_step(), 50u);
  for (const v1::GroupStats& g : stats->groups()) EXPECT_EQ(g.accepted_steps(), 77u) << g.group();
  StepBoth(a, b, 51);
}

TEST_F(E2eImportTest, AnImportWhoseStepDoesNotEndIsRefusedAndTheJobGoesOn) {
  TestWorker* a = a_.get();
  TestWorker* b = b_.get();
  StepBoth(a, b, 1);
  absl::StatusOr<std::string> exported = a->client().ExportState();
  ASSERT_TRUE(exported.ok());

  a->Fill(2, 3);
  absl::Status step2;
  std::thread rank0([&] { step2 = a->client().Step(2).status(); });
  ASSERT_TRUE(testing::WaitForArrivals(&a->client(), {0}));
  // Rank 1 is slow: the import gives up after 5 s, saying which step it waited for. Another
  // import meanwhile is refused at once (each held its request while it waited).
  absl::Status refused;
  std::thread importer([&] { refused = b->client().ImportState(*exported); });
  bool waiting = false;
  for (int i = 0; i < 300 && !waiting; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
    absl::StatusOr<v1::GetStatsResponse> stats = b->client().GetStats();
    waiting = stats.ok() && stats->imports_waiting() == 1;
  }
  EXPECT_TRUE(waiting) << "no import waited for step 2 within 3 s";
  auto tool = Client::Connect(daemon_->socket());
  ASSERT_TRUE(tool.ok());
  AttachOptions observer = JobOptions("live-import");
  observer.observer = true;
  ASSERT_TRUE((*tool)->Attach(observer).ok());
  const absl::Status second = (*tool)->ImportState(*exported);
  EXPECT_EQ(second.code(), absl::StatusCode::kAborted) << second;
  EXPECT_NE(second.message().find("an import into job 'live-import' is under way"),
            std::string::npos)
      << second;
  importer.join();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_NE(refused.message().find("step 2 of job 'live-import' was still in progress after 5s"),
            std::string::npos)
      << refused;
  b->Fill(2, 4);
  ASSERT_TRUE(b->client().Step(2).ok());
  rank0.join();
  EXPECT_TRUE(step2.ok()) << step2;
  StepBoth(a, b, 3);
}

// An import of diverging statistics into a job that has stepped: its gauge and summary say so
// at once, not after the next step.
TEST(E2eImportGaugesTest, ImportedDivergenceShowsBeforeTheNextStep) {
  TempDir dir;
  absl::StatusOr<DaemonProcess> daemon = DaemonProcess::Start(dir.path(), {"--metrics_port=0"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  absl::StatusOr<int> port = daemon->MetricsPort();
  ASSERT_TRUE(port.ok()) << port.status();
  auto worker = TestWorker::Create(daemon->socket(), JobOptions("div"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  (*worker)->Fill(1, 3);
  ASSERT_TRUE((*worker)->client().Step(1).ok());
  absl::StatusOr<std::string> exported = (*worker)->client().ExportState();
  ASSERT_TRUE(exported.ok()) << exported.status();
  v1::JobState state;
  ASSERT_TRUE(state.ParseFromString(*exported));
  for (v1::GroupState& g : *state.mutable_groups()) g.set_diverging(1);
  state.clear_checksum();
  ASSERT_TRUE((*worker)->client().ImportState(state.SerializeAsString()).ok());
  absl::StatusOr<testing::HttpResponse> metrics = testing::HttpRequest(*port, "GET", "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_NE(metrics->body.find("gstab_diverging{job=\"div\"} 1\n"), std::string::npos)
      << metrics->body;
  grpc::ClientContext ctx;
  v1::ListJobsResponse jobs;
  ASSERT_TRUE((*worker)->client().stub()->ListJobs(&ctx, {}, &jobs).ok());
  ASSERT_EQ(jobs.jobs_size(), 1);
  EXPECT_TRUE(jobs.jobs(0).diverging());
}

}  // namespace
}  // namespace gstab
