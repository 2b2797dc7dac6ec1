// The few CUDA driver functions gstab needs, looked up through the runtime's driver entry
// point so that programs do not link libcuda and still start where no driver is installed.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "absl/status/statusor.h"

namespace gstab {

// Whether the calling thread has a current CUDA context (cuCtxGetCurrent): it uses a device.
bool ThreadHasCudaContext();

// The CUDA allocation containing a device pointer (cuMemGetAddressRange): its base and size.
absl::StatusOr<std::pair<void*, size_t>> CudaAllocationRange(const void* ptr);

// What memory shared over CUDA IPC is allocated in multiples of: cudaMalloc may carve smaller
// allocations out of one larger block, and an IPC handle shares the whole block (the CUDA
// programming guide recommends 2 MiB-sized allocations for IPC), which would hand the other
// process memory it was not meant to reach.
inline constexpr size_t kIpcGranule = size_t{2} << 20;
inline constexpr size_t RoundUpToIpcGranule(size_t bytes) {
  return (bytes + kIpcGranule - 1) / kIpcGranule * kIpcGranule;
}

// Stream memory operations on a 32-bit word of device memory (cuStreamWaitValue32,
// cuStreamWriteValue32). Work enqueued on `stream` after StreamWaitValue waits until
// (int32_t)(*word - value) >= 0: a greater-or-equal that survives wrap-around. StreamWriteValue
// writes `value` once the work before it on `stream` is done, after a memory fence, so a
// stream waiting on the word sees everything written before.
absl::Status StreamWaitValue(cudaStream_t stream, const uint32_t* word, uint32_t value);
absl::Status StreamWriteValue(cudaStream_t stream, uint32_t* word, uint32_t value);

}  // namespace gstab
