// gstabd's CUDA streams, kept for reuse. CUDA hands each new stream the next of the device's
// hardware queues in turn (32 with CUDA_DEVICE_MAX_CONNECTIONS=32), and a stream that shares
// a queue with one held at a worker's ready word waits with it. Were every job's pipeline to
// make new streams, a long-running gstabd would sooner or later give a new job a queue that a
// running job's stream holds, even with two jobs at a time. Reused streams keep the streams
// gstabd has at once to as many as its pipelines have ever needed at once: with sixteen
// pipelines at a time or fewer, no two of them share a queue (NCCL's own streams aside).
#pragma once

#include <cuda_runtime_api.h>

#include "absl/status/statusor.h"

namespace gstab {

// A non-blocking stream on `device` (the current device must be `device`): one given back
// before, or a new one.
absl::StatusOr<cudaStream_t> AcquireStream(int device);

// Gives back a stream from AcquireStream if no work is queued on it; destroys it otherwise
// (CUDA destroys it once that work is done).
void ReturnStream(int device, cudaStream_t stream);

}  // namespace gstab
