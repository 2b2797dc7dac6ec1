// Shared by the C ABI's translation units (c_api.cc and the CUDA part): the handle types and
// how a status becomes a gstab_status and the thread's last error.
#pragma once

#include <memory>

#include "absl/status/status.h"
#include "client_lib/client.h"
#include "client_lib/gstab.h"

struct gstab_client {
  std::unique_ptr<gstab::Client> client;
  gstab::v1::StepResponse last_step;
};

namespace gstab::capi {

// Records `status`'s message as the thread's last error (cleared on success) and returns its
// code.
gstab_status Report(const absl::Status& status);
// Keeps `response` as the client's last step (for gstab_step_group) and summarises it.
void SetLastStep(gstab_client* client, v1::StepResponse response, gstab_step_result* result);
// INVALID_ARGUMENT naming what is wrong when `dtype` or `flags` (GSTAB_TENSOR_*) is unknown.
absl::Status CheckTensor(gstab_dtype dtype, uint32_t flags);
// The reduction GSTAB_TENSOR_* `flags` (checked by CheckTensor) ask for.
v1::Reduction ReductionOf(uint32_t flags);

}  // namespace gstab::capi
