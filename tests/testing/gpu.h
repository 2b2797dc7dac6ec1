// What a GPU test does where it finds no CUDA device: skips (a build machine without a GPU), or
// fails when GSTAB_REQUIRE_CUDA=1 (scripts/gpu-check sets it), so that a GPU machine whose CUDA
// could not start reads as a failure rather than as tests that passed.
//
//   TEST(CudaThing, Works) {
//     GSTAB_SKIP_WITHOUT_GPU(CudaDeviceCount() > 0);
//     ...
//   }
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "gtest/gtest.h"

namespace gstab::testing {

inline bool CudaRequired() {
  const char* v = std::getenv("GSTAB_REQUIRE_CUDA");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

// The exit status of a binary every test of which needs a GPU, where none is found and none is
// required: ctest (SKIP_RETURN_CODE) lists it as not run, rather than as passed with its cases
// skipped. Decided before any test runs, so that failed cases are never taken for skipped.
inline constexpr int kNoGpuExitCode = 77;

// For such a binary, at namespace scope:
//   ::testing::Environment* const kGpuOnly =
//       ::testing::AddGlobalTestEnvironment(new GpuOnlyBinary([] { return HaveGpu(); }));
class GpuOnlyBinary : public ::testing::Environment {
 public:
  explicit GpuOnlyBinary(bool (*have_gpu)()) : have_gpu_(have_gpu) {}
  void SetUp() override {
    if (CudaRequired() || have_gpu_()) return;  // required: each test fails, saying why
    std::printf("no CUDA device: every test here needs one (exit %d: not run)\n", kNoGpuExitCode);
    std::fflush(stdout);
    std::exit(kNoGpuExitCode);
  }

 private:
  bool (*const have_gpu_)();
};

}  // namespace gstab::testing

// Returns from the test (or SetUp) unless `have_gpu`.
#define GSTAB_SKIP_WITHOUT_GPU(have_gpu)                                      \
  if (!(have_gpu)) {                                                          \
    if (::gstab::testing::CudaRequired()) {                                   \
      FAIL() << "no CUDA device, and GSTAB_REQUIRE_CUDA=1 says there is one"; \
    }                                                                         \
    GTEST_SKIP() << "no CUDA device";                                         \
  }
