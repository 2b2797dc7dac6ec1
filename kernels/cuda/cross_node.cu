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
    values[num_groups + i] = non_finite[i] ? 1.0 : 0.0;
  }
}

__global__ void MergeKernel(const double* exchange, const uint8_t* modes,
                            const volatile int* aborted, uint32_t num_groups, double* sums,
                            uint32_t* non_finite) {
  const uint32_t g = blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= num_groups) return;
  if (non_finite[g] == kStepVoided) return;          // this node's step applies nothing
  bool agree = aborted == nullptr || *aborted == 0;  // an aborted all-reduce agrees on nothing
  for (uint32_t i = 0; i < kCrossNodeCheckSize; i += 2) agree &= exchange[i] == -exchange[i + 1];
  if (!agree) {
    non_finite[g] = kNodesDisagree;
    return;
  }
  const double* values = exchange + kCrossNodeCheckSize;
  if (modes[g] != kKeepOwn) sums[g] = values[g];
  non_finite[g] = values[num_groups + g] > 0.0 ? 1u : 0u;
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
  PrepareKernel<<<Blocks(n, kThreads), kThreads, 0, stream>>>(check, d_sums, d_non_finite,
                                                              d_modes, num_groups, d_exchange);
  RETURN_IF_CUDA_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchCrossNodeMerge(const double* d_exchange, const uint8_t* d_modes,
                                  const int* d_aborted, uint32_t num_groups, double* d_sums,
                                  uint32_t* d_non_finite, cudaStream_t stream) {
  ClearStaleCudaError();
  if (num_groups == 0) return absl::OkStatus();
  constexpr uint32_t kThreads = 128;
  MergeKernel<<<Blocks(num_groups, kThreads), kThreads, 0, stream>>>(
      d_exchange, d_modes, d_aborted, num_groups, d_sums, d_non_finite);
  RETURN_IF_CUDA_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace gstab
