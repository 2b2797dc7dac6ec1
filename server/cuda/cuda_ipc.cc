#include "server/cuda/cuda_ipc.h"

#include <dlfcn.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/weak_map.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/driver_api.h"
#include "server/cuda/device_reaper.h"

namespace gstab {
namespace {

absl::Status CheckDevice(int device) {
  const int count = CudaDeviceCount();
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("device ", device, " is not one of this node's ", count, " CUDA devices"));
  }
  return absl::OkStatus();
}

}  // namespace

int CudaDeviceCount(std::string* why) {
  int n = 0;
  if (const cudaError_t e = cudaGetDeviceCount(&n); e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    // An old driver, or GPUs in a state CUDA refuses, are told; a machine without a GPU or a
    // driver is not (CUDA says "insufficient driver" for no driver at all: the runtime then
    // found no libcuda to load).
    const bool no_driver = e == cudaErrorInsufficientDriver &&
                           dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD) == nullptr;
    if (why != nullptr && e != cudaErrorNoDevice && !no_driver) {
      *why = absl::StrCat(cudaGetErrorName(e), ": ", cudaGetErrorString(e));
      if (e == cudaErrorInsufficientDriver) {
        absl::StrAppend(why, " (gstabd's CUDA 13 needs an NVIDIA driver of 580 or later)");
      }
    }
    return 0;
  }
  return n;
}

absl::StatusOr<std::shared_ptr<IpcRegion>> CudaIpcRegistry::Open(const std::string& handle,
                                                                 int device, uint64_t offset,
                                                                 uint64_t bytes) {
  if (handle.size() != sizeof(cudaIpcMemHandle_t)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "IPC memory handle is ", handle.size(), " bytes, expected ", sizeof(cudaIpcMemHandle_t)));
  }
  if (absl::Status s = CheckDevice(device); !s.ok()) return s;
  if (offset > UINT64_MAX - bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("offset ", offset, " + size ", bytes, " overflows"));
  }
  // A mapping of this allocation released a moment ago may not be closed yet (the reaper closes
  // it, and a close can wait for the device): opening it again before that would fail. Waited
  // for before taking mu_, so that registrations of other allocations go on meanwhile.
  auto closed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(closing_->mu) {
    return closing_->handles.count(handle) == 0;
  };
  const std::string still_closing =
      "this allocation's earlier mapping is still being released (the GPU is busy); register "
      "again shortly";
  {
    absl::MutexLock closing_lock(&closing_->mu);
    if (!closing_->mu.AwaitWithTimeout(absl::Condition(&closed), absl::Seconds(2))) {
      return absl::UnavailableError(still_closing);
    }
  }
  absl::MutexLock lock(&mu_);
  // Only live regions stay listed: every worker process brings handles of its own, and a
  // refused handle must not stay either.
  PruneAndCountLive(&regions_);
  auto known = regions_.find(handle);
  std::shared_ptr<IpcRegion> region = known != regions_.end() ? known->second.lock() : nullptr;
  if (region == nullptr) {
    {
      absl::MutexLock closing_lock(&closing_->mu);
      if (!closed()) return absl::UnavailableError(still_closing);  // released again meanwhile
    }
    cudaIpcMemHandle_t h;
    std::memcpy(&h, handle.data(), sizeof h);
    RETURN_IF_CUDA_ERROR(cudaSetDevice(device));
    void* ptr = nullptr;
    if (const cudaError_t opened = cudaIpcOpenMemHandle(&ptr, h, cudaIpcMemLazyEnablePeerAccess);
        opened != cudaSuccess) {
      // What a handle of a process that exited or freed its memory (or garbage) gives: the
      // worker's fault. Anything else (out of memory, peer access, a lost context) is gstabd's.
      ClearStaleCudaError();
      if (opened != cudaErrorInvalidValue && opened != cudaErrorInvalidResourceHandle &&
          opened != cudaErrorMapBufferObjectFailed) {
        return CudaError(opened, "cudaIpcOpenMemHandle", __FILE__, __LINE__);
      }
      return absl::FailedPreconditionError(absl::StrCat(
          "the CUDA IPC handle does not open on device ", device, " (", cudaGetErrorName(opened),
          ": ", cudaGetErrorString(opened),
          "): it names no live allocation of a process on this node (its process exited, or "
          "freed it), or memory of another GPU; register memory the worker holds"));
    }
    region = std::shared_ptr<IpcRegion>(new IpcRegion{ptr, 0, device},
                                        [closing = closing_, handle](IpcRegion* r) {
                                          {
                                            absl::MutexLock closing_lock(&closing->mu);
                                            closing->handles.emplace(handle, r->device);
                                          }
                                          // Closing may wait for work anywhere on the device: off
                                          // the caller's path.
                                          DeferDeviceRelease(r->device, [closing, handle, r] {
                                            cudaSetDevice(r->device);
                                            cudaIpcCloseMemHandle(r->base);
                                            ClearStaleCudaError();
                                            delete r;
                                            absl::MutexLock closing_lock(&closing->mu);
                                            closing->handles.erase(handle);
                                          });
                                        });
    absl::StatusOr<std::pair<void*, size_t>> range = CudaAllocationRange(ptr);
    if (!range.ok()) return range.status();  // `region` goes, closing the mapping
    // The GPU the memory is on: a worker's wrong device (its uuid) would have gstabd's
    // kernels on one GPU reach another's memory over peer access, or fail later.
    cudaPointerAttributes where{};
    RETURN_IF_CUDA_ERROR(cudaPointerGetAttributes(&where, ptr));
    if (where.device != device) {
      return absl::InvalidArgumentError(
          absl::StrCat("the CUDA IPC handle names memory on gstabd's device ", where.device,
                       ", not on device ", device,
                       " that the registration gives (its device "
                       "uuid): register each GPU's memory under its own device"));
    }
    region->size = range->second - (static_cast<char*>(ptr) - static_cast<char*>(range->first));
    regions_[handle] = region;
  }
  if (region->device != device) {
    return absl::InvalidArgumentError(
        absl::StrCat("this IPC handle was opened on device ", region->device, ", not ", device));
  }
  if (offset + bytes > region->size) {
    return absl::InvalidArgumentError(absl::StrCat("offset ", offset, " + size ", bytes,
                                                   " exceeds the ", region->size,
                                                   "-byte allocation the handle names"));
  }
  return region;
}

bool CudaIpcRegistry::AwaitClosed(int device, absl::Duration timeout) {
  absl::MutexLock lock(&closing_->mu);
  std::set<std::string> released;
  for (const auto& [handle, on] : closing_->handles) {
    if (on == device) released.insert(handle);
  }
  auto closed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(closing_->mu) {
    for (const std::string& handle : released) {
      if (closing_->handles.count(handle) != 0) return false;
    }
    return true;
  };
  return closing_->mu.AwaitWithTimeout(absl::Condition(&closed), timeout);
}

int CudaIpcRegistry::LiveRegions() {
  absl::MutexLock lock(&mu_);
  return PruneAndCountLive(&regions_);
}

}  // namespace gstab
