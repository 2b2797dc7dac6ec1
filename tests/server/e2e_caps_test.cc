// End-to-end: gstabd's caps on what one owner, job or caller may hold (jobs, checkpoints,
// observers, event streams, calls waiting), each refused with RESOURCE_EXHAUSTED naming its flag
// while the others go on; at start, a second gstabd on a
// live socket and flags that would refuse everything.
#include <atomic>
#include <csignal>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

using testing::DaemonProcess;
using testing::JobOptions;
using testing::TempDir;
using testing::TestWorker;

// A second gstabd given the socket a running one serves on exits saying so, rather than take
// the path over and cut the first one's workers off; flags that would refuse every job or
// registration are refused at start.
TEST(E2eCapsTest, ASecondGstabdOnALiveSocketAndUselessCapsAreRefusedAtStart) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto start = [&](const std::string& flag) {
    return testing::RunBounded(
        {testing::BinaryPath("server/gstabd"), "--socket=" + daemon->socket(),
         "--state_dir=" + dir.path() + "/second", "--metrics_port=-1", "--backend=cpu", flag});
  };
  auto [code, out] = start("--lease_ms=2000");
  EXPECT_NE(code, 0);
  EXPECT_NE(out.find("serves on '" + daemon->socket() + "'"), std::string::npos) << out;
  auto worker = TestWorker::Create(daemon->socket(), JobOptions("first-serves-on"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  (*worker)->Fill(1, 1);
  EXPECT_TRUE((*worker)->client().Step(1).ok());
  for (const char* flag :
       {"--max_jobs=0", "--max_bytes=0", "--cpu_threads=-1", "--max_connections_per_uid=0",
        "--max_mappings_per_owner=0", "--metrics_port=-2", "--metrics_port=65536",
        "--keepalive_ms=0", "--keepalive_timeout_ms=-1"}) {
    auto [refused, why] = start(flag);
    EXPECT_EQ(refused, 2) << flag << ": " << why;
    EXPECT_NE(why.find(std::string(flag).substr(2, std::string(flag).find('=') - 2)),
              std::string::npos)
        << why;
  }
}

// One owner holds at most --max_jobs_per_owner jobs: a new one past it is refused, saying
// why, while its held jobs go on taking workers; a forgotten one makes room.
TEST(E2eCapsTest, AnOwnerHoldsAtMostItsCapOfJobs) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path(), {"--max_jobs_per_owner=2"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  std::vector<std::unique_ptr<TestWorker>> workers;
  for (const std::string job : {"mine-1", "mine-2"}) {
    auto w = TestWorker::Create(daemon->socket(), JobOptions(job));
    ASSERT_TRUE(w.ok()) << w.status();
    workers.push_back(*std::move(w));
  }
  auto third = Client::Connect(daemon->socket());
  ASSERT_TRUE(third.ok());
  absl::Status refused = (*third)->Attach(JobOptions("mine-3"));
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_NE(refused.message().find("uid " + std::to_string(geteuid()) + " already owns 2"),
            std::string::npos)
      << refused;
  EXPECT_NE(refused.message().find("--max_jobs_per_owner"), std::string::npos) << refused;
  // A held job takes a worker still (here a restarted rank 0, replacing the first's session).
  EXPECT_TRUE((*third)->Attach(JobOptions("mine-1")).ok());
  ASSERT_TRUE((*third)->Detach().ok());
  ASSERT_TRUE(workers[1]->client().Detach().ok());
  auto [rc, out] = testing::RunShell(testing::BinaryPath("tools/gstabctl") +
                                     " --socket=" + daemon->socket() + " forget --job=mine-2");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_TRUE((*third)->Attach(JobOptions("mine-3")).ok());
}

// At its cap an owner's new job retires the owner's longest idle job (kept as its checkpoint),
// as the node's cap does: a sweep of short jobs under one uid is not refused for an hour of
// --job_idle_s.
TEST(E2eCapsTest, AnOwnersNewJobRetiresItsLongestIdleJobAtItsCap) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path(), {"--max_jobs_per_owner=2", "--lease_ms=500"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  for (const std::string job : {"sweep-1", "sweep-2"}) {
    auto w = TestWorker::Create(daemon->socket(), JobOptions(job));
    ASSERT_TRUE(w.ok()) << w.status();
    (*w)->Fill(1, 1);
    ASSERT_TRUE((*w)->client().Step(1).ok());
    ASSERT_TRUE((*w)->client().Detach().ok());
    absl::SleepFor(absl::Milliseconds(100));  // sweep-1 is the longer idle
  }
  absl::SleepFor(absl::Milliseconds(600));  // both idle for a lease
  auto third = TestWorker::Create(daemon->socket(), JobOptions("sweep-3"));
  ASSERT_TRUE(third.ok()) << third.status();
  auto lister = Client::Connect(daemon->socket());
  ASSERT_TRUE(lister.ok());
  v1::ListJobsRequest request;
  request.set_include_retired(true);
  v1::ListJobsResponse jobs;
  grpc::ClientContext ctx;
  ASSERT_TRUE((*lister)->stub()->ListJobs(&ctx, request, &jobs).ok());
  std::map<std::string, bool> retired;
  std::map<std::string, v1::JobSummary> held;
  for (const v1::JobSummary& j : jobs.jobs()) {
    retired[j.job()] = j.retired();
    if (!j.retired()) held[j.job()] = j;
  }
  EXPECT_EQ(retired, (std::map<std::string, bool>{
                         {"sweep-1", true}, {"sweep-2", false}, {"sweep-3", false}}));
  // Each held job's line: stepped once and left (its buffers gone), or registered and waiting.
  EXPECT_EQ(held["sweep-2"].steps(), 1u);
  EXPECT_EQ(held["sweep-2"].last_step(), 1u);
  EXPECT_EQ(held["sweep-2"].groups(), 3u);
  EXPECT_EQ(held["sweep-2"].registered_bytes(), 0u);
  EXPECT_EQ(held["sweep-3"].steps(), 0u);
  EXPECT_EQ(held["sweep-3"].groups(), 3u);
  EXPECT_GT(held["sweep-3"].registered_bytes(), 0u);
  EXPECT_EQ(held["sweep-3"].local_world_size(), 1u);
  EXPECT_EQ(held["sweep-3"].policy(), "stabilize");
  EXPECT_TRUE(daemon->WaitForLog("'s cap of 2 jobs")) << daemon->Log();
  // Back from its checkpoint, sweep-1 makes room in turn.
  auto again = TestWorker::Create(daemon->socket(), JobOptions("sweep-1"));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE((*again)->client().attach_response().restored());
}

// New jobs attaching at once at the node's cap each find room: two attaches that picked the same
// idle job to retire (one retires it, the other then finds the room it made taken) make room
// again rather than refuse with RESOURCE_EXHAUSTED while other jobs sit idle.
TEST(E2eCapsTest, NewJobsAttachingAtOnceAtTheCapEachFindRoom) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path(), {"--max_jobs=12", "--lease_ms=500"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  int next = 0;
  for (int round = 0; round < 5; ++round) {
    // Twelve idle jobs for a lease (the first round's; later, the last round's new ones).
    if (round == 0) {
      for (int i = 0; i < 12; ++i) {
        auto w = TestWorker::Create(daemon->socket(), JobOptions(absl::StrCat("idle-", next++)));
        ASSERT_TRUE(w.ok()) << w.status();
      }
    }
    absl::SleepFor(absl::Milliseconds(700));
    std::vector<absl::Status> attached(12);
    std::vector<std::thread> threads;
    for (int i = 0; i < 12; ++i) {
      const std::string job = absl::StrCat("idle-", next++);
      threads.emplace_back([&, i, job] {
        auto client = Client::Connect(daemon->socket());
        attached[i] = client.ok() ? (*client)->Attach(JobOptions(job)) : client.status();
        // Detached as the client goes: idle in turn for the next round.
      });
    }
    for (std::thread& t : threads) t.join();
    for (int i = 0; i < 12; ++i) {
      EXPECT_TRUE(attached[i].ok()) << "round " << round << " attach " << i << ": " << attached[i];
    }
  }
}

// An owner keeps at most --max_checkpoints_per_owner checkpoints of jobs it no longer holds:
// past it, its oldest is deleted (one making and leaving jobs in a loop cannot fill the state
// directory).
TEST(E2eCapsTest, AnOwnerKeepsAtMostItsCapOfCheckpoints) {
  TempDir dir;
  auto daemon =
      DaemonProcess::Start(dir.path(), {"--job_idle_s=1", "--max_checkpoints_per_owner=2"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto file = [&](const std::string& job) { return dir.path() + "/state/" + job + ".jobstate"; };
  for (const std::string job : {"oldest", "older", "newest"}) {
    auto worker = TestWorker::Create(daemon->socket(), JobOptions(job));
    ASSERT_TRUE(worker.ok()) << worker.status();
    (*worker)->Fill(1, 1);
    ASSERT_TRUE((*worker)->client().Step(1).ok());
    ASSERT_TRUE((*worker)->client().Detach().ok());
    // Retired (checkpointed) before the next: each has a checkpoint time of its own.
    for (int i = 0; i < 300 && !std::filesystem::exists(file(job)); ++i) {
      absl::SleepFor(absl::Milliseconds(100));
    }
    ASSERT_TRUE(std::filesystem::exists(file(job))) << job << " was not retired within 30 s";
    absl::SleepFor(absl::Milliseconds(10));
  }
  for (int i = 0; i < 300 && std::filesystem::exists(file("oldest")); ++i) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_FALSE(std::filesystem::exists(file("oldest")));
  EXPECT_TRUE(std::filesystem::exists(file("older")));
  EXPECT_TRUE(std::filesystem::exists(file("newest")));
  EXPECT_TRUE(daemon->WaitForLog("keeps 2 newer ones (--max_checkpoints_per_owner)"))
      << daemon->Log();
}

// A job has at most 64 observer sessions at once, and 8 more of operators (as this test's root
// is: e2e_tcp_streams_test has others' cap); one detached makes room, and workers are not counted.
TEST(E2eCapsTest, AJobHasAtMostItsCapOfObservers) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto worker = TestWorker::Create(daemon->socket(), JobOptions("watched"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  AttachOptions watch = JobOptions("watched");
  watch.observer = true;
  std::vector<std::unique_ptr<Client>> observers;
  for (int i = 0; i < 72; ++i) {
    auto c = Client::Connect(daemon->socket());
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE((*c)->Attach(watch).ok()) << "observer " << i;
    observers.push_back(*std::move(c));
  }
  auto one_more = Client::Connect(daemon->socket());
  ASSERT_TRUE(one_more.ok());
  absl::Status refused = (*one_more)->Attach(watch);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_NE(refused.message().find("already has 72 observer sessions, the most a job has, "
                                   "operators' included"),
            std::string::npos)
      << refused;
  ASSERT_TRUE(observers.back()->Detach().ok());
  EXPECT_TRUE((*one_more)->Attach(watch).ok());
  // The job's worker steps on meanwhile.
  (*worker)->Fill(1, 1);
  EXPECT_TRUE((*worker)->client().Step(1).ok());
}

// Each event stream holds a thread and a queue in gstabd: with `flags` capping them at 2 (a
// caller's, or every caller's), a third is refused naming `cap`, and one closed makes room.
void ExpectTwoEventStreamsAtMost(const std::vector<std::string>& flags, const std::string& cap) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path(), flags);
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto worker = testing::TestWorker::Create(daemon->socket(), testing::JobOptions("streamed"));
  ASSERT_TRUE(worker.ok()) << worker.status();  // its ATTACH: every stream's first event
  auto client = Client::Connect(daemon->socket());
  ASSERT_TRUE(client.ok());
  v1::WatchEventsRequest request;
  request.set_follow(true);
  request.set_recent(10);
  struct Stream {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReader<v1::Event>> reader;
  };
  auto open = [&] {
    auto s = std::make_unique<Stream>();
    s->reader = (*client)->stub()->WatchEvents(&s->ctx, request);
    return s;
  };
  std::vector<std::unique_ptr<Stream>> streams;
  for (int i = 0; i < 2; ++i) {
    streams.push_back(open());
    v1::Event e;
    ASSERT_TRUE(streams.back()->reader->Read(&e)) << "stream " << i;
    EXPECT_EQ(e.type(), v1::EVENT_TYPE_ATTACH);
  }
  std::unique_ptr<Stream> third = open();
  v1::Event e;
  EXPECT_FALSE(third->reader->Read(&e));
  const grpc::Status refused = third->reader->Finish();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(refused.error_message().find(cap + ")"), std::string::npos) << refused.error_message();
  // One closed (gstabd notices within its 200 ms poll) makes room for another.
  streams[0]->ctx.TryCancel();
  (void)streams[0]->reader->Finish();
  bool reopened = false;
  for (int i = 0; i < 100 && !reopened; ++i) {
    std::unique_ptr<Stream> again = open();
    reopened = again->reader->Read(&e);
    if (!reopened) {
      (void)again->reader->Finish();
      absl::SleepFor(absl::Milliseconds(100));
    } else {
      again->ctx.TryCancel();
      (void)again->reader->Finish();
    }
  }
  EXPECT_TRUE(reopened) << "no stream could open after one closed";
  for (auto& s : streams) s->ctx.TryCancel();
  for (size_t i = 1; i < streams.size(); ++i) (void)streams[i]->reader->Finish();
}

TEST(E2eCapsTest, ACallerHasAtMostItsCapOfEventStreams) {
  ExpectTwoEventStreamsAtMost({"--max_event_streams=2"}, "--max_event_streams");
}

TEST(E2eCapsTest, EveryCallerTogetherHasAtMostTheTotalCapOfEventStreams) {
  ExpectTwoEventStreamsAtMost({"--max_event_streams=4", "--max_event_streams_total=2"},
                              "--max_event_streams_total");
}

// A reader of an event stream that stopped answering (here stopped; a host gone is the same to
// gstabd) loses its stream once it misses gstabd's keep-alive ping, and its place under
// --max_event_streams with it: without the ping it held the place for good.
TEST(E2eCapsTest, AStoppedEventReaderLosesItsStreamAtTheKeepAlive) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(
      dir.path(), {"--max_event_streams=1", "--keepalive_ms=1000", "--keepalive_timeout_ms=2000"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto worker = TestWorker::Create(daemon->socket(), JobOptions("watched"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  absl::StatusOr<testing::Subprocess> reader =
      testing::Subprocess::Start({testing::BinaryPath("tools/gstabctl"),
                                  "--socket=" + daemon->socket(), "events", "--follow"});
  ASSERT_TRUE(reader.ok()) << reader.status();
  absl::StatusOr<std::string> first = reader->ReadLine(absl::Seconds(10));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_NE(first->find("ATTACH"), std::string::npos) << *first;  // it holds the one place
  ASSERT_TRUE(reader->Stop());
  auto client = Client::Connect(daemon->socket());
  ASSERT_TRUE(client.ok());
  v1::WatchEventsRequest request;
  request.set_recent(1);
  grpc::Status last;
  bool opened = false;
  const absl::Time until = absl::Now() + absl::Seconds(20);
  while (!opened && absl::Now() < until) {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReader<v1::Event>> stream =
        (*client)->stub()->WatchEvents(&ctx, request);
    v1::Event e;
    opened = stream->Read(&e);
    last = stream->Finish();
    if (!opened) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(opened) << "the stopped reader still holds its place: " << last.error_message();
  reader->Signal(SIGKILL);
  (void)reader->Wait(absl::Seconds(10));
}

// An event stream for a job no job could be named is refused, saying so, rather than streaming
// nothing (a misspelled name).
TEST(E2eCapsTest, AnEventStreamForANameNoJobCouldHaveIsRefused) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto client = Client::Connect(daemon->socket());
  ASSERT_TRUE(client.ok()) << client.status();
  v1::WatchEventsRequest request;
  request.set_job("no such job!");
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReader<v1::Event>> stream =
      (*client)->stub()->WatchEvents(&ctx, request);
  v1::Event e;
  EXPECT_FALSE(stream->Read(&e));
  const grpc::Status refused = stream->Finish();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << refused.error_message();
  EXPECT_NE(refused.error_message().find("must be 1 to 128 characters"), std::string::npos)
      << refused.error_message();
}

// A caller's calls that wait in gstabd (here Steps waiting for their job's third worker) are
// capped: one more is refused at once, naming the flag, and room comes back as they end (the
// third worker detaches: they fail at once).
TEST(E2eCapsTest, ACallerHasAtMostItsCapOfWaitingCalls) {
  TempDir dir;
  auto daemon =
      DaemonProcess::Start(dir.path(), {"--max_calls_per_caller=2", "--step_timeout_ms=60000"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  std::vector<std::unique_ptr<TestWorker>> ranks;
  for (uint32_t rank = 0; rank < 3; ++rank) {
    AttachOptions o = JobOptions("waiting");
    o.local_rank = rank;
    o.local_world_size = 3;
    auto worker = TestWorker::Create(daemon->socket(), o);
    ASSERT_TRUE(worker.ok()) << worker.status();
    (*worker)->Fill(1, rank + 1);
    ranks.push_back(*std::move(worker));
  }
  std::vector<absl::Status> waited(2);
  std::vector<std::thread> steps;
  for (size_t rank = 0; rank < 2; ++rank) {
    steps.emplace_back([&, rank] { waited[rank] = ranks[rank]->client().Step(1).status(); });
  }
  // GetStats is counted too: refused once both Steps wait (it sees at most one arrived).
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  for (absl::StatusOr<v1::GetStatsResponse> stats = ranks[2]->client().GetStats(); stats.ok();
       stats = ranks[2]->client().GetStats()) {
    ASSERT_LT(absl::Now(), deadline) << "the two Steps never both waited";
    ASSERT_LT(stats->arrived_local_ranks_size(), 2) << "GetStats was not counted";
    absl::SleepFor(absl::Milliseconds(10));
  }
  const absl::Status refused = ranks[2]->client().Step(1).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_NE(refused.message().find("2 calls waiting in gstabd"), std::string::npos) << refused;
  EXPECT_NE(refused.message().find("--max_calls_per_caller"), std::string::npos) << refused;
  // Every call that may wait on a busy job is counted (as ExportState, on the job's lock).
  const absl::Status exported = ranks[2]->client().ExportState().status();
  EXPECT_EQ(exported.code(), absl::StatusCode::kResourceExhausted) << exported;
  auto observer = Client::Connect(daemon->socket());
  ASSERT_TRUE(observer.ok()) << observer.status();
  const absl::Status rendezvous = (*observer)->CreateRendezvous("other", 2).status();
  EXPECT_EQ(rendezvous.code(), absl::StatusCode::kResourceExhausted) << rendezvous;
  // Health checks are answered still (a probe must not fail for one busy caller).
  EXPECT_TRUE((*observer)->CheckHealth().ok());
  ASSERT_TRUE(ranks[2]->client().Detach().ok());
  for (std::thread& t : steps) t.join();
  for (const absl::Status& s : waited) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  }
  auto other = TestWorker::Create(daemon->socket(), JobOptions("after"));
  EXPECT_TRUE(other.ok()) << other.status();
}

// Requests are received whole before gstabd checks who sent them: past --rpc_memory_mb of them
// at once, calls are cancelled with RESOURCE_EXHAUSTED, and gstabd serves on.
TEST(E2eCapsTest, RequestsPastTheirMemoryAreCancelledAndGstabdServesOn) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path(), {"--rpc_memory_mb=128"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto client = Client::Connect(daemon->socket());
  ASSERT_TRUE(client.ok()) << client.status();
  v1::ImportStateRequest big;
  big.set_session("not-a-session");
  big.set_state(std::string(size_t{60} << 20, 'x'));
  auto import = [&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    v1::ImportStateResponse response;
    return (*client)->stub()->ImportState(&ctx, big, &response);
  };
  // One request near the largest gstabd takes is not refused for its size: it is answered.
  const grpc::Status alone = import();
  EXPECT_EQ(alone.error_code(), grpc::StatusCode::UNAUTHENTICATED) << alone.error_message();
  // Sixteen at once would hold 960 MiB.
  std::atomic<int> cancelled{0};
  std::vector<std::thread> flood;
  for (int i = 0; i < 16; ++i) {
    flood.emplace_back([&] {
      if (import().error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) ++cancelled;
    });
  }
  for (std::thread& t : flood) t.join();
  EXPECT_GT(cancelled.load(), 0);
  auto worker = TestWorker::Create(daemon->socket(), JobOptions("after-the-flood"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  (*worker)->Fill(1, 1);
  EXPECT_TRUE((*worker)->client().Step(1).ok());
}

}  // namespace
}  // namespace gstab
