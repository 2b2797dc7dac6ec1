#include "core/rule.h"
#include "kernels/cross_node_mode.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"

namespace gstab {
namespace {

__device__ bool NotApplied(uint32_t non_finite) {
  return non_finite == kNodesDisagree || non_finite == kStepVoided;
}

// One block: whether any group's norm is non-finite (not a step applying nothing), into
// non_finite[num_groups]. __syncthreads_or: the same answer whatever the order.
__global__ void AnyNonFiniteKernel(uint32_t* non_finite, uint32_t num_groups) {
  int mine = 0;
  for (uint32_t g = threadIdx.x; g < num_groups; g += blockDim.x) {
    mine |= non_finite[g] != 0 && !NotApplied(non_finite[g]);
  }
  const int any = __syncthreads_or(mine);
  if (threadIdx.x == 0) non_finite[num_groups] = any != 0 ? 1u : 0u;
}

// One thread per group. A non-finite group skips the whole step, the others' statistics
// untouched (core/rule.h, ApplyRuleInStep): non_finite[num_groups] says whether one is.
__global__ void ApplyRuleKernel(RuleParams params, GroupStats* stats, const double* sum_of_squares,
                                const uint32_t* non_finite, const uint8_t* modes,
                                uint32_t num_groups, StepOutcome* outcomes, float* scales) {
  const uint32_t g = blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= num_groups) return;
  StepOutcome out;
  if (modes != nullptr && modes[g] == kUnregistered) {
    out.flags = kFlagUnregistered;  // norm 0, scale 1, whatever the step: none of it is registered
  } else if (NotApplied(non_finite[g])) {
    out.norm = NAN;
    out.flags = kFlagSkipped | (non_finite[g] == kNodesDisagree ? kFlagMismatch : kFlagVoided);
  } else {
    out = ApplyRuleInStep(params, &stats[g], sum_of_squares[g], non_finite[g] != 0,
                          non_finite[num_groups] != 0);
  }
  outcomes[g] = out;
  scales[g] = KernelScale(out.scale);
}

// One block: ORs every group's flags (integer atomics, so the result does not depend on the
// order) and writes the header of the worker-readable results.
__global__ void SummarizeKernel(uint64_t step, const StepOutcome* outcomes, uint32_t num_groups,
                                StepResultsHeader* header) {
  __shared__ uint32_t flags;
  if (threadIdx.x == 0) flags = 0;
  __syncthreads();
  uint32_t mine = 0;
  for (uint32_t g = threadIdx.x; g < num_groups; g += blockDim.x) mine |= outcomes[g].flags;
  if (mine != 0) atomicOr(&flags, mine);
  __syncthreads();
  if (threadIdx.x == 0) {
    StepResultsHeader h;
    h.step = step;
    h.num_groups = num_groups;
    h.flags = flags;
    *header = h;
  }
}

}  // namespace

absl::Status internal::PreloadRuleKernels() {
  return LoadKernels({reinterpret_cast<const void*>(&AnyNonFiniteKernel),
                      reinterpret_cast<const void*>(&ApplyRuleKernel),
                      reinterpret_cast<const void*>(&SummarizeKernel)});
}

absl::Status LaunchSummarizeResults(uint64_t step, const StepOutcome* d_outcomes,
                                    uint32_t num_groups, StepResultsHeader* d_header,
                                    cudaStream_t stream) {
  ClearStaleCudaError();
  SummarizeKernel<<<1, 256, 0, stream>>>(step, d_outcomes, num_groups, d_header);
  RETURN_IF_CUDA_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchApplyRule(const RuleParams& params, GroupStats* d_stats,
                             const double* d_sum_of_squares, uint32_t* d_non_finite,
                             const uint8_t* d_modes, uint32_t num_groups, StepOutcome* d_outcomes,
                             float* d_scales, cudaStream_t stream) {
  ClearStaleCudaError();
  if (num_groups == 0) return absl::OkStatus();
  AnyNonFiniteKernel<<<1, 256, 0, stream>>>(d_non_finite, num_groups);
  RETURN_IF_CUDA_ERROR(cudaGetLastError());
  constexpr uint32_t kThreads = 128;
  const uint32_t blocks = (num_groups + kThreads - 1) / kThreads;
  ApplyRuleKernel<<<blocks, kThreads, 0, stream>>>(params, d_stats, d_sum_of_squares, d_non_finite,
                                                   d_modes, num_groups, d_outcomes, d_scales);
  RETURN_IF_CUDA_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace gstab
