// CUDA twins of the CPU kernels. Launch functions only enqueue work on `stream` and return
// the launch status; they never synchronise. Device pointers are prefixed d_; the caller owns
// all memory.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "core/rule_types.h"
#include "kernels/chunk_table.h"
#include "kernels/cuda/device_table.h"

namespace gstab {

// Applies the update rule of core/rule.h to `num_groups` groups on the device: reads each
// group's sum of squares and non-finite flag, updates d_stats in place, and writes the outcome
// and the fp32 scale the scale kernel applies. One thread per group; the same header as the CPU
// path, so both backends compute the same statistics.
absl::Status LaunchApplyRule(const RuleParams& params, GroupStats* d_stats,
                             const double* d_sum_of_squares, const uint32_t* d_non_finite,
                             uint32_t num_groups, StepOutcome* d_outcomes, float* d_scales,
                             cudaStream_t stream);

// Writes the header of the worker-readable results: `step`, `num_groups` and the OR of the
// outcomes' flags.
absl::Status LaunchSummarizeResults(uint64_t step, const StepOutcome* d_outcomes,
                                    uint32_t num_groups, StepResultsHeader* d_header,
                                    cudaStream_t stream);

// Per-group sums of squares and non-finite flags of every chunk in `table`, like
// CpuGroupSumSquares. d_partials holds one TilePartial per tile (caller-owned scratch);
// d_sums and d_non_finite one entry per group. Deterministic: the same gradients give the same
// bits on every run.
absl::Status LaunchGroupSumSquares(const DeviceChunkTable& table, TilePartial* d_partials,
                                   double* d_sums, uint32_t* d_non_finite, cudaStream_t stream);

// Multiplies each group's elements by d_scales[group] in place, like CpuScaleGroups (a scale of
// exactly 1 writes nothing, exactly 0 writes zeros).
absl::Status LaunchScaleGroups(const DeviceChunkTable& table, const float* d_scales,
                               cudaStream_t stream);

}  // namespace gstab
