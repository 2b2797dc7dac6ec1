// Multi-node jobs on the CPU backend and their rendezvous: blobs that are old, expired, used
// again, made on each node or lacking parts; two nodes of one rank; and gstabd's stop while a
// step waits for other nodes.
#include <csignal>
#include <thread>

#include "absl/strings/match.h"
#include "tests/server/multinode_cluster.h"

namespace gstab {
namespace {

using testing::Cluster;
using testing::NodeOptions;
using testing::Same;
using testing::StepAll;
using testing::TestWorker;

// A worker that attaches with an older blob than its job runs with (a restart that kept an old
// GSTAB_RENDEZVOUS) is refused, and the job's current generation goes on; also after its node's
// gstabd restarts.
TEST(MultiNodeFaultTest, AnOlderRendezvousIsRefusedAndTheCurrentOneGoesOn) {
  Cluster cluster(2);
  const std::string old_blob = cluster.Rendezvous("stale");
  auto workers = cluster.Attach("stale");  // with a newer blob: the next generation
  for (size_t i = 0; i < 2; ++i) workers[i]->Fill(1, static_cast<uint32_t>(1 + i));
  for (auto& r : StepAll(workers, Same(2, 1))) ASSERT_TRUE(r.ok()) << r.status();

  absl::Status refused =
      TestWorker::Create(cluster.daemon(1).socket(), NodeOptions("stale", 1, 2, old_blob)).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_NE(refused.message().find("is older than the one the job runs with"), std::string::npos)
      << refused;
  // A blob from before the store's gstabd last started is older whatever its generation (it
  // counts from each start): as if made by that gstabd's earlier run.
  v1::RendezvousInfo before_restart;
  ASSERT_TRUE(before_restart.ParseFromString(old_blob));
  before_restart.set_store_started_us(before_restart.store_started_us() - 1000000);
  before_restart.set_generation(before_restart.generation() + 100);
  refused = TestWorker::Create(cluster.daemon(1).socket(),
                               NodeOptions("stale", 1, 2, before_restart.SerializeAsString()))
                .status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_NE(refused.message().find("was made before the store's gstabd last started"),
            std::string::npos)
      << refused;
  for (size_t i = 0; i < 2; ++i) workers[i]->Fill(2, static_cast<uint32_t>(1 + i));
  for (auto& r : StepAll(workers, Same(2, 2))) EXPECT_TRUE(r.ok()) << r.status();

  // Node 1's gstabd restarts: the job's checkpoint there remembers its rendezvous, so the old
  // blob is still refused (before, a restarted gstabd took it, and its steps waited out the
  // timeout for nodes that had moved on).
  workers[1].reset();
  ASSERT_TRUE(cluster.daemon(1).Stop().ok());
  cluster.Start(1);
  refused =
      TestWorker::Create(cluster.daemon(1).socket(), NodeOptions("stale", 1, 2, old_blob)).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_NE(refused.message().find("is older than the one the job runs with"), std::string::npos)
      << refused;
}

// A blob from a gstabd that lays out the cross-node records otherwise (another release, met
// mid-rollout) is refused at attach, saying so, rather than reduced with the wrong layout.
TEST(MultiNodeFaultTest, ABlobFromAnotherReleasesRecordLayoutIsRefused) {
  Cluster cluster(2);
  v1::RendezvousInfo info;
  ASSERT_TRUE(info.ParseFromString(cluster.Rendezvous("mixed")));
  info.set_peer_records("check 16, rule 1, statistics 1");
  absl::Status refused = TestWorker::Create(cluster.daemon(1).socket(),
                                            NodeOptions("mixed", 1, 2, info.SerializeAsString()))
                             .status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_NE(refused.message().find("every node of a job runs the same gstabd release"),
            std::string::npos)
      << refused;
}

// A blob stripped of its token or store address is refused: with no token it would match a new
// job's empty one, and node 0 would step alone, summing its own shards only.
TEST(MultiNodeFaultTest, ABlobWithoutItsTokenOrStoreIsRefused) {
  Cluster cluster(2);
  v1::RendezvousInfo info;
  ASSERT_TRUE(info.ParseFromString(cluster.Rendezvous("stripped")));
  for (int field = 0; field < 2; ++field) {
    v1::RendezvousInfo stripped = info;
    if (field == 0) stripped.clear_token();
    if (field == 1) stripped.clear_store_address();
    absl::Status refused =
        TestWorker::Create(cluster.daemon(0).socket(),
                           NodeOptions("stripped", 0, 2, stripped.SerializeAsString()))
            .status();
    EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
    EXPECT_NE(refused.message().find("no rendezvous token or store address"), std::string::npos)
        << refused;
  }
}

// Node 0's gstabd killed before its first checkpoint and started again holds the job afresh: at
// the new rendezvous every node takes node 0's statistics, and node 1, whose had counted three
// steps, says that they are gone (its Step, an event), where nothing showed it before.
TEST(MultiNodeFaultTest, ANodeTakingOlderStatisticsFromNodeZeroSaysSo) {
  Cluster cluster(2);
  auto workers = cluster.Attach("rolled");
  for (uint64_t step = 1; step <= 3; ++step) {
    for (size_t i = 0; i < 2; ++i) workers[i]->Fill(step, static_cast<uint32_t>(1 + i));
    for (auto& r : StepAll(workers, Same(2, step))) ASSERT_TRUE(r.ok()) << r.status();
  }
  cluster.daemon(0).process().Signal(SIGKILL);
  ASSERT_TRUE(cluster.daemon(0).process().Wait(absl::Seconds(10)).ok());
  workers.clear();
  cluster.Start(0);
  workers = cluster.Attach("rolled");
  ASSERT_EQ(workers.size(), 2u);
  for (size_t i = 0; i < 2; ++i) workers[i]->Fill(4, static_cast<uint32_t>(1 + i));
  std::vector<absl::StatusOr<v1::StepResponse>> r = StepAll(workers, Same(2, 4));
  ASSERT_TRUE(r[0].ok() && r[1].ok()) << r[0].status() << r[1].status();
  EXPECT_EQ(r[0]->statistics_rolled_back(), 0u);
  EXPECT_EQ(r[1]->statistics_rolled_back(), 3u);
  EXPECT_EQ(r[1]->groups(0).norm(), r[0]->groups(0).norm());  // one state again
  EXPECT_EQ(r[1]->groups(0).scale(), r[0]->groups(0).scale());
  auto [rc, events] = testing::RunShell(testing::BinaryPath("tools/gstabctl") + " --socket=" +
                                        cluster.daemon(1).socket() + " events --job=rolled");
  EXPECT_EQ(rc, 0) << events;
  EXPECT_NE(events.find("ROLLED_BACK"), std::string::npos) << events;
  EXPECT_NE(events.find("counted up to 3 steps fewer than this node's"), std::string::npos)
      << events;
}

// A job restarted with a new rendezvous and without its gstab state, at a step before node 0's
// last: node 0 refuses it in the step's check, so every node refuses it at once, saying which
// step to go on from (the other nodes, whose step count the new rendezvous reset, waited out
// the step timeout, then blamed a stalled node). The job goes on from there, its nodes alike.
TEST(MultiNodeFaultTest, AStepBeforeNodeZerosLastIsRefusedOnEveryNode) {
  Cluster cluster(2);
  auto workers = cluster.Attach("renumbered");
  auto step_all = [&](uint64_t step) {
    for (size_t i = 0; i < 2; ++i) workers[i]->Fill(step, static_cast<uint32_t>(1 + i));
    return StepAll(workers, Same(2, step));
  };
  for (uint64_t step = 1; step <= 5; ++step) {
    for (auto& r : step_all(step)) ASSERT_TRUE(r.ok()) << r.status();
  }
  workers = cluster.Attach("renumbered");  // resumed from an older framework checkpoint
  ASSERT_EQ(workers.size(), 2u);
  for (auto& r : step_all(3)) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(),
                                  "is not after its last step, 5 (node 0's: the job's nodes "
                                  "follow node 0's step numbers): go on from step 6"))
        << r.status();
  }
  std::vector<absl::StatusOr<v1::StepResponse>> r = step_all(6);
  ASSERT_TRUE(r[0].ok() && r[1].ok()) << r[0].status() << r[1].status();
  EXPECT_EQ(r[1]->groups(0).scale(), r[0]->groups(0).scale());
  for (auto& w : workers) {
    absl::StatusOr<v1::GetStatsResponse> stats = w->client().GetStats();
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_EQ(stats->groups(0).accepted_steps(), 6u);  // 5, then 6: step 3 changed nothing
  }
}

