// Multi-node jobs on the CPU backend when something goes wrong: a node that refuses a step,
// dies or stalls, local workers missing or detached, nodes out of step or with other groups
// (their rendezvous and gstabd's stop: e2e_multinode_rendezvous_test).
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <thread>

#include "tests/server/multinode_cluster.h"

namespace gstab {
namespace {

using testing::Cluster;
using testing::NodeOptions;
using testing::Same;
using testing::StepAll;
using testing::TestWorker;

// Every node's statistics counted `steps` accepted steps in every group: a refused or given-up
// step changed none.
void ExpectAcceptedSteps(const std::vector<std::unique_ptr<TestWorker>>& workers, uint64_t steps) {
  for (size_t i = 0; i < workers.size(); ++i) {
    absl::StatusOr<v1::GetStatsResponse> stats = workers[i]->client().GetStats();
    ASSERT_TRUE(stats.ok()) << stats.status();
    for (const auto& g : stats->groups()) {
      EXPECT_EQ(g.accepted_steps(), steps) << "worker " << i << ", group " << g.group();
    }
  }
}

// A node that refuses a step (here: its worker truncated its shared memory) says so in the
// step's check: the other nodes leave the step at once, nothing changes anywhere, and the
// communicator goes on without a new rendezvous.
TEST(MultiNodeFaultTest, ANodesRefusalEndsTheStepEverywhereAndTheJobGoesOn) {
  Cluster cluster(2);
  const std::string blob = cluster.Rendezvous("refusing");
  auto workers = cluster.Attach("refusing", blob);
  for (size_t i = 0; i < 2; ++i) workers[i]->Fill(1, static_cast<uint32_t>(1 + i));
  for (auto& r : StepAll(workers, Same(2, 1))) ASSERT_TRUE(r.ok()) << r.status();

  const int fd = shm_open(workers[1]->arena().shm_name().c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 4096), 0);
  close(fd);
  workers[0]->Fill(2, 1);
  const std::vector<unsigned char> before = workers[0]->Bytes();
  auto refused = StepAll(workers, Same(2, 2));
  // The other node is told (ABORTED), rather than waiting out its timeout (DEADLINE_EXCEEDED).
  EXPECT_EQ(refused[1].status().code(), absl::StatusCode::kFailedPrecondition)
      << refused[1].status();
  EXPECT_EQ(refused[0].status().code(), absl::StatusCode::kAborted) << refused[0].status();
  EXPECT_NE(refused[0].status().message().find("refused on another node"), std::string::npos)
      << refused[0].status();
  EXPECT_EQ(workers[0]->Bytes(), before) << "node 0 scaled a step node 1 refused";
  ExpectAcceptedSteps(workers, 1);

  // Node 1's worker starts afresh (attach and register again, the same blob); no rendezvous.
  auto restarted =
      TestWorker::Create(cluster.daemon(1).socket(), NodeOptions("refusing", 1, 2, blob));
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  workers[1] = *std::move(restarted);
  for (size_t i = 0; i < 2; ++i) workers[i]->Fill(3, static_cast<uint32_t>(1 + i));
  auto after = StepAll(workers, Same(2, 3));
  for (auto& r : after) ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(after[0]->SerializeAsString(), after[1]->SerializeAsString());
  ExpectAcceptedSteps(workers, 2);
}

// A worker that cuts its shared memory short after its node summed the step (while it waits
// for the other nodes) is not scaled: the step is refused on that node, saying the statistics
// took it, rather than its lost pages being written (each would take gstabd's own memory).
TEST(MultiNodeFaultTest, AnObjectCutShortBeforeTheScalingIsNotScaled) {
  Cluster cluster(2);
  auto workers = cluster.Attach("cut-mid-step");
  for (size_t i = 0; i < 2; ++i) workers[i]->Fill(1, static_cast<uint32_t>(1 + i));
  absl::StatusOr<v1::StepResponse> node1;
  std::thread waiting([&] { node1 = workers[1]->client().Step(1); });  // summed, then waits
  absl::SleepFor(absl::Milliseconds(500));
  const int fd = shm_open(workers[1]->arena().shm_name().c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 4096), 0);
  close(fd);
  absl::StatusOr<v1::StepResponse> node0 = workers[0]->client().Step(1);
  waiting.join();
  EXPECT_TRUE(node0.ok()) << node0.status();
  ASSERT_FALSE(node1.ok());
  EXPECT_NE(node1.status().message().find("no gradients of this node were scaled"),
            std::string::npos)
      << node1.status();
  ExpectAcceptedSteps(workers, 1);  // counted on node 1 as on node 0: their statistics alike
}

