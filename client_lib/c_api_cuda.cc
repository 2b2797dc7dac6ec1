// The CUDA part of the C ABI (gstab.h) over gstab::CudaGradients.
#include <memory>

#include "client_lib/c_api_internal.h"
#include "client_lib/cuda_gradients.h"

struct gstab_cuda_gradients {
  std::unique_ptr<gstab::CudaGradients> gradients;
  pid_t owner = getpid();
};

using gstab::capi::CheckOwner;
using gstab::capi::Guarded;
using gstab::capi::Report;

extern "C" {

gstab_status gstab_cuda_gradients_create(int device, gstab_cuda_gradients** out) {
  if (out == nullptr) return Report(absl::InvalidArgumentError("out must not be NULL"));
  *out = nullptr;
  return Guarded([&] {
    absl::StatusOr<std::unique_ptr<gstab::CudaGradients>> g = gstab::CudaGradients::Create(device);
    if (!g.ok()) return Report(g.status());
    *out = new gstab_cuda_gradients{*std::move(g)};
    return GSTAB_OK;
  });
}

void gstab_cuda_gradients_destroy(gstab_cuda_gradients* gradients) {
  // A forked child's copy is left alone: its CUDA context is not the child's.
  if (gradients != nullptr && CheckOwner(gradients->owner, "CUDA gradients").ok()) {
    delete gradients;
  }
}

gstab_status gstab_cuda_add_tensor(gstab_cuda_gradients* gradients, const char* name,
                                   void* device_ptr, uint64_t numel, gstab_dtype dtype,
                                   const char* group) {
  return gstab_cuda_add_tensor_flags(gradients, name, device_ptr, numel, dtype, group, 0);
}

gstab_status gstab_cuda_add_tensor_flags(gstab_cuda_gradients* gradients, const char* name,
                                         void* device_ptr, uint64_t numel, gstab_dtype dtype,
                                         const char* group, uint32_t flags) {
  if (gradients == nullptr || name == nullptr || device_ptr == nullptr) {
    return Report(absl::InvalidArgumentError("gradients, name and device_ptr must not be NULL"));
  }
  if (absl::Status s = gstab::capi::CheckTensor(name, group, numel, dtype, flags); !s.ok()) {
    return Report(s);
  }
  if (absl::Status s = CheckOwner(gradients->owner, "CUDA gradients"); !s.ok()) return Report(s);
  return Guarded([&] {
    return Report(gradients->gradients->AddTensor(
        name, device_ptr, numel, static_cast<gstab::DType>(dtype), group == nullptr ? "" : group,
        gstab::capi::ReductionOf(flags)));
  });
}

gstab_status gstab_cuda_allocate_tensor(gstab_cuda_gradients* gradients, const char* name,
                                        uint64_t numel, gstab_dtype dtype, const char* group,
                                        void** device_ptr) {
  return gstab_cuda_allocate_tensor_flags(gradients, name, numel, dtype, group, 0, device_ptr);
}

gstab_status gstab_cuda_allocate_tensor_flags(gstab_cuda_gradients* gradients, const char* name,
                                              uint64_t numel, gstab_dtype dtype, const char* group,
                                              uint32_t flags, void** device_ptr) {
  if (device_ptr != nullptr) *device_ptr = nullptr;  // first: set when any check fails, too
  if (gradients == nullptr || name == nullptr || device_ptr == nullptr) {
    return Report(absl::InvalidArgumentError("gradients, name and device_ptr must not be NULL"));
  }
  if (absl::Status s = gstab::capi::CheckTensor(name, group, numel, dtype, flags); !s.ok()) {
    return Report(s);
  }
  if (absl::Status s = CheckOwner(gradients->owner, "CUDA gradients"); !s.ok()) return Report(s);
  return Guarded([&] {
    absl::StatusOr<void*> p = gradients->gradients->AllocateTensor(
        name, numel, static_cast<gstab::DType>(dtype), group == nullptr ? "" : group,
        gstab::capi::ReductionOf(flags));
    if (!p.ok()) return Report(p.status());
    *device_ptr = *p;
    return GSTAB_OK;
  });
}

gstab_status gstab_register_cuda(gstab_client* client, gstab_cuda_gradients* gradients) {
  if (client == nullptr) return Report(absl::InvalidArgumentError("client must not be NULL"));
  if (absl::Status s = CheckOwner(client->owner, "client"); !s.ok()) return Report(s);
  return Guarded([&] {
    absl::Status s = gradients == nullptr ? absl::InvalidArgumentError("gradients must not be NULL")
                                          : CheckOwner(gradients->owner, "CUDA gradients");
    if (!s.ok()) {
      client->client->RegistrationFailed(s);  // which Register does for its own failures
      return Report(s);
    }
    return Report(gradients->gradients->Register(client->client.get()));
  });
}

gstab_status gstab_cuda_step(gstab_client* client, gstab_cuda_gradients* gradients, uint64_t step,
                             void* stream, gstab_step_result* result, uint64_t* result_step) {
  gstab::capi::NoteStepOutcome(absl::OkStatus());        // first: a refused call was not unanswered
  if (result != nullptr) *result = gstab_step_result{};  // first: set when anything fails
  if (result_step != nullptr) *result_step = 0;
  if (client == nullptr) return Report(absl::InvalidArgumentError("client must not be NULL"));
  if (absl::Status s = CheckOwner(client->owner, "client"); !s.ok()) return Report(s);
  client->last_step.Clear();  // a failed step leaves no results of an earlier one
  if (gradients == nullptr) {
    return Report(absl::InvalidArgumentError("gradients must not be NULL"));
  }
  if (absl::Status s = CheckOwner(gradients->owner, "CUDA gradients"); !s.ok()) return Report(s);
  return Guarded([&] {
    absl::StatusOr<gstab::v1::StepResponse> r =
        gradients->gradients->Step(client->client.get(), step, static_cast<cudaStream_t>(stream));
    gstab::capi::NoteStepOutcome(r.status());
    if (!r.ok()) return Report(r.status());
    if (result_step != nullptr) *result_step = r->results_step();
    gstab::capi::SetLastStep(client, *std::move(r), result);
    return GSTAB_OK;
  });
}

const void* gstab_cuda_results(const gstab_cuda_gradients* gradients, size_t* bytes) {
  if (bytes != nullptr) *bytes = 0;
  if (gradients == nullptr) return nullptr;
  if (absl::Status s = CheckOwner(gradients->owner, "CUDA gradients"); !s.ok()) {
    return Report(s), nullptr;
  }
  if (bytes != nullptr) *bytes = gradients->gradients->results_bytes();
  return gradients->gradients->device_results();
}

const char* gstab_cuda_group_name(const gstab_cuda_gradients* gradients, size_t index) {
  if (gradients == nullptr) return nullptr;
  if (absl::Status s = CheckOwner(gradients->owner, "CUDA gradients"); !s.ok()) {
    return Report(s), nullptr;
  }
  if (index >= gradients->gradients->groups().size()) return nullptr;
  return gradients->gradients->groups()[index].c_str();
}

}  // extern "C"

static_assert(sizeof(gstab_results_header) == sizeof(gstab::StepResultsHeader));
static_assert(sizeof(gstab_group_outcome) == sizeof(gstab::StepOutcome));
static_assert(
    GSTAB_FLAG_ACCEPTED == gstab::kFlagAccepted && GSTAB_FLAG_SKIPPED == gstab::kFlagSkipped &&
    GSTAB_FLAG_ZERO_NORM == gstab::kFlagZeroNorm && GSTAB_FLAG_SPIKE == gstab::kFlagSpike &&
    GSTAB_FLAG_SPIKE_RATIO == gstab::kFlagSpikeRatio &&
    GSTAB_FLAG_DIVERGING == gstab::kFlagDiverging && GSTAB_FLAG_CLIPPED == gstab::kFlagClipped &&
    GSTAB_FLAG_MISMATCH == gstab::kFlagMismatch && GSTAB_FLAG_VOIDED == gstab::kFlagVoided &&
    GSTAB_FLAG_WITH_STEP == gstab::kFlagWithStep &&
    GSTAB_FLAG_UNREGISTERED == gstab::kFlagUnregistered);