// A blob whose token node 0's store no longer keeps (two newer ones were made since): the step
// says so, and what to do, rather than blame node 0 for not responding.
TEST(MultiNodeFaultTest, AnExpiredBlobIsSaidSoNotBlamedOnANode) {
  Cluster cluster(2, {"--step_timeout_ms=3000"});
  const std::string first = cluster.Rendezvous("expired");
  for (int newer = 0; newer < 2; ++newer) ASSERT_FALSE(cluster.Rendezvous("expired").empty());
  std::vector<std::unique_ptr<TestWorker>> workers = cluster.Attach("expired", first);
  ASSERT_EQ(workers.size(), 2u);
  for (size_t n = 0; n < 2; ++n) workers[n]->Fill(1, 1);
  for (auto& r : StepAll(workers, Same(2, 1))) {
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
    EXPECT_NE(r.status().message().find("expired rendezvous token"), std::string::npos)
        << r.status();
    EXPECT_NE(r.status().message().find("make a new one"), std::string::npos) << r.status();
    EXPECT_EQ(r.status().message().find("did not respond"), std::string::npos) << r.status();
  }
}

// A worker on each node of `cluster`, attached to `job` and through its first step.
void AttachAndStepOnce(Cluster* cluster, const std::string& job,
                       std::vector<std::unique_ptr<TestWorker>>* workers) {
  *workers = cluster->Attach(job);
  ASSERT_EQ(workers->size(), static_cast<size_t>(cluster->size()));
  for (auto& w : *workers) w->Fill(1, 1);
  for (auto& r : StepAll(*workers, Same(workers->size(), 1))) ASSERT_TRUE(r.ok()) << r.status();
}

