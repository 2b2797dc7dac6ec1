// How CUDA failures become statuses, and which of them lose the process's context for good:
// those are told to the handler a process sets (gstabd stops on one, to be restarted). Needs
// CUDA's runtime library, not a GPU.
#include "kernels/cuda/cuda_check.h"

#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace gstab {
namespace {

std::vector<cudaError_t> told;

absl::Status Launch(cudaError_t result) {
  RETURN_IF_CUDA_ERROR(result);
  return absl::OkStatus();
}

TEST(CudaCheckTest, AnErrorThatLosesTheContextIsToldToTheHandler) {
  sticky_cuda_error_handler = [](cudaError_t err, const char*) { told.push_back(err); };
  absl::Status lost = Launch(cudaErrorIllegalAddress);
  EXPECT_TRUE(absl::StrContains(lost.message(), "cudaErrorIllegalAddress")) << lost;
  EXPECT_TRUE(absl::StrContains(lost.message(), "result failed")) << lost;  // the expression
  EXPECT_EQ(told, std::vector<cudaError_t>{cudaErrorIllegalAddress});
  // Errors the context survives are only returned.
  told.clear();
  for (cudaError_t survived : {cudaErrorMemoryAllocation, cudaErrorInvalidValue,
                               cudaErrorDevicesUnavailable, cudaErrorNotReady}) {
    EXPECT_FALSE(Launch(survived).ok());
  }
  EXPECT_TRUE(told.empty());
  for (cudaError_t sticky :
       {cudaErrorLaunchFailure, cudaErrorECCUncorrectable, cudaErrorAssert, cudaErrorContained,
        cudaErrorMpsClientTerminated, cudaErrorExternalDevice}) {
    EXPECT_TRUE(IsStickyCudaError(sticky)) << cudaGetErrorName(sticky);
  }
  // A query's result, read rather than made a status, is told too; a step still running is not.
  EXPECT_EQ(NoteCudaError(cudaErrorNotReady), cudaErrorNotReady);
  EXPECT_TRUE(told.empty());
  EXPECT_EQ(NoteCudaError(cudaErrorLaunchFailure), cudaErrorLaunchFailure);
  EXPECT_EQ(told, std::vector<cudaError_t>{cudaErrorLaunchFailure});
  told.clear();
  sticky_cuda_error_handler = nullptr;
  EXPECT_FALSE(Launch(cudaErrorIllegalAddress).ok());
  EXPECT_TRUE(told.empty());
}

}  // namespace
}  // namespace gstab
