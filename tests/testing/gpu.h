// What a GPU test does where it finds no CUDA device: skips (a build machine without a GPU), or
// fails when GSTAB_REQUIRE_CUDA=1 (scripts/gpu-check sets it), so that a GPU machine whose CUDA
// could not start reads as a failure rather than as tests that passed.
//
//   TEST(CudaThing, Works) {
//     GSTAB_SKIP_WITHOUT_GPU(CudaDeviceCount() > 0);
//     ...
//   }
#pragma once

#include <cstdlib>
#include <cstring>

#include "gtest/gtest.h"

namespace gstab::testing {

inline bool CudaRequired() {
  const char* v = std::getenv("GSTAB_REQUIRE_CUDA");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

}  // namespace gstab::testing

// Returns from the test (or SetUp) unless `have_gpu`.
#define GSTAB_SKIP_WITHOUT_GPU(have_gpu)                                      \
  if (!(have_gpu)) {                                                          \
    if (::gstab::testing::CudaRequired()) {                                   \
      FAIL() << "no CUDA device, and GSTAB_REQUIRE_CUDA=1 says there is one"; \
    }                                                                         \
    GTEST_SKIP() << "no CUDA device";                                         \
  }