// A job resumed from a checkpoint older than its last step, on the gstabds it ran on: node 0
// imports it, and node 1, which holds the job at its later step, follows node 0's steps.
TEST(MultiNodeFaultTest, AJobResumedOnItsOwnGstabdsFromAnOlderCheckpointGoesOn) {
  Cluster cluster(2);
  auto workers = cluster.Attach("resumed-here");
  absl::StatusOr<std::string> saved;
  for (uint64_t step = 1; step <= 5; ++step) {
    for (size_t i = 0; i < 2; ++i) workers[i]->Fill(step, static_cast<uint32_t>(1 + i));
    for (auto& r : StepAll(workers, Same(2, step))) ASSERT_TRUE(r.ok()) << r.status();
    if (step == 3) saved = workers[0]->client().ExportState();
  }
  ASSERT_TRUE(saved.ok()) << saved.status();
  workers = cluster.Attach("resumed-here");  // the restarted job: a new rendezvous
  ASSERT_TRUE(workers[0]->client().ImportState(*saved).ok());
  for (uint64_t step = 4; step <= 5; ++step) {
    for (size_t i = 0; i < 2; ++i) workers[i]->Fill(step, static_cast<uint32_t>(1 + i));
    auto results = StepAll(workers, Same(2, step));
    for (auto& r : results) ASSERT_TRUE(r.ok()) << r.status();
    // Node 1 says what it gave up for node 0's older statistics, once.
    EXPECT_EQ(results[1]->statistics_rolled_back(), step == 4 ? 2u : 0u) << "step " << step;
    results[1]->clear_statistics_rolled_back();
    // One result on both nodes: node 1 stepped on node 0's imported statistics.
    EXPECT_EQ(results[1]->SerializeAsString(), results[0]->SerializeAsString()) << "step " << step;
  }
  auto s0 = workers[0]->client().GetStats();
  auto s1 = workers[1]->client().GetStats();
  ASSERT_TRUE(s0.ok() && s1.ok());
  for (int g = 0; g < s0->groups_size(); ++g) {
    EXPECT_EQ(s0->groups(g).accepted_steps(), 5u);  // 3 imported, then 4 and 5
    EXPECT_EQ(s1->groups(g).accepted_steps(), 5u);
    EXPECT_EQ(s0->groups(g).m(), s1->groups(g).m());
  }
}

