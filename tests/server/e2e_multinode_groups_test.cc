// Jobs across nodes by their number of norm groups: up to 32, a step's sums travel in the one
// all-gather that checks the nodes agree; past that, a second collective sums them. Either way
// every node gets the same results, and each group's norm is what its reduction says: sharded
// groups sum every node's squares, replicated ones keep the node's own, node-sharded ones take
// node 0's. A group registered on some nodes and not others is refused on every node.
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

// One node's worker: group g is one fp32 tensor of 64 + g elements, reduced by kReductions[g % 3].
struct Node {
  std::unique_ptr<Client> client;
  GradientArena arena;
};

v1::Reduction ReductionOf(int group) { return kReductions[group % 3]; }

// The gradient of `node` at `step`; a replicated group's is the same on every node, as after a
// data-parallel all-reduce.
float Value(int node, int group, uint64_t i, uint64_t step) {
  const int n = ReductionOf(group) == v1::REDUCTION_REPLICATED ? 0 : node;
  return 0.01f * static_cast<float>(1 + (n * 7 + group * 3 + i + step) % 11);
}

class MultiNodeGroupsTest : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(MultiNodeGroupsTest, EveryNodeGetsTheSameNormsAsItsGroupsReductionsSay) {
  const auto [nodes, groups] = GetParam();
  Cluster cluster(nodes);
  const std::string blob = cluster.Rendezvous("groups");
  std::vector<std::unique_ptr<Node>> workers;
  for (int n = 0; n < nodes; ++n) {
    auto w = std::make_unique<Node>();
    for (int g = 0; g < groups; ++g) {
      w->arena.AddTensor(absl::StrCat("t", g), 64 + g, DType::kFloat32, absl::StrCat("g", g),
                         ReductionOf(g));
    }
    ASSERT_TRUE(w->arena.Allocate().ok());
    auto client = Client::Connect(cluster.daemon(n).socket());
    ASSERT_TRUE(client.ok()) << client.status();
    w->client = *std::move(client);
    ASSERT_TRUE(w->client->Attach(NodeOptions("groups", n, nodes, blob)).ok());
    ASSERT_TRUE(w->client->Register(w->arena).ok());
    workers.push_back(std::move(w));
  }
  // Writes every node's gradients of `step`; returns each node's sums of squares per group, as
  // the kernels add them (in double).
  auto fill = [&](uint64_t step) {
    std::vector<std::vector<double>> sums(nodes, std::vector<double>(groups, 0.0));
    for (int n = 0; n < nodes; ++n) {
      for (int g = 0; g < groups; ++g) {
        auto* p = static_cast<float*>(workers[n]->arena.data(g));
        for (uint64_t i = 0; i < workers[n]->arena.numel(g); ++i) {
          p[i] = Value(n, g, i, step);
          sums[n][g] += static_cast<double>(p[i]) * p[i];
        }
      }
    }
    return sums;
  };
  auto step_all = [&](uint64_t step) {
    std::vector<absl::StatusOr<v1::StepResponse>> results(nodes);
    std::vector<std::thread> threads;
    for (int n = 0; n < nodes; ++n) {
      threads.emplace_back([&, n] { results[n] = workers[n]->client->Step(step); });
    }
    for (std::thread& t : threads) t.join();
    return results;
  };
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
  // skips both, and only those.
  fill(4);
  static_cast<float*>(workers[nodes - 1]->arena.data(0))[3] = INFINITY;
  static_cast<float*>(workers[nodes - 1]->arena.data(1))[5] = NAN;
  const std::vector<absl::StatusOr<v1::StepResponse>> results = step_all(4);
  for (int n = 0; n < nodes; ++n) {
    ASSERT_TRUE(results[n].ok()) << "node " << n << ": " << results[n].status();
    EXPECT_TRUE(results[n]->skip()) << "node " << n;
    for (int g = 0; g < groups; ++g) {
      EXPECT_EQ(results[n]->groups(g).skipped(), g <= 1) << "node " << n << " group " << g;
    }
  }

  // The last node's worker registers again without the last group: that node would leave the
  // group's statistics behind the others', so every node refuses the step, naming the group.
  GradientArena fewer;
  for (int g = 0; g + 1 < groups; ++g) {
    fewer.AddTensor(absl::StrCat("t", g), 64 + g, DType::kFloat32, absl::StrCat("g", g),
                    ReductionOf(g));
  }
  ASSERT_TRUE(fewer.Allocate().ok());
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

// 32 groups travel in the all-gather, 33 take the second collective.
INSTANTIATE_TEST_SUITE_P(NodesAndGroups, MultiNodeGroupsTest,
                         ::testing::Combine(::testing::Values(2, 3), ::testing::Values(32, 33)),
                         [](const ::testing::TestParamInfo<std::tuple<int, int>>& p) {
                           return absl::StrCat(std::get<0>(p.param), "Nodes", std::get<1>(p.param),
                                               "Groups");
                         });

}  // namespace
}  // namespace gstab