// A node lost once node 0's store has let go of the job's rendezvous (two newer of the job
// made since, or its cap): the others cannot ask the store which node is missing, and say so
// with its answer, blaming no node (they named node 0, which was there).
TEST(MultiNodeFaultTest, ANodeLostAfterTheStoreLetGoOfTheRendezvousBlamesNoNode) {
  Cluster cluster(3);
  std::vector<std::unique_ptr<TestWorker>> workers;
  ASSERT_NO_FATAL_FAILURE(AttachAndStepOnce(&cluster, "let-go", &workers));
  for (int newer = 0; newer < 2; ++newer) ASSERT_FALSE(cluster.Rendezvous("let-go").empty());
  cluster.daemon(2).process().Signal(SIGKILL);
  ASSERT_TRUE(cluster.daemon(2).process().Wait(absl::Seconds(10)).ok());
  workers.pop_back();
  for (size_t n = 0; n < 2; ++n) workers[n]->Fill(2, 1);
  for (auto& r : StepAll(workers, Same(2, 2))) {
    ASSERT_FALSE(r.ok());
    const std::string message(r.status().message());
    EXPECT_NE(message.find("node 0's rendezvous store could not say which"), std::string::npos)
        << r.status();
    EXPECT_NE(message.find("expired rendezvous token"), std::string::npos) << r.status();
    EXPECT_EQ(message.find("node(s) 0"), std::string::npos) << r.status();
  }
}