// Old step numbers across nodes. A step retried on every node is refused on each at once. A
// node whose worker alone retries an old step refuses it at once, and the others, waiting in
// the step's check, meet its next step. Node 0 importing an older state while the nodes step
// together is refused, saying how to resume from it: before, node 0 went back alone, the other
// nodes refused its steps, and it waited out the step timeout.
TEST(MultiNodeFaultTest, OldStepNumbersFailFastAndTheJobGoesOn) {
  Cluster cluster(2);
  auto workers = cluster.Attach("numbered");
  auto step_all = [&](std::vector<uint64_t> steps) {
    for (size_t i = 0; i < 2; ++i) workers[i]->Fill(steps[i], static_cast<uint32_t>(1 + i));
    return StepAll(workers, steps);  // a node that waited out the step: DEADLINE_EXCEEDED
  };
  absl::StatusOr<std::string> saved;
  for (uint64_t step = 1; step <= 5; ++step) {
    for (auto& r : step_all(Same(2, step))) ASSERT_TRUE(r.ok()) << r.status();
    if (step == 3) saved = workers[0]->client().ExportState();
  }
  for (auto& r : step_all(Same(2, 5))) {  // retried everywhere
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    EXPECT_NE(r.status().message().find("is not after its last step, 5"), std::string::npos)
        << r.status();
  }
  // Node 1's worker alone retries step 5, then sends 6: node 0's step 6 meets it.
  workers[0]->Fill(6, 1);
  absl::StatusOr<v1::StepResponse> node0;
  std::thread waiting([&] { node0 = workers[0]->client().Step(6); });
  workers[1]->Fill(5, 2);
  EXPECT_EQ(workers[1]->client().Step(5).status().code(), absl::StatusCode::kInvalidArgument);
  workers[1]->Fill(6, 2);
  absl::StatusOr<v1::StepResponse> node1 = workers[1]->client().Step(6);
  waiting.join();
  ASSERT_TRUE(node0.ok()) << node0.status();
  ASSERT_TRUE(node1.ok()) << node1.status();
  EXPECT_EQ(node0->SerializeAsString(), node1->SerializeAsString());

  ASSERT_TRUE(saved.ok()) << saved.status();
  absl::Status back = workers[0]->client().ImportState(*saved);
  EXPECT_EQ(back.code(), absl::StatusCode::kFailedPrecondition) << back;
  EXPECT_NE(back.message().find("attach every worker again with a new rendezvous"),
            std::string::npos)
      << back;
  // Nor a newer one: node 0 alone would go there, and refuse the other nodes' next steps.
  v1::JobState ahead;
  ASSERT_TRUE(ahead.ParseFromString(*saved));
  ahead.set_last_step(9);
  absl::Status forward = workers[0]->client().ImportState(ahead.SerializeAsString());
  EXPECT_EQ(forward.code(), absl::StatusCode::kFailedPrecondition) << forward;
  EXPECT_NE(forward.message().find("stepped together to step 6, and this state is at step 9"),
            std::string::npos)
      << forward;
  for (auto& r : step_all(Same(2, 7))) EXPECT_TRUE(r.ok()) << r.status();
  auto s0 = workers[0]->client().GetStats();
  auto s1 = workers[1]->client().GetStats();
  ASSERT_TRUE(s0.ok() && s1.ok());
  EXPECT_EQ(s0->groups(0).accepted_steps(), 7u);
  EXPECT_EQ(s1->groups(0).accepted_steps(), 7u);
  EXPECT_EQ(s0->groups(0).m(), s1->groups(0).m());
}

// The workers of a job of one worker on node 0 and `on_node_1` on node 1, in global rank order
// (empty when one cannot attach).
std::vector<std::unique_ptr<TestWorker>> OneAndMany(Cluster* cluster, const std::string& job,
                                                    uint32_t on_node_1) {
  const std::string blob = cluster->Rendezvous(job);
  std::vector<std::unique_ptr<TestWorker>> workers;
  for (uint32_t rank = 0; rank <= on_node_1; ++rank) {
    AttachOptions o = NodeOptions(job, rank == 0 ? 0 : 1, 2, blob);
    o.rank = rank;
    o.world_size = on_node_1 + 1;
    o.local_rank = rank == 0 ? 0 : rank - 1;
    o.local_world_size = rank == 0 ? 1 : on_node_1;
    auto w = TestWorker::Create(cluster->daemon(static_cast<int>(o.node_rank)).socket(), o);
    EXPECT_TRUE(w.ok()) << w.status();
    if (!w.ok()) return {};
    workers.push_back(*std::move(w));
  }
  return workers;
}

// Node 0 with one worker and node 1 with two (OneAndMany), stepped once together; then node 1's
// local rank 1 taken out of `workers` (returned; null on a failure) and the others' gradients
// filled for step 2.
std::unique_ptr<TestWorker> SteppedOnceLessOne(Cluster* cluster, const std::string& job,
                                               std::vector<std::unique_ptr<TestWorker>>* workers) {
  *workers = OneAndMany(cluster, job, 2);
  if (workers->size() != 3u) return nullptr;
  for (size_t i = 0; i < 3; ++i) (*workers)[i]->Fill(1, static_cast<uint32_t>(1 + i));
  for (auto& r : StepAll(*workers, Same(3, 1))) {
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return nullptr;
  }
  std::unique_ptr<TestWorker> out = std::move(workers->back());
  workers->pop_back();
  for (size_t i = 0; i < 2; ++i) (*workers)[i]->Fill(2, static_cast<uint32_t>(1 + i));
  return out;
}

