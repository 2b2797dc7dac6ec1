// Jobs across nodes by their number of norm groups: up to 32, a step's sums travel in the one
// all-gather that checks the nodes agree; past that, a second collective sums them. Either way
// every node gets the same results, and each group's norm is what its reduction says: sharded
// groups sum every node's squares, replicated and node-sharded ones take node 0's. A group
// registered on some nodes and not others is refused on every node; replicated gradients that
// differ across the nodes, or across a node's workers, are said. A state imported on node 0
// holds its groups in every node's order.
#include <cmath>
#include <thread>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/server/multinode_cluster.h"

namespace gstab {
namespace {

using testing::Cluster;
using testing::NodeOptions;

constexpr v1::Reduction kReductions[] = {v1::REDUCTION_SHARDED, v1::REDUCTION_REPLICATED,
                                         v1::REDUCTION_NODE_SHARDED};

v1::Reduction ReductionOf(int group) { return kReductions[group % 3]; }

// One node's worker: group g is one fp32 tensor of 64 + g elements, reduced by kReductions[g % 3].
struct Node {
  std::unique_ptr<Client> client;
  GradientArena arena;
};

void Layout(int groups, GradientArena* arena) {
  for (int g = 0; g < groups; ++g) {
    arena->AddTensor(absl::StrCat("t", g), 64 + g, DType::kFloat32, absl::StrCat("g", g),
                     ReductionOf(g));
  }
  ASSERT_TRUE(arena->Allocate().ok());
}

// Node `n`'s worker of `job`, its `groups` groups registered.
std::unique_ptr<Node> AttachNode(Cluster& cluster, const std::string& job, const std::string& blob,
                                 int n, int groups) {
  auto w = std::make_unique<Node>();
  Layout(groups, &w->arena);
  auto client = Client::Connect(cluster.daemon(n).socket());
  EXPECT_TRUE(client.ok()) << client.status();
  w->client = *std::move(client);
  EXPECT_TRUE(w->client->Attach(NodeOptions(job, n, cluster.size(), blob)).ok());
  EXPECT_TRUE(w->client->Register(w->arena).ok());
  return w;
}

// The gradient of `node` at `step`; a replicated group's is the same on every node, as after a
// data-parallel all-reduce.
float Value(int node, int group, uint64_t i, uint64_t step) {
  const int n = ReductionOf(group) == v1::REDUCTION_REPLICATED ? 0 : node;
  return 0.01f * static_cast<float>(1 + (n * 7 + group * 3 + i + step) % 11);
}

// Writes node `n`'s gradients of `step` into `arena` (group g is tensor g); returns its sums of
// squares per group, as the kernels add them (in double).
std::vector<double> Fill(int n, uint64_t step, GradientArena& arena) {
  std::vector<double> sums(arena.num_tensors(), 0.0);
  for (size_t g = 0; g < arena.num_tensors(); ++g) {
    auto* p = static_cast<float*>(arena.data(g));
    for (uint64_t i = 0; i < arena.numel(g); ++i) {
      p[i] = Value(n, static_cast<int>(g), i, step);
      sums[g] += static_cast<double>(p[i]) * p[i];
    }
  }
  return sums;
}

// Every node steps at once (each waits in the collective for the others).
std::vector<absl::StatusOr<v1::StepResponse>> StepNodes(
    const std::vector<std::unique_ptr<Node>>& workers, uint64_t step) {
  std::vector<absl::StatusOr<v1::StepResponse>> results(workers.size());
  std::vector<std::thread> threads;
  for (size_t n = 0; n < workers.size(); ++n) {
    threads.emplace_back([&, n] { results[n] = workers[n]->client->Step(step); });
  }
  for (std::thread& t : threads) t.join();
  return results;
}

class MultiNodeGroupsTest : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(MultiNodeGroupsTest, EveryNodeGetsTheSameNormsAsItsGroupsReductionsSay) {
  const auto [nodes, groups] = GetParam();
  Cluster cluster(nodes);
  const std::string blob = cluster.Rendezvous("groups");
  std::vector<std::unique_ptr<Node>> workers;
  for (int n = 0; n < nodes; ++n) workers.push_back(AttachNode(cluster, "groups", blob, n, groups));
  auto fill = [&](uint64_t step) {
    std::vector<std::vector<double>> sums;
    for (int n = 0; n < nodes; ++n) sums.push_back(Fill(n, step, workers[n]->arena));
    return sums;
  };
  auto step_all = [&](uint64_t step) { return StepNodes(workers, step); };
  for (uint64_t step = 1; step <= 3; ++step) {
    const std::vector<std::vector<double>> sums = fill(step);
    const std::vector<absl::StatusOr<v1::StepResponse>> results = step_all(step);
    for (int n = 0; n < nodes; ++n) {
      ASSERT_TRUE(results[n].ok())
          << "node " << n << " at step " << step << ": " << results[n].status();
      ASSERT_EQ(results[n]->groups_size(), groups);
      for (int g = 0; g < groups; ++g) {
        double expected = sums[0][g];  // node-sharded: node 0's; replicated: the same anywhere
        if (ReductionOf(g) == v1::REDUCTION_SHARDED) {
          for (int m = 1; m < nodes; ++m) expected += sums[m][g];
        }
        EXPECT_NEAR(results[n]->groups(g).norm() / std::sqrt(expected), 1.0, 1e-6)  // a float
            << "node " << n << " group " << g << " step " << step;
        EXPECT_EQ(results[n]->groups(g).SerializeAsString(),
                  results[0]->groups(g).SerializeAsString())
            << "node " << n << " disagrees with node 0 on group " << g << " at step " << step;
      }
    }
  }
  // The last node alone has a non-finite gradient in group 0 (sharded) and group 1
  // (replicated): non-finite flags are combined across nodes for every group, so every node
  // finds both non-finite, and only those, and skips the step whole (the finite groups with
  // them).
  fill(4);
  static_cast<float*>(workers[nodes - 1]->arena.data(0))[3] = INFINITY;
  static_cast<float*>(workers[nodes - 1]->arena.data(1))[5] = NAN;
  const std::vector<absl::StatusOr<v1::StepResponse>> results = step_all(4);
  for (int n = 0; n < nodes; ++n) {
    ASSERT_TRUE(results[n].ok()) << "node " << n << ": " << results[n].status();
    EXPECT_TRUE(results[n]->skip()) << "node " << n;
    for (int g = 0; g < groups; ++g) {
      EXPECT_TRUE(results[n]->groups(g).skipped()) << "node " << n << " group " << g;
      EXPECT_EQ(std::isfinite(results[n]->groups(g).norm()), g > 1)
          << "node " << n << " group " << g;
    }
  }