// Node 0 stalled (its machine paused, or cut off): its store does not answer either, and the
// others name node 0, which is what is missing.
TEST(MultiNodeFaultTest, AStalledNodeZeroIsNamed) {
  Cluster cluster(3);
  std::vector<std::unique_ptr<TestWorker>> workers;
  ASSERT_NO_FATAL_FAILURE(AttachAndStepOnce(&cluster, "stalled-zero", &workers));
  ASSERT_TRUE(cluster.daemon(0).process().Stop());
  std::vector<std::unique_ptr<TestWorker>> others;
  others.push_back(std::move(workers[1]));
  others.push_back(std::move(workers[2]));
  for (auto& w : others) w->Fill(2, 1);
  auto failed = StepAll(others, Same(2, 2));
  cluster.daemon(0).process().Signal(SIGCONT);
  for (auto& r : failed) {
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("node(s) 0 of 3"), std::string::npos) << r.status();
  }
}

// Two gstabds given the same node_rank (a launcher that left it at 0): the second to connect
// is told so at once, naming the first, rather than every node waiting out its timeout.
TEST(MultiNodeFaultTest, TwoNodesOfOneNodeRankAreToldSo) {
  Cluster cluster(2);
  const std::string blob = cluster.Rendezvous("twins");
  std::vector<std::unique_ptr<TestWorker>> workers;
  for (int n = 0; n < 2; ++n) {
    auto w = TestWorker::Create(cluster.daemon(n).socket(), NodeOptions("twins", 0, 2, blob));
    ASSERT_TRUE(w.ok()) << w.status();
    workers.push_back(*std::move(w));
  }
  for (size_t i = 0; i < 2; ++i) workers[i]->Fill(1, static_cast<uint32_t>(1 + i));
  int told = 0;
  for (auto& r : StepAll(workers, Same(2, 1))) {
    EXPECT_FALSE(r.ok());
    if (r.status().code() == absl::StatusCode::kFailedPrecondition &&
        absl::StrContains(r.status().message(),
                          "node_rank 0 of job 'twins' is taken by the "
                          "gstabd at 127.0.0.1:")) {
      ++told;
    }
  }
  EXPECT_EQ(told, 1);
}

// A blob used again after the job was forgotten on every node (a stale GSTAB_RENDEZVOUS): the
// store still holds the earlier run's connection records, so the step is refused at once,
// saying so (it waited out the step timeout, then blamed a stalled node).
TEST(MultiNodeFaultTest, ABlobUsedAgainAfterAForgetIsSaidSo) {
  Cluster cluster(2, {"--step_timeout_ms=30000"});
  const std::string blob = cluster.Rendezvous("reused");
  {
    std::vector<std::unique_ptr<TestWorker>> run = cluster.Attach("reused", blob);
    ASSERT_EQ(run.size(), 2u);
    for (size_t i = 0; i < 2; ++i) run[i]->Fill(1, static_cast<uint32_t>(1 + i));
    for (auto& r : StepAll(run, Same(2, 1))) ASSERT_TRUE(r.ok()) << r.status();
    for (auto& w : run) ASSERT_TRUE(w->client().Detach().ok());
  }
  for (int n = 0; n < 2; ++n) {
    auto [rc, out] = testing::RunShell(testing::BinaryPath("tools/gstabctl") + " --socket=" +
                                       cluster.daemon(n).socket() + " forget --job=reused 2>&1");
    ASSERT_EQ(rc, 0) << out;
  }
  std::vector<std::unique_ptr<TestWorker>> again = cluster.Attach("reused", blob);
  ASSERT_EQ(again.size(), 2u);
  for (size_t i = 0; i < 2; ++i) again[i]->Fill(1, static_cast<uint32_t>(1 + i));
  const absl::Time start = absl::Now();
  int told = 0;
  for (auto& r : StepAll(again, Same(2, 1))) {
    EXPECT_FALSE(r.ok());
    told += absl::StrContains(r.status().message(), "was used already on this node");
  }
  EXPECT_GE(told, 1);
  EXPECT_LT(absl::Now() - start, absl::Seconds(25)) << "waited out the step timeout";
}

