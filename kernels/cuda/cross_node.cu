// The device side of the cross-node stage (see cuda_kernels.h): what one node contributes to the
// job's two all-reduces, and how the reduced values become the rule kernel's input.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"

namespace gstab {
namespace {

__global__ void PrepareKernel(CrossNodeCheck check, const double* sums, const uint32_t* non_finite,
                              const uint8_t* modes, uint32_t num_groups, double* exchange) {
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < kCrossNodeCheckSize) {
    const double v[] = {check.step, check.layout_hi, check.layout_lo, check.num_groups};
    exchange[i] = (i % 2 == 0) ? v[i / 2] : -v[i / 2];
  }
  if (i < num_groups) {
    double* values = exchange + kCrossNodeCheckSize;
    values[i] = modes[i] == kAddAndTake ? sums[i] : 0.0;
    values[num_groups + i] = non_finite[i] == kStepVoided ? kVoidedMark : non_finite[i] ? 1.0 : 0.0;
  }
}

// One block for all groups: the aborted word (the watchdog may write it while this runs) is read
// once, so every group of the step takes the same answer.
__global__ void MergeKernel(const double* exchange, const uint8_t* modes,
                            const volatile int* aborted, uint32_t num_groups, double* sums,
                            uint32_t* non_finite) {
  __shared__ uint32_t verdict;  // 0: merge; else the flag every group gets
  if (threadIdx.x == 0) {
    bool agree = true;
    for (uint32_t i = 0; i < kCrossNodeCheckSize; i += 2) agree &= exchange[i] == -exchange[i + 1];
    // An aborted all-reduce reduced nothing: the step is void, whatever it left behind.
    verdict = (aborted != nullptr && *aborted != 0) ? kStepVoided : agree ? 0u : kNodesDisagree;
  }
  __syncthreads();
  const double* values = exchange + kCrossNodeCheckSize;
  for (uint32_t g = threadIdx.x; g < num_groups; g += blockDim.x) {
    if (non_finite[g] == kStepVoided) continue;  // this node's step applies nothing
    if (verdict != 0) {
      non_finite[g] = verdict;
      continue;
    }
    const double flags = values[num_groups + g];
    if (flags >= kVoidedMark) {  // another GPU's step was voided: every GPU skips it
      non_finite[g] = kStepVoided;
      continue;
    }
    if (modes[g] == kUnregistered) continue;  // no part in the sum: its own (none)
    if (modes[g] != kKeepOwn) sums[g] = values[g];
    non_finite[g] = flags > 0.0 ? 1u : 0u;
  }
}

uint32_t Blocks(uint32_t n, uint32_t threads) { return (n + threads - 1) / threads; }

}  // namespace

absl::Status internal::PreloadCrossNodeKernels() {
  return LoadKernels(
      {reinterpret_cast<const void*>(&PrepareKernel), reinterpret_cast<const void*>(&MergeKernel)});
}

absl::Status LaunchCrossNodePrepare(const CrossNodeCheck& check, const double* d_sums,
                                    const uint32_t* d_non_finite, const uint8_t* d_modes,
                                    uint32_t num_groups, double* d_exchange, cudaStream_t stream) {
  ClearStaleCudaError();
  constexpr uint32_t kThreads = 128;
  const uint32_t n = num_groups > kCrossNodeCheckSize ? num_groups : kCrossNodeCheckSize;
  PrepareKernel<<<Blocks(n, kThreads), kThreads, 0, stream>>>(check, d_sums, d_non_finite, d_modes,
                                                              num_groups, d_exchange);
  RETURN_IF_CUDA_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchCrossNodeMerge(const double* d_exchange, const uint8_t* d_modes,
                                  const int* d_aborted, uint32_t num_groups, double* d_sums,
                                  uint32_t* d_non_finite, cudaStream_t stream) {
  ClearStaleCudaError();
  if (num_groups == 0) return absl::OkStatus();
  MergeKernel<<<1, 256, 0, stream>>>(d_exchange, d_modes, d_aborted, num_groups, d_sums,
                                     d_non_finite);
  RETURN_IF_CUDA_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace gstab
