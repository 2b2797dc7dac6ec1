// End-to-end: a job's life on a long-running gstabd. A job without workers or observers for
// --job_idle_s is retired (its statistics checkpointed, its series gone from /metrics) and
// resumes where it stopped when a worker attaches again; at --max_jobs, a new job retires the
// longest idle one, and is refused only when every held job is in use; a checkpoint not used
// for --job_retention_s is deleted.
#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>
#include <tuple>
#include <vector>

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

// Steps `worker` and the reference together; the scales and gradient bytes must agree.
void StepAndCompare(TestWorker* worker, Reference* ref, uint64_t step) {
  worker->Fill(step, 3);
  const testing::ReferenceStep expected = ref->Step(*worker);
  absl::StatusOr<v1::StepResponse> r = worker->client().Step(step);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->groups_size(), 3);
  for (int g = 0; g < 3; ++g) {
    EXPECT_EQ(r->groups(g).scale(), expected.outcomes[g].scale) << "step " << step;
  }
  EXPECT_TRUE(worker->Bytes() == expected.bytes) << "gradients differ after step " << step;
}

std::vector<std::string> HeldJobs(Client* client) {
  grpc::ClientContext ctx;
  v1::ListJobsResponse response;
  EXPECT_TRUE(client->stub()->ListJobs(&ctx, v1::ListJobsRequest(), &response).ok());
  std::vector<std::string> names;
  for (const v1::JobSummary& j : response.jobs()) names.push_back(j.job());
  return names;
}

bool Holds(Client* client, const std::string& job) {
  const std::vector<std::string> held = HeldJobs(client);
  return std::find(held.begin(), held.end(), job) != held.end();
}

// The events of `type` in the daemon's recent history.
std::vector<v1::Event> RecentEvents(Client* client, v1::EventType type) {
  v1::WatchEventsRequest request;
  request.set_recent(1024);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  auto reader = client->stub()->WatchEvents(&ctx, request);
  std::vector<v1::Event> out;
  v1::Event e;
  while (reader->Read(&e)) {
    if (e.type() == type) out.push_back(e);
  }
  return out;
}

std::vector<v1::Event> RetiredEvents(Client* client) {
  return RecentEvents(client, v1::EVENT_TYPE_JOB_RETIRED);
}

