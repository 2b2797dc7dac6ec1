// CUDA twins of the CPU kernels. Launch functions only enqueue work on `stream` and return
// the launch status; they never synchronise. Device pointers are prefixed d_; the caller owns
// all memory.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "core/rule_types.h"
#include "kernels/chunk_table.h"
#include "kernels/cross_node_mode.h"
#include "kernels/cuda/device_table.h"

namespace gstab {

// The cross-node stage of a multi-node job (docs/multinode.md), stream-ordered around two NCCL
// all-reduces of one fixed-size vector, `exchange`:
//   [0, kCrossNodeCheckSize)   (x, -x) for the step, the layout hash's halves and the group
//                              count: max-reduced, so every node sees whether all agree
//   then num_groups sums       this node's sums of squares (0 where its mode adds nothing):
//                              summed
//   then num_groups flags      1.0 where non-finite, kVoidedMark where voided: summed (>=
//                              kVoidedMark: some GPU's step was voided; > 0: some had a
//                              non-finite element)
// Prepare fills `exchange` from this node's partials; Merge turns the reduced vector into the
// rule kernel's input, by each group's mode (d_modes, kernels/cross_node_mode.h): the global sum
// for sharded groups, the local one for replicated groups, node 0's for node-sharded ones; and
// non-finite when any node saw one; voided (kStepVoided) when any GPU's step was. When the
// nodes disagree, every group's flag becomes kNodesDisagree and the rule kernel applies nothing.
inline constexpr uint32_t kCrossNodeCheckSize = 8;
inline constexpr uint32_t kNodesDisagree = 2;  // a non-finite flag value: see above
// A non-finite flag value: the step was voided (see LaunchGroupSumSquares); the rule kernel
// applies nothing, neither to the statistics nor to the gradients. The other GPUs of the job
// void the step too (unlike a non-finite one, it is not counted, and no gradient is zeroed).
inline constexpr uint32_t kStepVoided = 3;
// A voided GPU's flag in the summed exchange: more than any number of GPUs' 1.0s can add up to.
inline constexpr double kVoidedMark = 4294967296.0;  // 2^32
struct CrossNodeCheck {
  double step;
  double layout_hi;  // the layout hash's upper and lower 32 bits (exact in a double)
  double layout_lo;
  double num_groups;
};
absl::Status LaunchCrossNodePrepare(const CrossNodeCheck& check, const double* d_sums,
                                    const uint32_t* d_non_finite, const uint8_t* d_modes,
                                    uint32_t num_groups, double* d_exchange, cudaStream_t stream);
// `d_aborted` (device-visible host memory, may be null): nonzero once the communicator has
// been aborted, when the reduced vector means nothing and the step is void (kStepVoided: it
// changes nothing; the communicator's next use reports the abort).
absl::Status LaunchCrossNodeMerge(const double* d_exchange, const uint8_t* d_modes,
                                  const int* d_aborted, uint32_t num_groups, double* d_sums,
                                  uint32_t* d_non_finite, cudaStream_t stream);

// Applies the update rule of core/rule.h to `num_groups` groups on the device: reads each
// group's sum of squares and non-finite flag, updates d_stats in place, and writes the outcome
// and the fp32 scale the scale kernel applies. One thread per group, after one block that finds
// whether any group's norm is non-finite: such a group skips the whole step, the other groups'
// statistics untouched (core/rule.h, ApplyRuleInStep); the same header as the CPU path, so
// both backends compute the same statistics. A flag of kNodesDisagree leaves the group's
// statistics and gradients alone (scale 1, kFlagSkipped | kFlagMismatch); so does kStepVoided
// (scale 1, kFlagSkipped | kFlagVoided). Either's norm is NaN: nothing was measured.
// d_non_finite has num_groups + 1 entries: the last is written here (whether one is non-finite).
// d_modes (may be null: every group registered) has a cross-node mode per group: a group of
// kUnregistered (no worker registers it) keeps its statistics, its outcome kFlagUnregistered
// (norm 0, scale 1) whatever the step.
absl::Status LaunchApplyRule(const RuleParams& params, GroupStats* d_stats,
                             const double* d_sum_of_squares, uint32_t* d_non_finite,
                             const uint8_t* d_modes, uint32_t num_groups, StepOutcome* d_outcomes,
                             float* d_scales, cudaStream_t stream);

// Writes the header of the worker-readable results: `step`, `num_groups` and the OR of the
// outcomes' flags.
absl::Status LaunchSummarizeResults(uint64_t step, const StepOutcome* d_outcomes,
                                    uint32_t num_groups, StepResultsHeader* d_header,
                                    cudaStream_t stream);

// Loads every kernel of this library on the current device; idempotent. CUDA loads kernels
// lazily by default (at first launch), and loading one may wait for all work on the device. A
// first launch queued behind a wait on a worker's ready word would then hold the host until that
// worker's backward pass ends, or for good if the word is written only after this call returns
// (the worker waits for the step's answer first). Call before the first step that waits.
absl::Status PreloadCudaKernels();

namespace internal {
absl::Status PreloadRuleKernels();       // apply_rule.cu
absl::Status PreloadCrossNodeKernels();  // cross_node.cu
}  // namespace internal

// 16-byte loads each thread of the sums and scale kernels issues before it uses them (1, 2, 4
// and 8 are built; the results' bits are the same for each). The default unless a benchmark
// compares them.
inline constexpr int kDefaultLoadsInFlight = 4;

// Per-group sums of squares and non-finite flags of every chunk in `table`, like
// CpuGroupSumSquares. d_partials holds one TilePartial per tile (caller-owned scratch);
// d_sums and d_non_finite one entry per group. Deterministic: the same gradients give the same
// bits on every run. `d_voided` (device memory, may be null): while nonzero the chunks are not
// read (the memory may belong to a worker that is gone), every sum is 0 and every flag
// kStepVoided. The word is read once for the whole step (after the tiles, before the groups'
// sums): set while the kernels run, it voids every group or none. Each thread sums up to 256
// squares in fp32 before fp64 (the CPU kernels 64 per lane); a thread whose fp32 sum overflows
// (finite elements beyond about 1e18) sums its share again in fp64, as the CPU kernels do, so
// finite gradients always have a finite sum.
absl::Status LaunchGroupSumSquares(const DeviceChunkTable& table, TilePartial* d_partials,
                                   double* d_sums, uint32_t* d_non_finite, cudaStream_t stream,
                                   const uint32_t* d_voided = nullptr,
                                   int loads_in_flight = kDefaultLoadsInFlight);

// Multiplies each group's elements by d_scales[group] in place, like CpuScaleGroups (a scale of
// exactly 1 writes nothing, exactly 0 writes zeros). It reads no voided word: whether a step is
// void is decided once, by the sums kernel (whose kStepVoided flags give scale 1), so that a
// step voided while it runs is never scaled in part.
absl::Status LaunchScaleGroups(const DeviceChunkTable& table, const float* d_scales,
                               cudaStream_t stream, int loads_in_flight = kDefaultLoadsInFlight);

}  // namespace gstab
