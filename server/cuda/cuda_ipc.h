// CUDA IPC for gstabd: workers' gradient allocations, opened once per allocation and shared
// by reference count. Every handle is validated before it is opened, and the registered range
// is checked against the real allocation (cuMemGetAddressRange).
//
// Thread-safe. The process must not be the one that exported the handles (CUDA refuses that).
#pragma once

#include <cuda_runtime_api.h>

#include <map>
#include <memory>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace gstab {

// Devices this process can use; 0 (not an error) without a driver or a GPU. `why` (may be null)
// takes CUDA's reason when there are none ("" for a GPU-less machine's plain "no device").
int CudaDeviceCount(std::string* why = nullptr);

struct IpcRegion {
  void* base = nullptr;  // start of the worker's allocation in this process
  size_t size = 0;       // the allocation's size
  int device = 0;
};

class CudaIpcRegistry {
 public:
  // The allocation named by `handle` (a cudaIpcMemHandle_t, 64 bytes) on `device`, opened on
  // first use. INVALID_ARGUMENT when the handle is malformed, the device absent, or
  // [offset, offset + bytes) is not inside the allocation.
  absl::StatusOr<std::shared_ptr<IpcRegion>> Open(const std::string& handle, int device,
                                                  uint64_t offset, uint64_t bytes);
  int LiveRegions();
  // Waits until every mapping on `device` released before the call is closed (the device's
  // reaper closes it), or `timeout`; whether they all are.
  bool AwaitClosed(int device, absl::Duration timeout);

 private:
  // Handles whose mapping a reaper has yet to close, and their devices (shared with the
  // closing deleters).
  struct Closing {
    absl::Mutex mu;
    std::map<std::string, int> handles ABSL_GUARDED_BY(mu);
  };

  absl::Mutex mu_;
  std::map<std::string, std::weak_ptr<IpcRegion>> regions_ ABSL_GUARDED_BY(mu_);
  const std::shared_ptr<Closing> closing_ = std::make_shared<Closing>();
};

}  // namespace gstab
