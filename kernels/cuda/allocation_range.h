// The CUDA allocation containing a device pointer (cuMemGetAddressRange), looked up through
// the runtime's driver entry point so that programs do not link libcuda and still start where
// no driver is installed.
#pragma once

#include <cstddef>
#include <utility>

#include "absl/status/statusor.h"

namespace gstab {

absl::StatusOr<std::pair<void*, size_t>> CudaAllocationRange(const void* ptr);

}  // namespace gstab