  // The last node's worker registers again without the last group: that node would leave the
  // group's statistics behind the others', so every node refuses the step, naming the group.
  GradientArena fewer;
  Layout(groups - 1, &fewer);
  ASSERT_TRUE(workers[nodes - 1]->client->Register(fewer).ok());
  fill(5);
  const std::vector<absl::StatusOr<v1::StepResponse>> refused = step_all(5);
  for (int n = 0; n < nodes; ++n) {
    const absl::Status& s = refused[n].status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << "node " << n;
    EXPECT_NE(s.message().find(absl::StrCat("norm group 'g", groups - 1,
                                            "' of job 'groups' is registered on ", nodes - 1,
                                            " of its ", nodes, " nodes")),
              std::string::npos)
        << "node " << n << ": " << s;
  }
  // Registered whole again, the nodes step on alike.
  ASSERT_TRUE(workers[nodes - 1]->client->Register(workers[nodes - 1]->arena).ok());
  fill(6);
  const std::vector<absl::StatusOr<v1::StepResponse>> again = step_all(6);
  for (int n = 0; n < nodes; ++n) {
    ASSERT_TRUE(again[n].ok()) << "node " << n << ": " << again[n].status();
    EXPECT_EQ(again[n]->SerializeAsString(), again[0]->SerializeAsString()) << "node " << n;
  }
}

// Two nodes of `groups` groups, whose replicated group g1 differs from step 2 on.
void ReplicasThatDiffer(int groups) {
  Cluster cluster(2);
  const std::string blob = cluster.Rendezvous("replicas");
  std::vector<std::unique_ptr<Node>> workers;
  for (int n = 0; n < 2; ++n) workers.push_back(AttachNode(cluster, "replicas", blob, n, groups));
  for (uint64_t step = 1; step <= 3; ++step) {
    for (int n = 0; n < 2; ++n) Fill(n, step, workers[n]->arena);
    if (step >= 2) static_cast<float*>(workers[1]->arena.data(1))[0] *= 2;  // g1: replicated
    const std::vector<absl::StatusOr<v1::StepResponse>> results = StepNodes(workers, step);
    for (int n = 0; n < 2; ++n) ASSERT_TRUE(results[n].ok()) << results[n].status();
    EXPECT_EQ(results[1]->SerializeAsString(), results[0]->SerializeAsString())
        << "step " << step << ": node 1 scaled otherwise than node 0";
    if (step == 1) {
      for (int n = 0; n < 2; ++n) {
        EXPECT_FALSE(cluster.daemon(n).WaitForLog("Are they replicas", absl::Milliseconds(300)))
            << "node " << n << ", where the replicas agree";
      }
    }
  }
  for (int n = 0; n < 2; ++n) {
    EXPECT_TRUE(cluster.daemon(n).WaitForLog("step 2: replicated group 'g1''s sum of squares is"))
        << cluster.daemon(n).Log();
    const std::string log = cluster.daemon(n).Log();
    EXPECT_NE(log.find("every node scales it by node 0's norm"), std::string::npos) << log;
    EXPECT_EQ(log.find("Are they replicas"), log.rfind("Are they replicas"))
        << "said more than once";
  }
}

// Replicated gradients that differ across the nodes (stepped before the data-parallel
// all-reduce finished, or no replicas at all) are scaled by node 0's norm on every node, which
// is not the other nodes' gradients' norm: every node's gstabd says so in its log, once a
// rendezvous. The replicas are scaled alike (rounding in a node's own sum would have them drift
// apart). Up to 32 groups the nodes' records carry their own sums; past that, an all-reduce.
TEST(MultiNodeGroupsTest, ReplicasThatDifferAcrossTheNodesAreSaid) {
  for (const int groups : {3, 33}) {
    SCOPED_TRACE(absl::StrCat(groups, " groups"));
    ReplicasThatDiffer(groups);
  }
}

// The workers of one node whose replicated gradients differ (shards registered replicated, say)
// are scaled by the first's norm alone: gstabd says so in its log, once, naming the local ranks.
TEST(MultiNodeGroupsTest, ReplicasThatDifferAcrossANodesWorkersAreSaid) {
  testing::TempDir dir;
  absl::StatusOr<testing::DaemonProcess> daemon = testing::DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  std::vector<std::unique_ptr<Node>> workers;
  for (uint32_t rank = 0; rank < 2; ++rank) {
    auto w = std::make_unique<Node>();
    w->arena.AddTensor("t", 64, DType::kFloat32, "g", v1::REDUCTION_REPLICATED);
    ASSERT_TRUE(w->arena.Allocate().ok());
    auto client = Client::Connect(daemon->socket());
    ASSERT_TRUE(client.ok()) << client.status();
    w->client = *std::move(client);
    AttachOptions options = testing::JobOptions("local-replicas");
    options.local_rank = rank;
    options.local_world_size = 2;
    ASSERT_TRUE(w->client->Attach(options).ok());
    ASSERT_TRUE(w->client->Register(w->arena).ok());
    workers.push_back(std::move(w));
  }
  for (uint64_t step = 1; step <= 3; ++step) {
    std::vector<double> sums;
    for (int rank = 0; rank < 2; ++rank) {
      sums.push_back(Fill(0, step, workers[rank]->arena)[0]);
      if (step >= 2 && rank == 1) {
        static_cast<float*>(workers[rank]->arena.data(0))[0] *= 3;
      }
    }
    const std::vector<absl::StatusOr<v1::StepResponse>> results = StepNodes(workers, step);
    for (int rank = 0; rank < 2; ++rank) {
      ASSERT_TRUE(results[rank].ok()) << results[rank].status();
      // Local rank 0's norm (the sums filled alike; rank 1's first element since tripled).
      EXPECT_NEAR(results[rank]->groups(0).norm() / std::sqrt(sums[0]), 1.0, 1e-6)
          << "rank " << rank << " step " << step;
    }
    if (step == 1) {
      EXPECT_FALSE(daemon->WaitForLog("Are they replicas", absl::Milliseconds(300)))
          << "where the replicas agree";
    }
  }
  EXPECT_TRUE(daemon->WaitForLog("step 2: replicated group 'g''s sum of squares is"))
      << daemon->Log();
  const std::string log = daemon->Log();
  EXPECT_NE(log.find("on local rank 0 and"), std::string::npos) << log;
  EXPECT_EQ(log.find("Are they replicas"), log.rfind("Are they replicas")) << "said more than once";
  EXPECT_EQ(daemon->Stop().value_or(-1), 0);
}

// A state imported on node 0 may hold a group the model no longer has. It stays on node 0 (no
// worker's chunks, so it takes no part in a step) and the nodes step on together, every node
// with node 0's imported statistics; a group registered afterwards is matched across the nodes
// by name, whatever index each node gives it.
TEST(MultiNodeImportTest, AGroupOnlyAnImportBroughtStaysOnNodeZero) {
  Cluster cluster(2);
  const std::string blob = cluster.Rendezvous("imported");
  std::vector<std::unique_ptr<Node>> workers;
  for (int n = 0; n < 2; ++n) workers.push_back(AttachNode(cluster, "imported", blob, n, 3));
  for (int n = 0; n < 2; ++n) Fill(n, 1, workers[n]->arena);
  for (auto& r : StepNodes(workers, 1)) ASSERT_TRUE(r.ok()) << r.status();

  auto observer = Client::Connect(cluster.daemon(0).socket());
  ASSERT_TRUE(observer.ok());
  AttachOptions watch = testing::JobOptions("imported");
  watch.observer = true;
  ASSERT_TRUE((*observer)->Attach(watch).ok());
  absl::StatusOr<std::string> exported = (*observer)->ExportState();
  ASSERT_TRUE(exported.ok()) << exported.status();
  v1::JobState state;
  ASSERT_TRUE(state.ParseFromString(*exported));
  ASSERT_EQ(state.groups(0).name(), "g0");
  state.mutable_groups(0)->set_spike_mean(12345);
  v1::GroupState* gone = state.add_groups();
  *gone = state.groups(1);
  gone->set_name("gone");
  ASSERT_TRUE((*observer)->ImportState(state.SerializeAsString()).ok());

  // Node 0 now has g0, g1, g2, gone; both nodes' workers add g3 (index 4 on node 0, 3 on node 1).
  std::vector<GradientArena> arenas(2);
  for (int n = 0; n < 2; ++n) {
    Layout(4, &arenas[n]);
    ASSERT_TRUE(workers[n]->client->Register(arenas[n]).ok());
  }
  for (uint64_t step = 2; step <= 3; ++step) {
    std::vector<std::vector<double>> sums;
    for (int n = 0; n < 2; ++n) sums.push_back(Fill(n, step, arenas[n]));
    const std::vector<absl::StatusOr<v1::StepResponse>> results = StepNodes(workers, step);
    for (int n = 0; n < 2; ++n) {
      ASSERT_TRUE(results[n].ok())
          << "node " << n << " at step " << step << ": " << results[n].status();
      ASSERT_EQ(results[n]->groups_size(), 4) << "node " << n;
      EXPECT_EQ(results[n]->SerializeAsString(), results[0]->SerializeAsString())
          << "node " << n << " stepped differently at step " << step;
    }
    for (int g = 0; g < 4; ++g) {
      const double expected =
          sums[0][g] + (ReductionOf(g) == v1::REDUCTION_SHARDED ? sums[1][g] : 0.0);
      EXPECT_NEAR(results[1]->groups(g).norm() / std::sqrt(expected), 1.0, 1e-6)
          << "group " << g << " at step " << step;
    }
  }
  absl::StatusOr<v1::GetStatsResponse> stats = workers[1]->client->GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->groups(0).group(), "g0");
  EXPECT_GT(stats->groups(0).norm_mean(), 1000) << "node 1 did not take node 0's import";
}

// The resume path the docs give: node 0 imports the checkpoint before its workers register. The
// import laid node 0's groups out in the state's order, so a model with a group added between
// two of the checkpoint's (or moved) stepped with another layout than the other nodes' and was
// refused at every step. Every node now lays out its first registration's order.
TEST(MultiNodeImportTest, AStateImportedBeforeRegistrationTakesTheRegistrationsOrder) {
  Cluster cluster(2);
  absl::StatusOr<std::string> saved;
  {  // The checkpoint: groups g0 and g2 of a run whose model had no g1.
    const std::string blob = cluster.Rendezvous("saved");
    std::vector<std::unique_ptr<Node>> workers;
    for (int n = 0; n < 2; ++n) workers.push_back(AttachNode(cluster, "saved", blob, n, 3));
    for (int n = 0; n < 2; ++n) Fill(n, 1, workers[n]->arena);
    for (auto& r : StepNodes(workers, 1)) ASSERT_TRUE(r.ok()) << r.status();
    saved = workers[0]->client->ExportState();
    ASSERT_TRUE(saved.ok()) << saved.status();
  }
  v1::JobState state;
  ASSERT_TRUE(state.ParseFromString(*saved));
  ASSERT_EQ(state.groups_size(), 3);
  ASSERT_EQ(state.groups(1).name(), "g1");
  state.mutable_groups()->DeleteSubrange(1, 1);
  state.mutable_groups(0)->set_spike_mean(12345);  // to see where node 0's g0 went

  const std::string blob = cluster.Rendezvous("resumed");
  std::vector<std::unique_ptr<Node>> workers;
  for (int n = 0; n < 2; ++n) {
    auto w = std::make_unique<Node>();
    Layout(3, &w->arena);
    auto client = Client::Connect(cluster.daemon(n).socket());
    ASSERT_TRUE(client.ok()) << client.status();
    w->client = *std::move(client);
    ASSERT_TRUE(w->client->Attach(NodeOptions("resumed", n, 2, blob)).ok());
    workers.push_back(std::move(w));
  }
  ASSERT_TRUE(workers[0]->client->ImportState(state.SerializeAsString()).ok());
  for (int n = 0; n < 2; ++n) {
    ASSERT_TRUE(workers[n]->client->Register(workers[n]->arena).ok()) << "node " << n;
  }
  for (uint64_t step = 2; step <= 3; ++step) {
    std::vector<std::vector<double>> sums;
    for (int n = 0; n < 2; ++n) sums.push_back(Fill(n, step, workers[n]->arena));
    const std::vector<absl::StatusOr<v1::StepResponse>> results = StepNodes(workers, step);
    for (int n = 0; n < 2; ++n) {
      ASSERT_TRUE(results[n].ok())
          << "node " << n << " at step " << step << ": " << results[n].status();
      EXPECT_EQ(results[n]->SerializeAsString(), results[0]->SerializeAsString())
          << "node " << n << " stepped differently at step " << step;
    }
    for (int g = 0; g < 3; ++g) {
      ASSERT_EQ(results[0]->groups(g).group(), absl::StrCat("g", g));
      const double expected =
          sums[0][g] + (ReductionOf(g) == v1::REDUCTION_SHARDED ? sums[1][g] : 0.0);
      EXPECT_NEAR(results[0]->groups(g).norm() / std::sqrt(expected), 1.0, 1e-6)
          << "group " << g << " at step " << step;
    }
  }
  for (int n = 0; n < 2; ++n) {  // node 0's import, on both nodes, with its group
    absl::StatusOr<v1::GetStatsResponse> stats = workers[n]->client->GetStats();
    ASSERT_TRUE(stats.ok()) << stats.status();
    ASSERT_EQ(stats->groups(0).group(), "g0");
    ASSERT_EQ(stats->groups(2).group(), "g2");
    EXPECT_GT(stats->groups(0).norm_mean(), 1000) << "node " << n;
    EXPECT_LT(stats->groups(2).norm_mean(), 1000) << "node " << n;
  }
}

// The same resume with the job still held from the last run on both gstabds (it retires only
// after --job_idle_s): node 0's import reset its order and node 1's did not, so node 0 laid out
// g0, g1, g2 and node 1 g0, g2, g1, refused at every step. Each node's first registration after
// the new rendezvous now sets the order.
TEST(MultiNodeImportTest, AJobHeldFromTheLastRunTakesTheNewRunsOrderOnEveryNode) {
  Cluster cluster(2);
  auto run = [&](const std::vector<int>& groups, std::vector<GradientArena>* arenas) {
    const std::string blob = cluster.Rendezvous("held");
    std::vector<std::unique_ptr<Node>> workers;
    for (int n = 0; n < 2; ++n) {
      auto w = std::make_unique<Node>();
      auto client = Client::Connect(cluster.daemon(n).socket());
      EXPECT_TRUE(client.ok()) << client.status();
      w->client = *std::move(client);
      EXPECT_TRUE(w->client->Attach(NodeOptions("held", n, 2, blob)).ok());
      workers.push_back(std::move(w));
    }
    for (int n = 0; n < 2; ++n) {
      for (int g : groups) {
        (*arenas)[n].AddTensor(absl::StrCat("t", g), 64 + g, DType::kFloat32, absl::StrCat("g", g),
                               ReductionOf(g));
      }
      EXPECT_TRUE((*arenas)[n].Allocate().ok());
    }
    return workers;
  };
  std::vector<GradientArena> first(2);
  auto workers = run({0, 2}, &first);
  for (int n = 0; n < 2; ++n) ASSERT_TRUE(workers[n]->client->Register(first[n]).ok());
  for (int n = 0; n < 2; ++n) Fill(n, 1, first[n]);
  for (auto& r : StepNodes(workers, 1)) ASSERT_TRUE(r.ok()) << r.status();
  absl::StatusOr<std::string> saved = workers[0]->client->ExportState();
  ASSERT_TRUE(saved.ok()) << saved.status();
  for (auto& w : workers) ASSERT_TRUE(w->client->Detach().ok());

  std::vector<GradientArena> second(2);
  workers = run({0, 1, 2}, &second);
  ASSERT_TRUE(workers[0]->client->ImportState(*saved).ok());
  for (int n = 0; n < 2; ++n) {
    ASSERT_TRUE(workers[n]->client->Register(second[n]).ok()) << "node " << n;
  }
  for (int n = 0; n < 2; ++n) Fill(n, 2, second[n]);
  const std::vector<absl::StatusOr<v1::StepResponse>> results = StepNodes(workers, 2);
  for (int n = 0; n < 2; ++n) {
    ASSERT_TRUE(results[n].ok()) << "node " << n << ": " << results[n].status();
    EXPECT_EQ(results[n]->SerializeAsString(), results[0]->SerializeAsString()) << "node " << n;
  }
}

// 32 groups travel in the all-gather, 33 take the second collective.
INSTANTIATE_TEST_SUITE_P(NodesAndGroups, MultiNodeGroupsTest,
                         ::testing::Combine(::testing::Values(2, 3), ::testing::Values(32, 33)),
                         [](const ::testing::TestParamInfo<std::tuple<int, int>>& p) {
                           return absl::StrCat(std::get<0>(p.param), "Nodes", std::get<1>(p.param),
                                               "Groups");
                         });

}  // namespace
}  // namespace gstab