// A round found, once summed, to come after one of its workers' calls gave up (here: calls give
// up after 1 s, and node 1's second worker comes 1.5 s after its first) is refused in the step's
// check on every node: node 0, whose worker's call is young, applies nothing either, so the
// nodes' statistics stay alike (the worker that gave up has zeroed its gradients and gone on).
TEST(MultiNodeFaultTest, ARoundAfterAWorkersCallGaveUpIsRefusedOnEveryNode) {
  Cluster cluster(2, {"--step_timeout_ms=20000"});  // local workers waited for 10 s
  setenv("GSTAB_CALL_TIMEOUT_S", "1", 1);
  std::vector<std::unique_ptr<TestWorker>> workers = OneAndMany(&cluster, "late-call", 2);
  unsetenv("GSTAB_CALL_TIMEOUT_S");
  ASSERT_EQ(workers.size(), 3u);
  for (size_t i = 0; i < 3; ++i) workers[i]->Fill(1, static_cast<uint32_t>(1 + i));
  const std::vector<unsigned char> node0_before = workers[0]->Bytes();
  absl::StatusOr<v1::StepResponse> gave_up = workers[1]->client().Step(1);  // after 1 s
  EXPECT_EQ(gave_up.status().code(), absl::StatusCode::kDataLoss) << gave_up.status();
  workers[1]->Fill(2, 2);  // its next step's gradients
  const std::vector<unsigned char> node1_next = workers[1]->Bytes();
  absl::SleepFor(absl::Milliseconds(300));  // past gstabd's deadline of that call too
  absl::StatusOr<v1::StepResponse> late;
  std::thread node1([&] { late = workers[2]->client().Step(1); });  // refuses, in the check
  absl::SleepFor(absl::Milliseconds(200));
  absl::StatusOr<v1::StepResponse> node0 = workers[0]->client().Step(1);
  node1.join();
  EXPECT_EQ(late.status().code(), absl::StatusCode::kDeadlineExceeded) << late.status();
  EXPECT_NE(late.status().message().find("nothing was applied"), std::string::npos)
      << late.status();
  EXPECT_EQ(node0.status().code(), absl::StatusCode::kAborted) << node0.status();
  EXPECT_EQ(workers[1]->Bytes(), node1_next);
  EXPECT_EQ(workers[0]->Bytes(), node0_before);
  ExpectAcceptedSteps(workers, 0);
}

// A node whose local workers do not all call Step gives the step up at half the step timeout
// and says so in the step's check: the other nodes leave it at once, the late worker is told
// to go on, and the next step runs with the same communicator.
TEST(MultiNodeFaultTest, ANodeMissingALocalWorkerTellsTheOthersAndTheJobGoesOn) {
  Cluster cluster(2);
  std::vector<std::unique_ptr<TestWorker>> workers;
  std::unique_ptr<TestWorker> late = SteppedOnceLessOne(&cluster, "half-there", &workers);
  ASSERT_NE(late, nullptr);
  const std::vector<unsigned char> before = workers[0]->Bytes();
  auto given_up = StepAll(workers, Same(2, 2));
  EXPECT_EQ(given_up[1].status().code(), absl::StatusCode::kDeadlineExceeded)
      << given_up[1].status();
  EXPECT_NE(given_up[1].status().message().find("local ranks [1] did not call Step"),
            std::string::npos)
      << given_up[1].status();
  // Node 0 is told (ABORTED), rather than waiting out its own timeout.
  EXPECT_EQ(given_up[0].status().code(), absl::StatusCode::kAborted) << given_up[0].status();
  absl::Status too_late = late->client().Step(2).status();
  EXPECT_EQ(too_late.code(), absl::StatusCode::kFailedPrecondition) << too_late;
  EXPECT_NE(too_late.message().find("go on from step 3"), std::string::npos) << too_late;
  EXPECT_EQ(workers[0]->Bytes(), before) << "node 0 scaled a step node 1 gave up";
  ExpectAcceptedSteps(workers, 1);

  workers.push_back(std::move(late));
  for (size_t i = 0; i < 3; ++i) workers[i]->Fill(3, static_cast<uint32_t>(1 + i));
  for (auto& r : StepAll(workers, Same(3, 3))) EXPECT_TRUE(r.ok()) << r.status();
}

