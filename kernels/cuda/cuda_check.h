// Error handling for CUDA runtime calls: every call is checked and its failure becomes an
// absl::Status carrying the file, the line and CUDA's own error string.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"

namespace gstab {

// Errors after which the process's CUDA context is lost for good: every later CUDA call fails
// alike, and only a new process can use the GPU again (a kernel's illegal address, an
// uncorrectable ECC error, a device-side assert, ...).
inline bool IsStickyCudaError(cudaError_t err) {
  switch (err) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorLaunchTimeout:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable:
    case cudaErrorNvlinkUncorrectable:
    case cudaErrorContained:
    case cudaErrorTensorMemoryLeak:
    case cudaErrorMpsClientTerminated:
    case cudaErrorExternalDevice:
      return true;
    default:
      return false;
  }
}

// Told of each sticky error that NoteCudaError sees (every checked call, and the queries that
// read a step's progress), with where: set by a process that must not go on without its
// context (gstabd stops, so that it is restarted: its workers would otherwise wait for steps it
// can no longer finish). Null (the default, and a worker's): nothing is told.
using StickyCudaErrorHandler = void (*)(cudaError_t err, const char* expr);
inline std::atomic<StickyCudaErrorHandler> sticky_cuda_error_handler{nullptr};

// Returns `err`, having told the handler of it when it is sticky. For results read rather than
// turned into a status (cudaEventQuery, cudaStreamQuery) and the driver's (its codes for these
// are the runtime's).
inline cudaError_t NoteCudaError(cudaError_t err, const char* expr = "a CUDA query") {
  if (IsStickyCudaError(err)) {
    if (StickyCudaErrorHandler handler = sticky_cuda_error_handler.load()) handler(err, expr);
  }
  return err;
}

inline absl::Status CudaError(cudaError_t err, const char* expr, const char* file, int line) {
  NoteCudaError(err, expr);
  // The likely cause, where CUDA's words do not say it: gstabd and its workers use each GPU at
  // once, which an exclusive compute mode forbids.
  const char* hint = err == cudaErrorDevicesUnavailable
                         ? " (is the GPU in an exclusive compute mode? gstabd and the training "
                           "processes share each GPU, which needs the DEFAULT mode: nvidia-smi -c "
                           "DEFAULT)"
                         : "";
  // Out of device memory is a limit the caller can act on (free memory, smaller buffers), as
  // RESOURCE_EXHAUSTED is for host memory; any other failure is INTERNAL.
  const absl::StatusCode code = err == cudaErrorMemoryAllocation
                                    ? absl::StatusCode::kResourceExhausted
                                    : absl::StatusCode::kInternal;
  return absl::Status(
      code, absl::StrCat(file, ":", line, ": ", expr, " failed: ", cudaGetErrorName(err), ": ",
                         cudaGetErrorString(err), hint));
}

// A kernel launch reports failure through cudaGetLastError, which also returns what earlier
// calls on the thread left behind (a failed IPC open on a pooled RPC thread, a query that
// answered cudaErrorNotReady). Launch functions clear that first, then check with
// cudaGetLastError, so each sees only its own launches' errors.
inline void ClearStaleCudaError() { (void)cudaGetLastError(); }

}  // namespace gstab

// The failure is returned, and cleared from the thread's last error: a caller in a framework's
// process (PyTorch checks cudaGetLastError after its launches) must not meet it again.
#define RETURN_IF_CUDA_ERROR(expr)                                           \
  do {                                                                       \
    const cudaError_t gstab_cuda_err_ = (expr);                              \
    if (gstab_cuda_err_ != cudaSuccess) {                                    \
      ::gstab::ClearStaleCudaError();                                        \
      return ::gstab::CudaError(gstab_cuda_err_, #expr, __FILE__, __LINE__); \
    }                                                                        \
  } while (0)

namespace gstab {

// Loads `kernels` on the current device now instead of at their first launch (see
// PreloadCudaKernels in cuda_kernels.h for why).
inline absl::Status LoadKernels(absl::Span<const void* const> kernels) {
  for (const void* kernel : kernels) {
    cudaFuncAttributes attributes;
    RETURN_IF_CUDA_ERROR(cudaFuncGetAttributes(&attributes, kernel));
  }
  return absl::OkStatus();
}

}  // namespace gstab
