// The CUDA part of the C ABI (gstab.h) in a build without CUDA: every call says so.
#include "client_lib/c_api_internal.h"

namespace {
absl::Status NoCudaStatus() {
  return absl::UnimplementedError(
      "this libgstab was built without CUDA; rebuild it where nvcc exists (GSTAB_CUDA=AUTO or "
      "ON) to register CUDA gradients");
}
gstab_status NoCuda() { return gstab::capi::Report(NoCudaStatus()); }
}  // namespace

extern "C" {

gstab_status gstab_cuda_gradients_create(int, gstab_cuda_gradients** out) {
  if (out != nullptr) *out = nullptr;
  return NoCuda();
}
void gstab_cuda_gradients_destroy(gstab_cuda_gradients*) {}
gstab_status gstab_cuda_add_tensor(gstab_cuda_gradients*, const char*, void*, uint64_t, gstab_dtype,
                                   const char*) {
  return NoCuda();
}
gstab_status gstab_cuda_add_tensor_flags(gstab_cuda_gradients*, const char*, void*, uint64_t,
                                         gstab_dtype, const char*, uint32_t) {
  return NoCuda();
}
gstab_status gstab_cuda_allocate_tensor(gstab_cuda_gradients*, const char*, uint64_t, gstab_dtype,
                                        const char*, void** device_ptr) {
  if (device_ptr != nullptr) *device_ptr = nullptr;
  return NoCuda();
}
gstab_status gstab_cuda_allocate_tensor_flags(gstab_cuda_gradients*, const char*, uint64_t,
                                              gstab_dtype, const char*, uint32_t,
                                              void** device_ptr) {
  if (device_ptr != nullptr) *device_ptr = nullptr;
  return NoCuda();
}
gstab_status gstab_register_cuda(gstab_client* client, gstab_cuda_gradients*) {
  if (client == nullptr) return NoCuda();
  // A forked child's is refused as any call of one is (gstab.h).
  if (absl::Status s = gstab::capi::CheckOwner(client->owner, "client"); !s.ok()) {
    return gstab::capi::Report(s);
  }
  // As a failed registration: the client's earlier one goes.
  return gstab::capi::Guarded([&] {
    client->client->RegistrationFailed(NoCudaStatus());
    return NoCuda();
  });
}
gstab_status gstab_cuda_step(gstab_client* client, gstab_cuda_gradients*, uint64_t, void*,
                             gstab_step_result* result, uint64_t* result_step) {
  gstab::capi::NoteStepOutcome(absl::OkStatus());
  if (result != nullptr) *result = gstab_step_result{};
  if (result_step != nullptr) *result_step = 0;
  if (client == nullptr) return NoCuda();
  if (absl::Status s = gstab::capi::CheckOwner(client->owner, "client"); !s.ok()) {
    return gstab::capi::Report(s);  // a forked child's, its parent's results left alone
  }
  client->last_step.Clear();  // a failed step leaves no results of an earlier one
  return NoCuda();
}
const void* gstab_cuda_results(const gstab_cuda_gradients*, size_t* bytes) {
  if (bytes != nullptr) *bytes = 0;
  return nullptr;
}
const char* gstab_cuda_group_name(const gstab_cuda_gradients*, size_t) { return nullptr; }

}  // extern "C"
