// The first step of a CUDA job across nodes: the nodes agree their GPUs' group count and take
// node 0's configuration through the job's node collective (real Gloo, through a real
// rendezvous store on loopback), without holding the job while they wait for each other.
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/config.h"
#include "gtest/gtest.h"
#include "kernels/cpu_executor.h"
#include "server/gloo_collective.h"
#include "server/rendezvous_store.h"
#include "tests/server/cpu_worker.h"
#include "tests/server/fake_gpu.h"
#include "tests/server/job_a_state.h"
#include "tests/server/loopback_store.h"

namespace gstab {
namespace {

using testing::LoopbackStore;

// Node `node` of a job of `nodes` nodes, `gpus` GPUs (each a local rank's), on fake pipelines;
// `imported` (optional) imported before its workers register.
struct GpuNode {
  GpuNode(const v1::RendezvousInfo& info, uint32_t node, const RuleParams& params,
          absl::Duration timeout, uint32_t gpus = 1, const v1::JobState* imported = nullptr)
      : job("nodes-job", params, gpus, nullptr, nullptr, LaggingBackend(&live)), workers(gpus) {
    job.SetCollective(
        std::make_shared<GlooCollective>(info, node, "127.0.0.1"), info.token(),
        NcclRendezvous{std::string(kNcclUniqueIdBytes, 'n'), node, info.node_count(), timeout});
    if (imported != nullptr) {
      EXPECT_TRUE(job.ImportState(*imported, false).ok());
    }
    for (uint32_t g = 0; g < gpus; ++g) {
      EXPECT_TRUE(workers[g].Register(&job, g, static_cast<int>(g)).ok());
    }
  }
  int live = 0;
  Job job;
  std::vector<FakeCudaWorker> workers;
};

// Under a rendezvous made for CUDA gradients, a node whose workers registered host memory and
// one whose workers registered GPU gradients: each refuses its step at once, saying why. The
// first exchange of the GPU node (its layout agreement) and that of a host-memory step (the step
// check) differ in size: before, both waited out their deadline and blamed a stalled node. The
// host-memory node joins the layout agreement as a node of no GPUs instead.
TEST(JobGpuNodesTest, HostMemoryAndGpuNodesUnderOneCudaRendezvousBothRefuse) {
  LoopbackStore store;
  const v1::RendezvousInfo info = store.Rendezvous(2);
  GpuNode gpu_node(info, 0, RuleParams{}, absl::Seconds(20));
  CpuExecutor executor(1);
  Job host_job("nodes-job", RuleParams{}, 1, &executor);
  host_job.SetCollective(
      std::make_shared<GlooCollective>(info, 1, "127.0.0.1"), info.token(),
      NcclRendezvous{std::string(kNcclUniqueIdBytes, 'n'), 1, 2, absl::Seconds(20)});
  CpuWorker host_worker;
  ASSERT_TRUE(host_worker.Register(&host_job, 0).ok());
  // Each node keeps its refusal: a step again (a worker that went on) hears it at once, rather
  // than wait in an exchange the other node does not join.
  for (uint64_t step = 1; step <= 2; ++step) {
    absl::Status host_status;
    std::thread host([&] {
      v1::StepResponse r;
      host_status = host_job.Step(0, step, absl::Seconds(20), &r);
    });
    v1::StepResponse r;
    const absl::Status gpu_status = gpu_node.job.Step(0, step, absl::Seconds(20), &r, NextReady());
    host.join();
    EXPECT_EQ(gpu_status.code(), absl::StatusCode::kFailedPrecondition) << gpu_status;
    EXPECT_NE(gpu_status.message().find("registered host_shm buffers, this one cuda_ipc"),
              std::string::npos)
        << step << ": " << gpu_status;
    EXPECT_EQ(host_status.code(), absl::StatusCode::kFailedPrecondition) << host_status;
    EXPECT_NE(host_status.message().find("other nodes registered cuda_ipc buffers"),
              std::string::npos)
        << step << ": " << host_status;
  }
}

// Job "nodes-job" on two nodes over real Gloo (a rendezvous made for CUDA gradients, or not),
// each with one worker of host memory registered.
struct HostNodes {
  explicit HostNodes(bool cuda_rendezvous) {
    for (uint32_t node = 0; node < 2; ++node) {
      jobs.push_back(std::make_unique<Job>("nodes-job", RuleParams{}, 1, &executor));
      NcclRendezvous nccl;
      if (cuda_rendezvous) {
        nccl = NcclRendezvous{std::string(kNcclUniqueIdBytes, 'n'), node, 2, absl::Seconds(20)};
      }
      jobs[node]->SetCollective(std::make_shared<GlooCollective>(info, node, "127.0.0.1"),
                                info.token(), nccl);
      registered = registered && workers[node].Register(jobs[node].get(), 0).ok();
    }
  }
  LoopbackStore store;
  const v1::RendezvousInfo info = store.Rendezvous(2);
  CpuExecutor executor{1};
  std::vector<std::unique_ptr<Job>> jobs;
  std::vector<CpuWorker> workers = std::vector<CpuWorker>(2);
  bool registered = true;
};

// Nodes all of host memory under a rendezvous made for CUDA gradients (gstab.torch asks for
// one whenever the process group is NCCL's) step as under any other.
TEST(JobGpuNodesTest, HostMemoryNodesStepUnderACudaRendezvous) {
  HostNodes nodes(/*cuda_rendezvous=*/true);
  ASSERT_TRUE(nodes.registered);
  std::vector<std::unique_ptr<Job>>& jobs = nodes.jobs;
  for (uint64_t step = 1; step <= 2; ++step) {
    absl::Status other_status;
    std::thread other([&] {
      v1::StepResponse r;
      other_status = jobs[1]->Step(0, step, absl::Seconds(20), &r);
    });
    v1::StepResponse r;
    EXPECT_TRUE(jobs[0]->Step(0, step, absl::Seconds(20), &r).ok()) << step;
    other.join();
    EXPECT_TRUE(other_status.ok()) << step << ": " << other_status;
  }
}

// A worker removed (detached: its call gave up) while its round waits for the other nodes: once
// the round goes on, it scales the other nodes' gradients and not that worker's, which its
// process may be writing again by then. Before, the round scaled them when it came to.
TEST(JobGpuNodesTest, AWorkerRemovedWhileItsRoundWaitsForTheOtherNodesIsNotScaled) {
  HostNodes nodes(/*cuda_rendezvous=*/false);
  ASSERT_TRUE(nodes.registered);
  std::vector<std::unique_ptr<Job>>& jobs = nodes.jobs;
  std::vector<CpuWorker>& workers = nodes.workers;
  auto gradients = [&](uint32_t node) {
    const auto* data = static_cast<const float*>(workers[node].arena.data(0));
    return std::vector<float>(data, data + 1024);
  };
  for (uint64_t step = 1; step <= 2; ++step) {
    const std::vector<float> before[2] = {gradients(0), gradients(1)};
    absl::Status first_status;
    std::thread first([&] {
      v1::StepResponse r;
      first_status = jobs[0]->Step(0, step, absl::Seconds(20), &r);
    });
    // Node 0's round runs, and waits for node 1.
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (jobs[0]->RunningStep() != step && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    EXPECT_EQ(jobs[0]->RunningStep(), step) << "node 0's round did not run";
    if (step == 2) jobs[0]->RemoveWorker(0);
    v1::StepResponse r;
    EXPECT_TRUE(jobs[1]->Step(0, step, absl::Seconds(20), &r).ok()) << step;
    first.join();
    EXPECT_NE(gradients(1), before[1]) << step;  // the round scaled node 1's
    if (step == 1) {
      EXPECT_TRUE(first_status.ok()) << first_status;
      EXPECT_NE(gradients(0), before[0]);
    } else {
      EXPECT_EQ(gradients(0), before[0]) << "a removed worker's gradients were scaled";
      // Its answer says so, rather than OK for gradients left alone.
      EXPECT_EQ(first_status.code(), absl::StatusCode::kFailedPrecondition) << first_status;
      EXPECT_NE(first_status.message().find("local rank 0's gradients were not scaled"),
                std::string::npos)
          << first_status;
    }
  }
}

// While a node's first step waits for the other nodes, the job still answers GetStats and
// exports (a checkpoint, gstabctl, a scrape): before, they waited up to the step deadline.
TEST(JobGpuNodesTest, TheFirstStepsWaitForOtherNodesHoldsNothingElseUp) {
  LoopbackStore store;
  const v1::RendezvousInfo info = store.Rendezvous(2);
  GpuNode node0(info, 0, RuleParams{}, absl::Seconds(3));
  std::atomic<bool> stepped{false};
  absl::Status status;
  std::thread step([&] {
    v1::StepResponse r;
    status = node0.job.Step(0, 1, absl::Seconds(3), &r, NextReady());
    stepped = true;
  });
  // Node 0 has joined the rendezvous: it is in its wait for node 1, which never comes.
  ASSERT_TRUE(store.WaitFor(info, "mesh/0"));
  v1::GetStatsResponse stats;
  node0.job.GetStats(&stats);
  EXPECT_EQ(stats.job(), "nodes-job");
  EXPECT_EQ(node0.job.ExportState().job(), "nodes-job");
  // Answered while the step still waits, not once it ends at its 3 s deadline.
  EXPECT_FALSE(stepped) << "the step returned early: " << status;
  step.join();  // at its deadline
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("agreeing the GPUs' group count"), std::string::npos) << status;
}

// Two nodes whose configurations differ: both agree at the first step, and node 1 takes node
// 0's configuration there; the steps are enqueued on both.
TEST(JobGpuNodesTest, NodesAgreeAtTheFirstStepAndTakeNodeZerosConfiguration) {
  LoopbackStore store;
  const v1::RendezvousInfo info = store.Rendezvous(2);
  RuleParams zeros = RuleParams{};
  zeros.policy = PolicyKind::kClip;
  GpuNode node0(info, 0, zeros, absl::Seconds(30));
  GpuNode node1(info, 1, RuleParams{}, absl::Seconds(30));
  absl::Status status1;
  std::thread other([&] {
    v1::StepResponse r;
    status1 = node1.job.Step(0, 1, absl::Seconds(30), &r, NextReady());
  });
  v1::StepResponse r;
  EXPECT_TRUE(node0.job.Step(0, 1, absl::Seconds(30), &r, NextReady()).ok());
  other.join();
  EXPECT_TRUE(status1.ok()) << status1;
  EXPECT_EQ(node1.job.params().policy, PolicyKind::kClip);
  v1::GetStatsResponse stats;
  node1.job.GetStats(&stats);
  EXPECT_EQ(stats.last_step(), 1u);
}

// Nodes running different numbers of GPU workers (one launched with another
// --nproc-per-node): refused at the first step on every node and to each of its workers at
// once, naming the numbers, where their NCCL ranks would have collided and the join waited out
// its deadline, blaming a missing node.
TEST(JobGpuNodesTest, NodesOfDifferentGpuCountsAreToldSo) {
  LoopbackStore store;
  const v1::RendezvousInfo info = store.Rendezvous(2);
  GpuNode node0(info, 0, RuleParams{}, absl::Seconds(30), 2);
  GpuNode node1(info, 1, RuleParams{}, absl::Seconds(30), 1);
  absl::Status status1, second_gpu;
  std::thread other([&] {
    v1::StepResponse r;
    status1 = node1.job.Step(0, 1, absl::Seconds(30), &r, NextReady());
  });
  const absl::Time start = absl::Now();
  std::thread second([&] {
    v1::StepResponse r;
    second_gpu = node0.job.Step(1, 1, absl::Seconds(30), &r, NextReady());
  });
  v1::StepResponse r;
  const absl::Status status0 = node0.job.Step(0, 1, absl::Seconds(30), &r, NextReady());
  other.join();
  second.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(20)) << "a worker waited out the step's deadline";
  for (const absl::Status& s : {status0, status1, second_gpu}) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("different numbers of local GPU workers"), std::string::npos) << s;
    EXPECT_NE(s.message().find("between 1 and 2"), std::string::npos) << s;
  }
}

