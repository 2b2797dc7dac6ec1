#include "core/rule.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"

namespace gstab {
namespace {

__global__ void ApplyRuleKernel(RuleParams params, GroupStats* stats, const double* sum_of_squares,
                                const uint32_t* non_finite, uint32_t num_groups,
                                StepOutcome* outcomes, float* scales) {
  const uint32_t g = blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= num_groups) return;
  const StepOutcome out = ApplyRule(params, &stats[g], sum_of_squares[g], non_finite[g] != 0);
  outcomes[g] = out;
  scales[g] = static_cast<float>(out.scale);
}

}  // namespace

absl::Status LaunchApplyRule(const RuleParams& params, GroupStats* d_stats,
                             const double* d_sum_of_squares, const uint32_t* d_non_finite,
                             uint32_t num_groups, StepOutcome* d_outcomes, float* d_scales,
                             cudaStream_t stream) {
  if (num_groups == 0) return absl::OkStatus();
  constexpr uint32_t kThreads = 128;
  const uint32_t blocks = (num_groups + kThreads - 1) / kThreads;
  ApplyRuleKernel<<<blocks, kThreads, 0, stream>>>(params, d_stats, d_sum_of_squares, d_non_finite,
                                                   num_groups, d_outcomes, d_scales);
  RETURN_IF_CUDA_ERROR(cudaPeekAtLastError());
  return absl::OkStatus();
}

}  // namespace gstab
