// The GPU read baseline of cuda_kernels_bench (read_baseline.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace gstab::bench {

// Enqueues on `stream` a read of the `bytes` at `data` (16-byte aligned; a multiple of 16 bytes),
// as fast as a kernel that does nothing else reads them; `d_sink` is a device word it may write.
cudaError_t LaunchReadAll(const void* data, size_t bytes, unsigned int* d_sink,
                          cudaStream_t stream);

}  // namespace gstab::bench
