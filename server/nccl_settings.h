// The NCCL settings gstabd runs with, set in its environment before NCCL starts (by gstabd's
// main, and by the tests that drive its GPU pipelines, so that they run NCCL as gstabd does),
// and the helper that sets them (and gstabd's CUDA ones).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

namespace gstab {

// Sets environment variable `name` to `value`, saying on stderr when it overrides another value
// ("gstabd: NAME=given ignored: gstabd <why> <value>").
inline void RequireEnvironment(const char* name, const char* value, const char* why) {
  if (const char* v = std::getenv(name); v != nullptr && std::string(v) != value) {
    std::fprintf(stderr, "gstabd: %s=%s ignored: gstabd %s %s\n", name, v, why, value);
  }
  setenv(name, value, /*overwrite=*/1);
}

// Sets NCCL's variables as gstabd needs them, saying on stderr which given values it overrides.
inline void SetGstabdNcclEnvironment() {
  // NCCL connects its ranks while the communicator initialises (in the background), not at
  // the first collective: one job's local GPUs are ranks in this one process, and a lazy
  // connection would make a rank's first collective wait for another's under the job's lock.
  RequireEnvironment("NCCL_RUNTIME_CONNECT", "0", "needs");
  // And collectives launch per rank (not waiting, inside NCCL, for the process's other ranks).
  setenv("NCCL_LAUNCH_MODE", "PARALLEL", /*overwrite=*/1);
  // Nor are one job's collectives ordered behind another's on the same GPU (NCCL 2.26 and newer
  // would, set to 1): a job's step can be held at its worker's ready word for a backward pass.
  RequireEnvironment("NCCL_LAUNCH_ORDER_IMPLICIT", "0", "needs");
}

}  // namespace gstab