// A registration refused after its groups were looked up (here: a job across nodes whose
// rendezvous has no NCCL id) leaves none of them in the job: before, they stayed for good, in
// its statistics, exports and layout.
TEST(JobGpuNodesTest, ARefusedRegistrationLeavesNoGroupsBehind) {
  int live = 0;
  Job job("refused-job", RuleParams{}, 1, nullptr, nullptr, LaggingBackend(&live));
  v1::RendezvousInfo info;
  info.set_store_address("127.0.0.1:1");  // never reached
  info.set_node_count(2);
  job.SetCollective(std::make_shared<GlooCollective>(info, 0, "127.0.0.1"), "generation-1");
  FakeCudaWorker worker;
  worker.tensor = "phantom";
  EXPECT_EQ(worker.Register(&job).code(), absl::StatusCode::kFailedPrecondition);
  v1::GetStatsResponse stats;
  job.GetStats(&stats);
  EXPECT_EQ(stats.groups_size(), 0);
  EXPECT_EQ(job.ExportState().groups_size(), 0);
}

// A group only node 0's import brought (saved under a name no worker registers now) stays node
// 0's on the GPU too, as on the CPU: the nodes agree on the groups their workers register, and
// step. Before, every node refused every step: "registered different numbers of norm groups".
TEST(JobGpuNodesTest, AGroupOnlyAnImportBroughtStaysOnNodeZero) {
  LoopbackStore store;
  const v1::RendezvousInfo info = store.Rendezvous(2);
  // "old" first: the registration's "w" reorders them.
  v1::JobState state = testing::JobAWithGroups(50, {"old", "w"}, 77);
  state.set_job("nodes-job");
  GpuNode node0(info, 0, RuleParams{}, absl::Seconds(30), 1, &state);
  GpuNode node1(info, 1, RuleParams{}, absl::Seconds(30));
  for (uint64_t step = 51; step <= 52; ++step) {
    absl::Status status1;
    std::thread other([&] {
      v1::StepResponse r;
      status1 = node1.job.Step(0, step, absl::Seconds(30), &r, NextReady());
    });
    v1::StepResponse r;
    const absl::Status status0 = node0.job.Step(0, step, absl::Seconds(30), &r, NextReady());
    other.join();
    ASSERT_TRUE(status0.ok()) << step << ": " << status0;
    ASSERT_TRUE(status1.ok()) << step << ": " << status1;
  }
  const v1::JobState zero = node0.job.ExportState();
  ASSERT_EQ(zero.groups_size(), 2);
  EXPECT_EQ(zero.groups(0).name(), "w");
  EXPECT_EQ(zero.groups(1).name(), "old");
  EXPECT_EQ(zero.groups(1).t(), 77u);
  EXPECT_EQ(node1.job.ExportState().groups_size(), 1);
}

}  // namespace
}  // namespace gstab