// SteppedOnceLessOne, the worker left out then detached (its process ended); whether it did.
bool SteppedOnceOneDetached(Cluster* cluster, const std::string& job,
                            std::vector<std::unique_ptr<TestWorker>>* workers) {
  std::unique_ptr<TestWorker> leaving = SteppedOnceLessOne(cluster, job, workers);
  return leaving != nullptr && leaving->client().Detach().ok();
}

// A step given up for a detached local worker of node 1: its other worker is told so
// (FAILED_PRECONDITION, as on one node), node 0's that the step was given up (ABORTED).
void ExpectGivenUpForADetachedWorker(const absl::StatusOr<v1::StepResponse>& node0,
                                     const absl::StatusOr<v1::StepResponse>& node1) {
  EXPECT_EQ(node1.status().code(), absl::StatusCode::kFailedPrecondition) << node1.status();
  EXPECT_NE(node1.status().message().find("whose workers detached"), std::string::npos)
      << node1.status();
  EXPECT_EQ(node0.status().code(), absl::StatusCode::kAborted) << node0.status();
}

// A local worker that detaches (its process ended) is not waited for: the step is given up on
// every node at once, and its node's workers hear that it detached, not that a deadline passed.
TEST(MultiNodeFaultTest, ALocalWorkerThatDetachedIsNotWaitedForOnAnyNode) {
  Cluster cluster(2, {"--step_timeout_ms=60000"});
  std::vector<std::unique_ptr<TestWorker>> workers;
  ASSERT_TRUE(SteppedOnceOneDetached(&cluster, "one-leaves", &workers));
  auto given_up = StepAll(workers, Same(2, 2));
  ExpectGivenUpForADetachedWorker(given_up[0], given_up[1]);
}

// The other nodes hear of it for as long as their steps wait (the step timeout from the
// round's first arrival), not half of it: node 0's worker here comes 4 s after node 1's, past
// half the 6 s timeout. Before, the telling gave up at 3 s, and both nodes' communicator broke.
TEST(MultiNodeFaultTest, ANodeComingLateStillHearsThatALocalWorkerDetachedElsewhere) {
  Cluster cluster(2, {"--step_timeout_ms=6000"});
  std::vector<std::unique_ptr<TestWorker>> workers;
  ASSERT_TRUE(SteppedOnceOneDetached(&cluster, "late-node", &workers));
  absl::StatusOr<v1::StepResponse> node1;
  std::thread first([&] { node1 = workers[1]->client().Step(2); });
  absl::SleepFor(absl::Seconds(4));
  absl::StatusOr<v1::StepResponse> node0 = workers[0]->client().Step(2);
  first.join();
  ExpectGivenUpForADetachedWorker(node0, node1);
  // The communicator is whole: the next step is given up alike, not failed for a break.
  for (size_t i = 0; i < 2; ++i) workers[i]->Fill(3, static_cast<uint32_t>(1 + i));
  auto next = StepAll(workers, Same(2, 3));
  ExpectGivenUpForADetachedWorker(next[0], next[1]);
}

// With node 0 stalled, telling it fails too: every waiting worker of the given-up step hears
// so, and what to do (not only the one that did the telling).
TEST(MultiNodeFaultTest, WhenTheOthersCannotBeToldEveryWaitingWorkerHearsSo) {
  Cluster cluster(2);
  std::vector<std::unique_ptr<TestWorker>> workers = OneAndMany(&cluster, "untold", 3);
  ASSERT_EQ(workers.size(), 4u);
  for (size_t i = 0; i < 4; ++i) workers[i]->Fill(1, static_cast<uint32_t>(1 + i));
  for (auto& r : StepAll(workers, Same(4, 1))) ASSERT_TRUE(r.ok()) << r.status();

  ASSERT_TRUE(cluster.daemon(0).process().Stop());
  std::vector<std::unique_ptr<TestWorker>> waiting;  // node 1's local ranks 0 and 1, not 2
  waiting.push_back(std::move(workers[1]));
  waiting.push_back(std::move(workers[2]));
  for (size_t i = 0; i < 2; ++i) waiting[i]->Fill(2, static_cast<uint32_t>(2 + i));
  auto untold = StepAll(waiting, Same(2, 2));
  cluster.daemon(0).process().Signal(SIGCONT);
  for (auto& r : untold) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
    EXPECT_NE(r.status().message().find("telling the job's other nodes failed too"),
              std::string::npos)
        << r.status();
    EXPECT_NE(r.status().message().find("attach every worker again"), std::string::npos)
        << r.status();
  }
}