// A blob made on each node (not once, on node 0's): each node waits in its own store, and
// node 1 is told what most likely happened.
TEST(MultiNodeFaultTest, ABlobMadeOnEachNodeIsSaidSo) {
  Cluster cluster(2);
  std::vector<std::unique_ptr<TestWorker>> workers;
  for (int n = 0; n < 2; ++n) {
    auto client = Client::Connect(cluster.daemon(n).socket());
    ASSERT_TRUE(client.ok());
    absl::StatusOr<std::string> own = (*client)->CreateRendezvous("apart", 2);
    ASSERT_TRUE(own.ok()) << own.status();
    auto w = TestWorker::Create(cluster.daemon(n).socket(),
                                NodeOptions("apart", static_cast<uint32_t>(n), 2, *own));
    ASSERT_TRUE(w.ok()) << w.status();
    workers.push_back(*std::move(w));
  }
  for (size_t i = 0; i < 2; ++i) workers[i]->Fill(1, static_cast<uint32_t>(1 + i));
  auto results = StepAll(workers, Same(2, 1));
  EXPECT_FALSE(results[0].ok());
  EXPECT_FALSE(results[1].ok());
  EXPECT_NE(results[1].status().message().find("this node's own gstabd made the rendezvous blob"),
            std::string::npos)
      << results[1].status();
}

// A node whose step waits for nodes that never come (a job of 3 nodes, 2 started) does not
// hold gstabd's stop for the step timeout (a minute here), whether it waits in its own store
// (node 0) or in another node's (node 1, in node 0's): those waits end with the drain, and
// gstabd exits 0 with its statistics saved.
TEST(MultiNodeStopTest, AStepWaitingForAbsentNodesDoesNotHoldTheStop) {
  Cluster cluster(2, {"--step_timeout_ms=60000"});
  std::vector<std::unique_ptr<TestWorker>> workers = cluster.AttachFirstOf("partial", 3);
  ASSERT_TRUE(workers[0] != nullptr && workers[1] != nullptr);
  std::vector<std::thread> stepping;
  std::vector<absl::Status> stepped(2);
  for (size_t n = 0; n < 2; ++n) {
    workers[n]->Fill(1, 1);
    stepping.emplace_back([&, n] { stepped[n] = workers[n]->client().Step(1).status(); });
  }
  absl::SleepFor(absl::Seconds(1));  // in the step's connection to the other nodes
  for (int n : {1, 0}) {
    testing::DaemonProcess& d = cluster.daemon(n);
    EXPECT_EQ(d.Stop().value_or(-1), 0) << "node " << n << ": " << d.Log();
    EXPECT_NE(d.Log().find("statistics checkpointed"), std::string::npos) << d.Log();
  }
  for (std::thread& t : stepping) t.join();
  // Node 1's step says its own gstabd stopped it, not that node 0 did not respond.
  EXPECT_NE(stepped[1].message().find("on node 1: "), std::string::npos) << stepped[1];
  EXPECT_NE(stepped[1].message().find("this gstabd is stopping"), std::string::npos) << stepped[1];
  EXPECT_EQ(cluster.daemon(1).Log().find("did not respond"), std::string::npos)
      << cluster.daemon(1).Log();
}

// Node 0 stopping first, while node 1's step waits in its store for a node that never came:
// node 1 is told that node 0's gstabd is stopping (it read "this gstabd is stopping", its own
// gstabd running on).
TEST(MultiNodeStopTest, NodeZerosStopIsSaidSoOnTheOtherNodes) {
  Cluster cluster(2, {"--step_timeout_ms=20000"});
  std::vector<std::unique_ptr<TestWorker>> workers = cluster.AttachFirstOf("zero-stops", 3);
  ASSERT_TRUE(workers[0] != nullptr && workers[1] != nullptr);
  absl::Status stepped;
  workers[1]->Fill(1, 1);
  std::thread stepping([&] { stepped = workers[1]->client().Step(1).status(); });
  absl::SleepFor(absl::Seconds(1));  // in the step's wait in node 0's store for node 2
  EXPECT_EQ(cluster.daemon(0).Stop().value_or(-1), 0) << cluster.daemon(0).Log();
  stepping.join();
  std::cerr << "node 0 stopping, node 1's step: " << stepped << "\n";
  EXPECT_FALSE(stepped.ok());
  EXPECT_NE(stepped.message().find("node 0's gstabd, which serves the job's rendezvous store, is "
                                   "stopping"),
            std::string::npos)
      << stepped;
  EXPECT_EQ(stepped.message().find("this gstabd is stopping"), std::string::npos) << stepped;
  EXPECT_EQ(cluster.daemon(1).Log().find("did not respond"), std::string::npos)
      << cluster.daemon(1).Log();
}