TEST(E2eLifecycleTest, IdleJobIsRetiredAndResumesWithTheSameStatistics) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path(), {"--metrics_port=0", "--job_idle_s=1"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  absl::StatusOr<int> port = daemon->MetricsPort();
  ASSERT_TRUE(port.ok()) << port.status();
  auto tools = Client::Connect(daemon->socket());
  ASSERT_TRUE(tools.ok());

  Reference ref(RuleParams{});
  {
    auto worker = TestWorker::Create(daemon->socket(), JobOptions("idle"));
    ASSERT_TRUE(worker.ok()) << worker.status();
    for (uint64_t step = 1; step <= 10; ++step) StepAndCompare(worker->get(), &ref, step);
    ASSERT_TRUE((*worker)->client().Detach().ok());
  }
  {  // A job whose worker never registered nor stepped is retired with nothing kept.
    auto bare = Client::Connect(daemon->socket());
    ASSERT_TRUE(bare.ok());
    ASSERT_TRUE((*bare)->Attach(JobOptions("never")).ok());
    ASSERT_TRUE((*bare)->Detach().ok());
  }
  // An observer's session keeps its job held as a worker's does.
  auto watched = TestWorker::Create(daemon->socket(), JobOptions("watched"));
  ASSERT_TRUE(watched.ok());
  auto observer = Client::Connect(daemon->socket());
  ASSERT_TRUE(observer.ok());
  AttachOptions o = JobOptions("watched");
  o.observer = true;
  ASSERT_TRUE((*observer)->Attach(o).ok());
  ASSERT_TRUE((*watched)->client().Detach().ok());

  const absl::Time deadline = absl::Now() + absl::Seconds(15);
  while (Holds(tools->get(), "idle") && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_FALSE(Holds(tools->get(), "idle")) << "an idle job was not retired";
  absl::SleepFor(absl::Seconds(2));  // the observed job is idle of workers for twice as long
  EXPECT_TRUE(Holds(tools->get(), "watched"));

  // Its statistics are on disk, its series are gone, and the event says why.
  EXPECT_TRUE(std::filesystem::exists(dir.path() + "/state/idle.jobstate"));
  absl::StatusOr<testing::HttpResponse> scrape = testing::HttpRequest(*port, "GET", "/metrics");
  ASSERT_TRUE(scrape.ok());
  EXPECT_EQ(scrape->body.find("job=\"idle\""), std::string::npos) << scrape->body;
  EXPECT_NE(scrape->body.find("job=\"watched\""), std::string::npos);
  EXPECT_FALSE(Holds(tools->get(), "never"));
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/state/never.jobstate"));
  std::vector<v1::Event> retired = RetiredEvents(tools->get());
  retired.erase(std::remove_if(retired.begin(), retired.end(),
                               [](const v1::Event& e) { return e.job() == "never"; }),
                retired.end());
  ASSERT_EQ(retired.size(), 1u);
  EXPECT_EQ(retired[0].job(), "idle");
  EXPECT_NE(retired[0].detail().find("no worker or observer for 1s"), std::string::npos)
      << retired[0].detail();

  // Operators still see it, as a checkpoint.
  v1::ListJobsRequest all;
  all.set_include_retired(true);
  grpc::ClientContext ctx;
  v1::ListJobsResponse listed;
  ASSERT_TRUE((*tools)->stub()->ListJobs(&ctx, all, &listed).ok());
  bool seen = false;
  for (const v1::JobSummary& j : listed.jobs()) {
    EXPECT_NE(j.job(), "never") << "a job that never stepped was kept as a checkpoint";
    if (j.job() != "idle") continue;
    seen = true;
    EXPECT_TRUE(j.retired());
    EXPECT_EQ(j.last_step(), 10u);
    EXPECT_EQ(j.groups(), 3u);
    EXPECT_EQ(j.policy(), "stabilize");
  }
  EXPECT_TRUE(seen);
  auto [rc, table] = testing::RunShell(testing::BinaryPath("tools/gstabctl") +
                                       " --socket=" + daemon->socket() + " status --all");
  EXPECT_EQ(rc, 0) << table;
  EXPECT_NE(table.find("not held, kept as checkpoints"), std::string::npos) << table;
  EXPECT_NE(table.find("\nidle "), std::string::npos) << table;

  // An observer cannot attach to it (nothing is held), and is told why.
  auto late = Client::Connect(daemon->socket());
  ASSERT_TRUE(late.ok());
  o.job = "idle";
  absl::Status refused = (*late)->Attach(o);
  EXPECT_EQ(refused.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(refused.message().find("retired"), std::string::npos) << refused;

  // A worker that comes back resumes exactly where the job stopped.
  auto back = TestWorker::Create(daemon->socket(), JobOptions("idle"));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE((*back)->client().attach_response().restored());
  // An observer attaching now is told so too, with the timeouts a worker is told.
  ASSERT_TRUE((*late)->Attach(o).ok());
  EXPECT_TRUE((*late)->attach_response().restored());
  EXPECT_GT((*late)->attach_response().step_timeout_ms(), 0u);
  for (uint64_t step = 11; step <= 13; ++step) StepAndCompare(back->get(), &ref, step);
}

// Without a state directory a retired job's statistics are kept in memory, whole, and it
// resumes from them as it would from disk.
TEST(E2eLifecycleTest, WithoutAStateDirectoryARetiredJobResumesFromMemory) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path(), {"--job_idle_s=1", "--state_dir="});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto tools = Client::Connect(daemon->socket());
  ASSERT_TRUE(tools.ok());
  Reference ref(RuleParams{});
  {
    auto worker = TestWorker::Create(daemon->socket(), JobOptions("memory"));
    ASSERT_TRUE(worker.ok()) << worker.status();
    for (uint64_t step = 1; step <= 5; ++step) StepAndCompare(worker->get(), &ref, step);
    ASSERT_TRUE((*worker)->client().Detach().ok());
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(15);
  while (Holds(tools->get(), "memory") && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_FALSE(Holds(tools->get(), "memory")) << "the idle job was not retired";
  auto back = TestWorker::Create(daemon->socket(), JobOptions("memory"));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE((*back)->client().attach_response().restored());
  for (uint64_t step = 6; step <= 8; ++step) StepAndCompare(back->get(), &ref, step);
}

TEST(E2eLifecycleTest, AtTheCapTheLongestIdleJobMakesRoomAndBusyJobsAreKept) {
  TempDir dir;
  constexpr absl::Duration kLease = absl::Seconds(3);
  auto daemon =
      DaemonProcess::Start(dir.path(), {"--max_jobs=2", "--job_idle_s=0", "--lease_ms=3000"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto tools = Client::Connect(daemon->socket());
  ASSERT_TRUE(tools.ok());

  Reference ref(RuleParams{});
  auto busy = TestWorker::Create(daemon->socket(), JobOptions("busy"));
  ASSERT_TRUE(busy.ok()) << busy.status();
  StepAndCompare(busy->get(), &ref, 1);
  {
    auto old = TestWorker::Create(daemon->socket(), JobOptions("old"));
    ASSERT_TRUE(old.ok()) << old.status();
    (*old)->Fill(1, 1);
    ASSERT_TRUE((*old)->client().Step(1).ok());
    ASSERT_TRUE((*old)->client().Detach().ok());
  }
  // A job whose worker left within the lease is kept (the worker may still map its buffers).
  auto early = TestWorker::Create(daemon->socket(), JobOptions("new"));
  ASSERT_FALSE(early.ok());
  EXPECT_EQ(early.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(early.status().message().find("--max_jobs"), std::string::npos) << early.status();
  EXPECT_TRUE(Holds(tools->get(), "old"));

  absl::SleepFor(kLease);
  auto fresh = TestWorker::Create(daemon->socket(), JobOptions("new"));
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_TRUE(Holds(tools->get(), "busy"));
  EXPECT_TRUE(Holds(tools->get(), "new"));
  EXPECT_FALSE(Holds(tools->get(), "old"));
  std::vector<v1::Event> retired = RetiredEvents(tools->get());
  ASSERT_EQ(retired.size(), 1u);
  EXPECT_EQ(retired[0].job(), "old");
  EXPECT_NE(retired[0].detail().find("making room for job 'new'"), std::string::npos);

  // Every held job in use: a third is refused, and the others go on.
  auto third = TestWorker::Create(daemon->socket(), JobOptions("third"));
  ASSERT_FALSE(third.ok());
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  StepAndCompare(busy->get(), &ref, 2);

  // The retired job comes back with its statistics once there is room again.
  ASSERT_TRUE((*fresh)->client().Detach().ok());
  absl::SleepFor(kLease);
  // An attach refused for what it asks of the checkpoint (another configuration) makes no room:
  // the idle job it would have pushed out stays held.
  v1::PolicyConfig clip;
  clip.set_policy(v1::POLICY_CLIP);
  auto refused = TestWorker::Create(daemon->socket(), JobOptions("old", clip));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_NE(refused.status().message().find("came back from gstabd's checkpoint"),
            std::string::npos)
      << refused.status();
  EXPECT_TRUE(Holds(tools->get(), "new"));
  EXPECT_EQ(RetiredEvents(tools->get()).size(), 1u);
  auto back = TestWorker::Create(daemon->socket(), JobOptions("old"));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE((*back)->client().attach_response().restored());
  EXPECT_FALSE(Holds(tools->get(), "new"));
  StepAndCompare(busy->get(), &ref, 3);
}

// A worker refused again and again (another configuration than its job's, in a crash loop) does
// not keep its idle job held: the job's idle time runs on through the refused attaches, and it
// is retired after --job_idle_s as if none came (they restarted it at each of gstabd's ticks).
TEST(E2eLifecycleTest, AttachesRefusedInALoopDoNotKeepAnIdleJobHeld) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path(), {"--job_idle_s=1", "--lease_ms=500"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto tools = Client::Connect(daemon->socket());
  ASSERT_TRUE(tools.ok());
  {
    auto worker = TestWorker::Create(daemon->socket(), JobOptions("looped"));
    ASSERT_TRUE(worker.ok()) << worker.status();
    ASSERT_TRUE((*worker)->client().Detach().ok());
  }
  v1::PolicyConfig clip;
  clip.set_policy(v1::POLICY_CLIP);
  // Several in a loop, so that one is under way at most of gstabd's ticks.
  std::atomic<bool> held{true};
  std::atomic<int> other_answers{0};
  std::atomic<int> refusals{0};  // some there must be, or nothing was tried
  std::vector<std::thread> loops;
  for (int t = 0; t < 4; ++t) {
    loops.emplace_back([&] {
      auto refused = Client::Connect(daemon->socket());
      if (!refused.ok()) {
        ++other_answers;
        return;
      }
      while (held.load()) {
        const absl::Status s = (*refused)->Attach(JobOptions("looped", clip));
        ++(s.code() == absl::StatusCode::kFailedPrecondition ? refusals : other_answers);
      }
    });
  }
  const absl::Time start = absl::Now();
  while (held.load() && absl::Now() < start + absl::Seconds(6)) {
    absl::SleepFor(absl::Milliseconds(50));
    held = Holds(tools->get(), "looped");
  }
  const bool retired = !held.load();
  held = false;
  for (std::thread& t : loops) t.join();
  EXPECT_TRUE(retired) << "refused attaches kept the idle job held for 6 s (--job_idle_s=1)";
  EXPECT_EQ(other_answers.load(), 0);
  EXPECT_GT(refusals.load(), 0);
}

// An attach refused for its rendezvous blob leaves no job behind to count against the cap or
// be checkpointed.
TEST(E2eLifecycleTest, ARefusedAttachLeavesNoJobBehind) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path(), {"--max_jobs=1"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto stray = Client::Connect(daemon->socket());
  ASSERT_TRUE(stray.ok());
  AttachOptions options = JobOptions("stray");
  options.world_size = options.node_count = 2;
  options.rendezvous = "not a blob";
  absl::Status refused = (*stray)->Attach(options);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_NE(refused.message().find("not one gstabd made"), std::string::npos) << refused;
  EXPECT_FALSE(Holds(stray->get(), "stray"));
  auto good = TestWorker::Create(daemon->socket(), JobOptions("good"));
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(daemon->Stop().value_or(-1), 0);
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/state/stray.jobstate"));
}

TEST(E2eLifecycleTest, CheckpointOfAJobGoneForTheRetentionIsDeleted) {
  TempDir dir;
  const std::string file = dir.path() + "/state/short.jobstate";
  {
    auto daemon = DaemonProcess::Start(dir.path(), {"--job_retention_s=0"});
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    auto worker = TestWorker::Create(daemon->socket(), JobOptions("short"));
    ASSERT_TRUE(worker.ok()) << worker.status();
    (*worker)->Fill(1, 1);
    ASSERT_TRUE((*worker)->client().Step(1).ok());
    EXPECT_EQ(daemon->Stop().value_or(-1), 0);
  }
  ASSERT_TRUE(std::filesystem::exists(file));
  // Found at start and not attached since: deleted once it is older than the retention.
  auto daemon = DaemonProcess::Start(dir.path(), {"--job_retention_s=2"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  const std::string logged = "deleted the checkpoint of job 'short' at step 1";
  const absl::Time deadline = absl::Now() + absl::Seconds(15);
  while (daemon->Log().find(logged) == std::string::npos && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_NE(daemon->Log().find(logged), std::string::npos) << daemon->Log();
  EXPECT_FALSE(std::filesystem::exists(file)) << "the checkpoint outlived its retention";
  auto worker = TestWorker::Create(daemon->socket(), JobOptions("short"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  EXPECT_FALSE((*worker)->client().attach_response().restored());
}

// Event numbers go on increasing across a restart of gstabd: a reader that resumes after the
// last one it saw (a dashboard's collector) neither misses the new run's events nor repeats any.
TEST(E2eLifecycleTest, EventNumbersGoOnIncreasingAcrossARestart) {
  TempDir dir;
  // A run of gstabd on `dir` that a worker attaches to: its ATTACH event's number (0: none).
  auto attach_once = [&]() -> uint64_t {
    auto daemon = DaemonProcess::Start(dir.path());
    EXPECT_TRUE(daemon.ok()) << daemon.status();
    if (!daemon.ok()) return 0;
    std::vector<v1::Event> attached;
    {
      auto worker = TestWorker::Create(daemon->socket(), JobOptions("numbered"));
      EXPECT_TRUE(worker.ok()) << worker.status();
      if (worker.ok()) attached = RecentEvents(&(*worker)->client(), v1::EVENT_TYPE_ATTACH);
    }
    EXPECT_EQ(daemon->Stop().value_or(-1), 0);
    EXPECT_EQ(attached.size(), 1u);
    return attached.size() == 1 ? attached[0].sequence() : 0;
  };
  const uint64_t before = attach_once();
  ASSERT_GT(before, 0u);
  EXPECT_GT(attach_once(), before);
}

// An operator starts a job afresh under its name: refused while a worker is attached, then
// its statistics, step count and checkpoint go, and its next attach starts at step 1.
TEST(E2eLifecycleTest, AForgottenJobStartsAfreshUnderItsName) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto ctl = [&](const std::string& args) {
    return testing::RunShell(testing::BinaryPath("tools/gstabctl") +
                             " --socket=" + daemon->socket() + " " + args + " 2>&1");
  };
  for (const std::string job : {"held", "kept"}) {
    auto worker = TestWorker::Create(daemon->socket(), JobOptions(job));
    ASSERT_TRUE(worker.ok()) << worker.status();
    for (uint64_t step = 1; step <= 3; ++step) {
      (*worker)->Fill(step, 1);
      ASSERT_TRUE((*worker)->client().Step(step).ok());
    }
    auto [busy, why] = ctl("forget --job=" + job);
    EXPECT_EQ(busy, 1);
    EXPECT_NE(why.find("1 session(s) attached"), std::string::npos) << why;
    ASSERT_TRUE((*worker)->client().Detach().ok());
  }
  // gstabctl's observer sessions end with the command, failed ones too, so none of them keeps
  // the job from being forgotten; a bad command line is refused before any.
  const std::string missing = dir.path() + "/no-such-folder/held.state";
  for (const std::string& failing : std::vector<std::string>{
           "config set --job=held clip.max_norm=-1", "export --job=held --out=" + missing,
           "import --job=held --in=" + dir.path(), "import --job=held --in=/dev/null",
           "config show --job=held extra", "status held"}) {
    auto [failed, why] = ctl(failing);
    EXPECT_NE(failed, 0) << failing << ": " << why;
    EXPECT_EQ(why.find("session(s) attached"), std::string::npos) << failing << ": " << why;
  }
  EXPECT_NE(ctl("import --job=held --in=" + dir.path()).second.find("is a folder"),
            std::string::npos);
  EXPECT_NE(ctl("import --job=held --in=/dev/null").second.find("is empty"), std::string::npos);
  EXPECT_EQ(ctl("status held").first, 2);
  auto [rc, out] = ctl("forget --job=held");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("forgot job held (held)"), std::string::npos) << out;
  ASSERT_EQ(daemon->Stop().value_or(-1), 0);  // "kept": a checkpoint on disk
  daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  // Its files set aside as not restorable go with it; other jobs', and other files, stay.
  const std::string state = dir.path() + "/state/";
  for (const char* file : {"kept.jobstate.corrupt-1700000000", "kept.jobstate.corrupt-1700000000.1",
                           "kept.jobstate.corrupt-notes", "kept2.jobstate.corrupt-1700000000"}) {
    std::ofstream(state + file) << "x";
  }
  std::tie(rc, out) = ctl("--json forget --job=kept");
  EXPECT_EQ(rc, 0) << out;
  for (const char* field : {"\"job\":\"kept\"", "\"held\":false", "\"checkpoint\":true",
                            "\"checkpoint_file\":true", "\"set_aside_files_deleted\":2"}) {
    EXPECT_NE(out.find(field), std::string::npos) << out;
  }
  EXPECT_FALSE(std::filesystem::exists(state + "kept.jobstate.corrupt-1700000000.1"));
  EXPECT_TRUE(std::filesystem::exists(state + "kept.jobstate.corrupt-notes"));
  EXPECT_TRUE(std::filesystem::exists(state + "kept2.jobstate.corrupt-1700000000"));
  std::tie(rc, out) = ctl("forget --job=kept");
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("no job 'kept'"), std::string::npos) << out;
  // A job gstabd holds nothing of but set-aside files (a checkpoint garbled at start): an
  // operator's forget deletes them; they said "no job" before, and stayed.
  std::tie(rc, out) = ctl("forget --job=kept2");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("forgot job kept2 (nothing but set-aside files; 1 set-aside file(s) "
                     "deleted)"),
            std::string::npos)
      << out;
  EXPECT_FALSE(std::filesystem::exists(state + "kept2.jobstate.corrupt-1700000000"));
  std::tie(rc, out) = ctl("forget --job=kept2");
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("no checkpoint of it and no set-aside file"), std::string::npos) << out;
  for (const std::string job : {"held", "kept"}) {
    auto fresh = TestWorker::Create(daemon->socket(), JobOptions(job));
    ASSERT_TRUE(fresh.ok()) << fresh.status();
    EXPECT_FALSE((*fresh)->client().attach_response().restored()) << job;
    (*fresh)->Fill(1, 1);
    EXPECT_TRUE((*fresh)->client().Step(1).ok()) << job;
  }
}

// gstabd stopping while a worker waits in Step for the job's other local worker, whose Step it
// now refuses: the waiting Step answers UNAVAILABLE at once, and gstabd checkpoints the job and
// exits in time, rather than after the step timeout (when Kubernetes may have killed it).
TEST(E2eLifecycleTest, StoppingAnswersAStepThatWaitsForAnotherLocalWorker) {
  TempDir dir;
  absl::StatusOr<DaemonProcess> daemon =
      DaemonProcess::Start(dir.path(), {"--step_timeout_ms=60000"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  std::vector<std::unique_ptr<TestWorker>> workers;
  for (uint32_t rank = 0; rank < 2; ++rank) {
    AttachOptions options = JobOptions("pair");
    options.rank = options.local_rank = rank;
    options.world_size = options.local_world_size = 2;
    absl::StatusOr<std::unique_ptr<TestWorker>> w = TestWorker::Create(daemon->socket(), options);
    ASSERT_TRUE(w.ok()) << w.status();
    workers.push_back(*std::move(w));
  }
  absl::StatusOr<v1::StepResponse> first;
  std::thread together([&] { first = workers[1]->client().Step(1); });
  ASSERT_TRUE(workers[0]->client().Step(1).ok());
  together.join();
  ASSERT_TRUE(first.ok()) << first.status();

  absl::StatusOr<v1::StepResponse> waiting;
  std::thread alone([&] { waiting = workers[0]->client().Step(2); });
  // In Step, waiting for local rank 1.
  ASSERT_TRUE(testing::WaitForArrivals(&workers[1]->client(), {0}));
  EXPECT_EQ(daemon->Stop().value_or(-1), 0);
  alone.join();
  // Answered as gstabd stops (UNAVAILABLE), not left to its 60 s step timeout.
  EXPECT_EQ(waiting.status().code(), absl::StatusCode::kUnavailable) << waiting.status();
  EXPECT_NE(waiting.status().message().find("gstabd is shutting down; step 2 of job 'pair' was "
                                            "not taken"),
            std::string::npos)
      << waiting.status();
  EXPECT_TRUE(std::filesystem::exists(dir.path() + "/state/pair.jobstate"));
}

}  // namespace
}  // namespace gstab