TEST(MultiNodeFaultTest, KilledNodeFailsTheOthersFastAndReattachRecovers) {
  Cluster cluster(3);
  auto workers = cluster.Attach("faulty");
  std::vector<std::unique_ptr<TestWorker>> solo;  // a single-node job on nodes 0 and 1
  for (int i = 0; i < 2; ++i) {
    AttachOptions o;
    o.job = "solo";
    auto w = TestWorker::Create(cluster.daemon(i).socket(), o);
    ASSERT_TRUE(w.ok());
    solo.push_back(*std::move(w));
  }
  uint64_t solo_step = 0;
  auto step_solo = [&] {
    ++solo_step;
    for (auto& w : solo) {
      w->Fill(solo_step, 7);
      absl::StatusOr<v1::StepResponse> r = w->client().Step(solo_step);
      EXPECT_TRUE(r.ok()) << "the other job noticed: " << r.status();
    }
  };
  for (uint64_t step = 1; step <= 3; ++step) {
    for (size_t i = 0; i < workers.size(); ++i)
      workers[i]->Fill(step, static_cast<uint32_t>(1 + i));
    for (auto& r : StepAll(workers, Same(3, step))) ASSERT_TRUE(r.ok()) << r.status();
    step_solo();
  }

  cluster.daemon(2).process().Signal(SIGKILL);
  ASSERT_TRUE(cluster.daemon(2).process().Wait(absl::Seconds(10)).ok());
  std::vector<std::unique_ptr<TestWorker>> survivors;
  survivors.push_back(std::move(workers[0]));
  survivors.push_back(std::move(workers[1]));
  std::thread other_job([&] { step_solo(); });
  auto failed = StepAll(survivors, Same(2, 4));  // a dead node does not hang the others
  other_job.join();
  std::cerr << "killed-node error: " << failed[0].status() << "\n";
  for (size_t i = 0; i < failed.size(); ++i) {
    const absl::StatusCode code = failed[i].status().code();
    EXPECT_TRUE(code == absl::StatusCode::kUnavailable ||
                code == absl::StatusCode::kDeadlineExceeded)
        << failed[i].status();
    EXPECT_NE(failed[i].status().message().find("node(s) 2 of 3"), std::string::npos)
        << failed[i].status();
    if (code == absl::StatusCode::kUnavailable) {  // the killed node's connection closed
      EXPECT_NE(failed[i].status().message().find("a connection closed"), std::string::npos)
          << failed[i].status();
    }
  }
  // Without a new rendezvous the communicator stays down, and says so at once (with no new
  // search for the missing node: before, a second a step), once.
  survivors[0]->Fill(5, 1);
  absl::Status still_down = survivors[0]->client().Step(5).status();
  EXPECT_EQ(still_down.code(), absl::StatusCode::kFailedPrecondition) << still_down;
  const std::string again_hint = "attach every worker again with a new rendezvous";
  const std::string message(still_down.message());
  EXPECT_EQ(message.find(again_hint), message.rfind(again_hint)) << still_down;
  step_solo();

  // Recovery: node 2 comes back, rank 0 makes a new rendezvous, every worker attaches again.
  cluster.Start(2);
  auto again = cluster.Attach("faulty");
  for (uint64_t step = 6; step <= 8; ++step) {
    for (size_t i = 0; i < again.size(); ++i) again[i]->Fill(step, static_cast<uint32_t>(1 + i));
    auto results = StepAll(again, Same(3, step));
    for (auto& r : results) {
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->SerializeAsString(), results[0]->SerializeAsString());
    }
  }
  // The restarted node took node 0's statistics: all agree.
  auto s0 = again[0]->client().GetStats();
  auto s2 = again[2]->client().GetStats();
  ASSERT_TRUE(s0.ok() && s2.ok());
  EXPECT_EQ(s0->groups(0).m(), s2->groups(0).m());
  EXPECT_EQ(s0->groups(0).accepted_steps(), s2->groups(0).accepted_steps());
  EXPECT_EQ(s0->groups(0).accepted_steps(), 6u);
  step_solo();
}