// A step of `job` (on `cluster`'s two nodes) in Gloo's exchange on node 0, waiting for node 1,
// whose worker never steps (its gstabd alive), after a first step both took; its status is
// written to `*waited` when it ends. Join the thread returned.
std::thread StepWaitingInTheExchange(Cluster& cluster, const std::string& job,
                                     std::vector<std::unique_ptr<TestWorker>>* workers,
                                     absl::Status* waited) {
  *workers = cluster.Attach(job);
  EXPECT_TRUE((*workers)[0] != nullptr && (*workers)[1] != nullptr);
  if ((*workers)[0] == nullptr || (*workers)[1] == nullptr) return std::thread([] {});
  std::vector<std::thread> stepping;
  for (size_t n = 0; n < 2; ++n) {
    (*workers)[n]->Fill(1, 1);
    stepping.emplace_back([workers, n] { EXPECT_TRUE((*workers)[n]->client().Step(1).ok()); });
  }
  for (std::thread& t : stepping) t.join();
  (*workers)[0]->Fill(2, 1);
  std::thread waiting([workers, waited] { *waited = (*workers)[0]->client().Step(2).status(); });
  absl::SleepFor(absl::Seconds(1));  // node 0 in the exchange, node 1's worker not stepping
  return waiting;
}

// Past the connection: a step in Gloo's exchange, waiting for a node whose worker never steps
// (its gstabd alive). Nothing ends that exchange before the step timeout: the stop exits
// without it, statistics saved (it held the stop for the step timeout, with the state folder
// locked against a replacement).
TEST(MultiNodeStopTest, AStepWaitingInTheExchangeDoesNotHoldTheStop) {
  Cluster cluster(2, {"--step_timeout_ms=60000"});
  std::vector<std::unique_ptr<TestWorker>> workers;
  absl::Status waited;
  std::thread waiting = StepWaitingInTheExchange(cluster, "exchange", &workers, &waited);
  testing::DaemonProcess& node0 = cluster.daemon(0);
  EXPECT_EQ(node0.Stop().value_or(-1), 0) << node0.Log();
  EXPECT_NE(node0.Log().find("gstabd exits without them; statistics checkpointed"),
            std::string::npos)
      << node0.Log();
  waiting.join();
  EXPECT_EQ(waited.code(), absl::StatusCode::kUnavailable) << waited;
}

// A SIGTERM more than 2 s after the first (an operator's, not a supervisor's repeat) ends a
// stop still under way at once, exit code 1; one within 2 s does not. The stop is held here by
// a step in the exchange, as above.
TEST(MultiNodeStopTest, ASigtermLaterInTheStopEndsItAtOnce) {
  Cluster cluster(2, {"--step_timeout_ms=60000"});
  std::vector<std::unique_ptr<TestWorker>> workers;
  absl::Status waited;
  std::thread waiting = StepWaitingInTheExchange(cluster, "later", &workers, &waited);
  testing::DaemonProcess& node0 = cluster.daemon(0);
  node0.process().Signal(SIGTERM);
  EXPECT_TRUE(node0.WaitForLog("gstabd stopping")) << node0.Log();
  node0.process().Signal(SIGTERM);  // a supervisor's repeat
  EXPECT_TRUE(node0.WaitForLog("the stop goes on")) << node0.Log();
  absl::SleepFor(absl::Milliseconds(2500));
  node0.process().Signal(SIGTERM);
  EXPECT_EQ(node0.process().Wait(absl::Seconds(30)).value_or(-1), 1) << node0.Log();
  EXPECT_NE(node0.Log().find("again while stopping: gstabd exits now"), std::string::npos)
      << node0.Log();
  waiting.join();
}

}  // namespace
}  // namespace gstab
