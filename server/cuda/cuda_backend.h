// gstabd's CUDA backend behind the seams of server/gpu_pipeline.h: device memory and events
// over CUDA IPC, and the per-job stream-ordered pipeline (CudaStepper).
#pragma once

#include <memory>

#include "server/gpu_pipeline.h"

namespace gstab {

std::unique_ptr<DeviceMemory> MakeCudaDeviceMemory();
GpuPipelineFactory MakeCudaPipelineFactory();

}  // namespace gstab