TEST(MultiNodeFaultTest, StalledNodeFailsTheOthersWithinTheDeadline) {
  Cluster cluster(3);
  auto workers = cluster.Attach("stalled");
  for (size_t i = 0; i < 3; ++i) workers[i]->Fill(1, static_cast<uint32_t>(1 + i));
  for (auto& r : StepAll(workers, Same(3, 1))) ASSERT_TRUE(r.ok()) << r.status();

  ASSERT_TRUE(cluster.daemon(1).process().Stop());  // alive but silent
  std::vector<std::unique_ptr<TestWorker>> others;
  others.push_back(std::move(workers[0]));
  others.push_back(std::move(workers[2]));
  auto failed = StepAll(others, Same(2, 2));  // a stalled node does not hang the others
  cluster.daemon(1).process().Signal(SIGCONT);
  for (auto& r : failed) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
    EXPECT_NE(r.status().message().find("node(s) 1 of 3"), std::string::npos) << r.status();
  }
  std::cerr << "stalled-node error: " << failed[0].status() << "\n";
}

// A job of many nodes whose others never came (the other pods still starting): the first
// missing nodes are named, not all of them (each name cost a store call past the step timeout:
// 4,096 nodes took 50 s and a 24 KB message).
TEST(MultiNodeFaultTest, OnlyTheFirstMissingNodesAreNamed) {
  Cluster cluster(1, {"--step_timeout_ms=2000"});
  std::vector<std::unique_ptr<TestWorker>> alone = cluster.AttachFirstOf("many", 64);
  ASSERT_TRUE(alone[0] != nullptr);
  alone[0]->Fill(1, 1);
  absl::StatusOr<v1::StepResponse> r = alone[0]->client().Step(1);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("node(s) 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, "
                                      "15, 16 (and maybe more: the first ones asked about) of 64"),
            std::string::npos)
      << r.status();
}

TEST(MultiNodeFaultTest, MismatchedStepsAndLayoutsAreRejectedNotSummed) {
  Cluster cluster(2);
  auto workers = cluster.Attach("mismatch");
  for (size_t i = 0; i < 2; ++i) workers[i]->Fill(1, static_cast<uint32_t>(1 + i));
  for (auto& r : StepAll(workers, Same(2, 1))) ASSERT_TRUE(r.ok()) << r.status();

  auto skewed = StepAll(workers, {5, 6});
  for (auto& r : skewed) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("step numbers differ"), std::string::npos) << r.status();
    EXPECT_NE(r.status().message().find("go on from step 7 on every node"), std::string::npos)
        << r.status();
  }
  for (auto& r : StepAll(workers, Same(2, 7))) EXPECT_TRUE(r.ok()) << r.status();
  ExpectAcceptedSteps(workers, 2);  // the rejected step changed nothing, on either node

  // Node 1 re-registers a different set of groups.
  GradientArena other;
  other.AddTensor("x", 100, DType::kFloat32, "other-group");
  ASSERT_TRUE(other.Allocate().ok());
  ASSERT_TRUE(workers[1]->client().Register(other).ok());
  auto bad = StepAll(workers, Same(2, 8));
  for (auto& r : bad) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("layouts differ"), std::string::npos) << r.status();
  }
  // Each node names the first group where it differs from the other.
  EXPECT_NE(bad[1].status().message().find(
                "the first difference from node 0 is group #3: here 'other-group' (sharded), "
                "there none"),
            std::string::npos)
      << bad[1].status();
  EXPECT_NE(bad[0].status().message().find(
                "the first difference from node 1 is group #3: here none, there a group"),
            std::string::npos)
      << bad[0].status();
  // Node 1 names the groups it has that its worker no longer registers, and what to do.
  EXPECT_EQ(bad[0].status().message().find("none registers now"), std::string::npos)
      << bad[0].status();
  EXPECT_NE(bad[1].status().message().find("none registers now ('"), std::string::npos)
      << bad[1].status();
  EXPECT_NE(bad[1].status().message().find("gstabctl forget"), std::string::npos)
      << bad[1].status();
}

}  // namespace
}  // namespace gstab
