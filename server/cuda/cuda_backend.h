// gstabd's CUDA backend behind the seams of server/gpu_pipeline.h: device memory and events
// over CUDA IPC, and the per-job stream-ordered pipeline (CudaStepper).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/gpu_pipeline.h"

namespace gstab {

std::unique_ptr<DeviceMemory> MakeCudaDeviceMemory();
GpuPipelineFactory MakeCudaPipelineFactory();
// A new NCCL unique id (bytes) for the rendezvous of a multi-node CUDA job.
absl::StatusOr<std::string> NewNcclUniqueId();

}  // namespace gstab
