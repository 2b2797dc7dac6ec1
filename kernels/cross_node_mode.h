// How one rank of a job's cross-node sum (a node on the CPU backend, a GPU on the CUDA one) takes
// part in it for a norm group, by the group's reduction and the rank's node. Plain C++: the
// server picks the modes, the CUDA cross-node kernels read them.
#pragma once

#include <cstdint>

namespace gstab {

// Sharded (and node-sharded on node 0): adds its sums, takes the total.
inline constexpr uint8_t kAddAndTake = 0;
// Replicated: keeps its own sums on the CUDA backend (every GPU's replica, after NCCL's all-reduce,
// the same bits in the same layout); on the CPU backend every node takes node 0's, which the
// nodes' exchange carries (server/cross_node.cc).
inline constexpr uint8_t kKeepOwn = 1;
// Node-sharded off node 0 (node 0 holds the same gradient): adds nothing, takes the total.
inline constexpr uint8_t kTakeOnly = 2;
// No worker registers the group (only an import or a checkpoint brought it): on the CUDA backend
// it takes no part in the cross-node sum and its statistics stay as they are, as the CPU
// backend leaves a group no worker of the step has alone.
inline constexpr uint8_t kUnregistered = 3;

}  // namespace gstab
