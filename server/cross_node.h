// The cross-node stage of a step (docs/multinode.md): after this node has combined its local
// workers' partial sums, they are reduced across the job's nodes. One all-gather of every
// node's record: its step, group layout, configuration and flags, checked alike on every node
// (the same step, the same groups; whether the configurations differ, or a node wants node 0's
// statistics), and, for a job of up to 32 groups, its group sums and non-finite flags, added in
// node order. A larger job sums [group sums | non-finite flags] in a second collective, an
// all-reduce, once the check has passed. Replicated groups keep their local sums; non-finite
// flags are combined for every group, so all nodes skip together or none does. A multi-node
// job's configuration and statistics are node 0's: when they differ, every node takes node
// 0's (BroadcastParams, SyncStatistics) before the rule runs, so all nodes apply one rule.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/rule_types.h"
#include "server/collective.h"

namespace gstab {

struct NodePartials {
  std::vector<double> sums;          // per group, this node's combined sum of squares
  std::vector<uint32_t> non_finite;  // per group
  std::vector<int> reduction;        // per group: a v1::Reduction
  // Per group, whether this node's workers registered it (empty: none). Every node must agree:
  // a node without a group would leave its statistics behind the others'.
  std::vector<bool> present;
  std::function<std::string(size_t)> group_name;  // for messages (may be empty)
};

// A fingerprint of the job's groups (names and reductions, in index order).
// How a rank of node `node_rank` takes part in the cross-node sum of a group of `reduction`
// (a v1::Reduction): kAddAndTake, kKeepOwn or kTakeOnly of kernels/cross_node_mode.h.
uint8_t CrossNodeMode(int reduction, uint32_t node_rank);

// Whether two sums of squares of one replicated gradient differ beyond rounding: the same
// gradients laid out in other chunks sum in another order (in fp32 within a tile: about 1e-7
// apart). Non-finite sums are not compared.
bool ReplicaSumsDiffer(double a, double b);

uint64_t LayoutHash(absl::Span<const std::string> groups, absl::Span<const int> reduction);
// A fingerprint of an effective configuration.
uint64_t ConfigHash(const RuleParams& params);

// What this node brings to a step's agreement.
struct StepCheck {
  uint64_t layout_hash = 0;
  uint64_t config_hash = 0;
  bool want_statistics = false;  // this node is to take node 0's statistics
  bool refused = false;          // this node refuses the step: it joins the check only
  // Node 0: the first step it takes, its last step + 1 (0: any). The other nodes follow node
  // 0's step numbers (a new rendezvous resets theirs), so this binds them all.
  uint64_t first_step = 0;
};
// What the nodes agreed, the same on every node.
struct StepAgreement {
  bool configs_differ = false;   // every node takes node 0's configuration (BroadcastParams)
  bool sync_statistics = false;  // every node takes node 0's statistics (SyncStatistics): asked
                                 // for, or the configurations differ
  // The first replicated group whose gradients differ across the nodes, said (empty: none
  // found; past 32 groups, found by this node's own sum, or on node 0 by the nodes' sums on
  // average). Every node scales it by node 0's norm, which the other nodes' do not have.
  std::string replicas_differ;
};

// The values a CUDA job's nodes agree at a generation's first step (Job::AgreeGpuLayout: group
// count, configuration hash and GPUs a node, each as a max and a negated max).
inline constexpr size_t kGpuLayoutValues = 8;

// How this gstabd lays out the records nodes exchange as raw bytes (the step check's length,
// the GPU layout agreement's, RuleParams, GroupStats): every node of a job must lay them out
// alike (RendezvousInfo).
std::string PeerRecordLayout();

// Reduces `partials` in place. ABORTED when a node refused the step (check.refused there: every
// node leaves it after the check, the communicator intact); INVALID_ARGUMENT when steps or
// layouts differ across nodes, the step is not after node 0's last (check.first_step there), or a
// group is registered on some nodes and not others (nothing is summed); UNAVAILABLE /
// DEADLINE_EXCEEDED naming the missing nodes when a node dies or stalls past `timeout`.
absl::Status ReduceAcrossNodes(Collective* collective, const std::string& job, uint64_t step,
                               const StepCheck& check, absl::Duration timeout,
                               NodePartials* partials, StepAgreement* agreement);

// INVALID_ARGUMENT: step `step` of `job` is not after its last step, `last_step` (node 0's, on
// a job across nodes: `node_zeros`), saying which step to go on from and how a resumed run
// goes on from its own.
absl::Status StepNotAfterLast(const std::string& job, uint64_t step, uint64_t last_step,
                              bool node_zeros);

// Replaces `params` with node 0's.
absl::Status BroadcastParams(Collective* collective, absl::Duration timeout, RuleParams* params);
// `failure` of a collective, as a StoppingError (server/grpc_status.h) when this gstabd's stop
// cut it short: not counted as a failed call.
absl::Status AsStopping(const Collective& collective, absl::Status failure);

// Replaces `stats` with node 0's (a new communicator starts from one set of statistics).
absl::Status SyncStatistics(Collective* collective, absl::Duration timeout,
                            std::vector<GroupStats>* stats);

// A collective's `failure` at `step` of `job`, said as ReduceAcrossNodes says its own: the
// missing nodes named (asked through the rendezvous store), as stopping where this gstabd's stop
// cut it short, with what to do, and in this node's log.
absl::Status NameFailure(Collective* collective, const std::string& job, uint64_t step,
                         const absl::Status& failure);

}  // namespace gstab
