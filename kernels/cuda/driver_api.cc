#include "kernels/cuda/driver_api.h"

#include <cuda.h>
#include <cudaTypedefs.h>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_check.h"

namespace gstab {
namespace {

// The driver's `name` at ABI `version`, or null where the driver lacks it.
template <typename Fn>
Fn DriverFunction(const char* name, int version) {
  void* f = nullptr;
  cudaDriverEntryPointQueryResult found;
  if (cudaGetDriverEntryPointByVersion(name, &f, version, cudaEnableDefault, &found) !=
          cudaSuccess ||
      found != cudaDriverEntryPointSuccess) {
    (void)cudaGetLastError();
    return nullptr;
  }
  return reinterpret_cast<Fn>(f);
}

absl::Status DriverResult(CUresult r, const char* what) {
  if (r == CUDA_SUCCESS) return absl::OkStatus();
  NoteCudaError(static_cast<cudaError_t>(r), what);
  static const auto describe = DriverFunction<PFN_cuGetErrorString_v6000>("cuGetErrorString", 6000);
  const char* text = nullptr;
  if (describe == nullptr || describe(r, &text) != CUDA_SUCCESS || text == nullptr) {
    text = "unknown error";
  }
  return absl::InternalError(
      absl::StrCat(what, " failed: ", text, " (CUDA driver error ", static_cast<int>(r), ")"));
}

}  // namespace

bool ThreadHasCudaContext() {
  static const auto fn = DriverFunction<PFN_cuCtxGetCurrent_v4000>("cuCtxGetCurrent", 4000);
  CUcontext context = nullptr;
  return fn != nullptr && fn(&context) == CUDA_SUCCESS && context != nullptr;
}

absl::StatusOr<std::pair<void*, size_t>> CudaAllocationRange(const void* ptr) {
  static const auto fn =
      DriverFunction<PFN_cuMemGetAddressRange_v3020>("cuMemGetAddressRange", 3020);
  if (fn == nullptr) return absl::FailedPreconditionError("cuMemGetAddressRange is not available");
  CUdeviceptr base = 0;
  size_t size = 0;
  const CUresult r = fn(&base, &size, reinterpret_cast<CUdeviceptr>(ptr));
  if (r == CUDA_ERROR_NOT_FOUND || r == CUDA_ERROR_INVALID_VALUE) {
    return absl::InvalidArgumentError(
        absl::StrCat("the pointer is not inside a CUDA allocation (CUDA driver error ",
                     static_cast<int>(r), ")"));
  }
  // Anything else (no context, a driver not initialised) is not the pointer's fault: named.
  if (absl::Status s = DriverResult(r, "cuMemGetAddressRange"); !s.ok()) return s;
  return std::make_pair(reinterpret_cast<void*>(base), size);
}

absl::Status StreamWaitValue(cudaStream_t stream, const uint32_t* word, uint32_t value) {
  static const auto fn =
      DriverFunction<PFN_cuStreamWaitValue32_v11070>("cuStreamWaitValue32", 11070);
  if (fn == nullptr) return absl::FailedPreconditionError("cuStreamWaitValue32 is not available");
  return DriverResult(
      fn(stream, reinterpret_cast<CUdeviceptr>(word), value, CU_STREAM_WAIT_VALUE_GEQ),
      "cuStreamWaitValue32");
}

absl::Status StreamWriteValue(cudaStream_t stream, uint32_t* word, uint32_t value) {
  static const auto fn =
      DriverFunction<PFN_cuStreamWriteValue32_v11070>("cuStreamWriteValue32", 11070);
  if (fn == nullptr) return absl::FailedPreconditionError("cuStreamWriteValue32 is not available");
  return DriverResult(
      fn(stream, reinterpret_cast<CUdeviceptr>(word), value, CU_STREAM_WRITE_VALUE_DEFAULT),
      "cuStreamWriteValue32");
}

}  // namespace gstab
