// A worker's gradients in real shared memory, registered with a Job directly (no gstabd): for
// tests that drive a CPU job's rounds where no RPC would delay or order the calls.
#pragma once

#include <unistd.h>

#include <cstdint>

#include "client_lib/arena.h"
#include "server/job.h"
#include "server/registration.h"

namespace gstab {

struct CpuWorker {
  // 1024 floats (once per CpuWorker), registered as local rank `rank` of `job` by session `session`
  // (0: none).
  absl::Status Register(Job* job, uint32_t rank, uint64_t session = 0) {
    arena.AddTensor("w", 1024, DType::kFloat32);
    if (absl::Status s = arena.Allocate(); !s.ok()) return s;
    for (int i = 0; i < 1024; ++i)
      static_cast<float*>(arena.data(0))[i] = 0.01f * static_cast<float>(i % 7);
    absl::StatusOr<RegistrationPlan> plan =
        ValidateRegistration(arena.RegistrationRequest(), RegistrationCaps{});
    if (!plan.ok()) return plan.status();
    absl::StatusOr<MappedRegistration> mapped =
        MapRegistration(*plan, &registry, nullptr, getuid());
    if (!mapped.ok()) return mapped.status();
    v1::RegisterBuffersResponse response;
    return job->Register(rank, *std::move(mapped), &response, session);
  }
  GradientArena arena;
  MappingRegistry registry;
};

}  // namespace gstab
