// CUDA twins of the CPU kernels. Launch functions only enqueue work on `stream` and return
// the launch status; they never synchronise. Device pointers are prefixed d_; the caller owns
// all memory.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "core/rule_types.h"

namespace gstab {

// Applies the update rule of core/rule.h to `num_groups` groups on the device: reads each
// group's sum of squares and non-finite flag, updates d_stats in place, and writes the outcome
// and the fp32 scale the scale kernel applies. One thread per group; the same header as the CPU
// path, so both backends compute the same statistics.
absl::Status LaunchApplyRule(const RuleParams& params, GroupStats* d_stats,
                             const double* d_sum_of_squares, const uint32_t* d_non_finite,
                             uint32_t num_groups, StepOutcome* d_outcomes, float* d_scales,
                             cudaStream_t stream);

}  // namespace gstab
