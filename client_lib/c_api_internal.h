// Shared by the C ABI's translation units (c_api.cc and the CUDA part): the handle types and
// how a status becomes a gstab_status and the thread's last error.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <memory>
#include <new>
#include <string>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client_lib/client.h"
#include "client_lib/gstab.h"

struct gstab_client {
  std::unique_ptr<gstab::Client> client;
  gstab::v1::StepResponse last_step;
  pid_t owner = getpid();  // a forked child neither uses nor frees its parent's client
};

namespace gstab::capi {

// Records a failed `status`'s message as the thread's last error and returns its code (a
// success leaves the last error as it is). Never throws: without memory for the message, the
// last error says so instead.
gstab_status Report(const absl::Status& status) noexcept;
// RESOURCE_EXHAUSTED, its last error a fixed text: for when there is no memory for a status.
gstab_status ReportOutOfMemory() noexcept;

// FAILED_PRECONDITION when `owner` (the process that made a handle) is not this process: a
// forked child inherits its parent's handles, whose threads, connection and shared memory are
// the parent's.
absl::Status CheckOwner(pid_t owner, const char* what);

// Runs a C ABI function's body: an exception (out of memory, no thread to be had) is reported as
// a status rather than crossing the C boundary.
template <typename Body>
gstab_status Guarded(Body&& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return ReportOutOfMemory();
  } catch (const std::system_error& e) {
    const bool again = e.code() == std::errc::resource_unavailable_try_again;
    try {
      return Report(
          absl::Status(again ? absl::StatusCode::kResourceExhausted : absl::StatusCode::kInternal,
                       absl::StrCat("the system refused: ", e.what())));
    } catch (...) {
      return ReportOutOfMemory();
    }
  } catch (const std::exception& e) {
    try {
      return Report(absl::InternalError(absl::StrCat("unexpected failure: ", e.what())));
    } catch (...) {
      return ReportOutOfMemory();
    }
  } catch (...) {
    try {
      return Report(absl::InternalError("unexpected failure"));
    } catch (...) {
      return ReportOutOfMemory();
    }
  }
}
// What gstab_last_step_unanswered says: set by gstab_step and gstab_cuda_step from their
// outcome, on the calling thread.
void NoteStepOutcome(const absl::Status& status);
// Keeps `response` as the client's last step (for gstab_step_group) and summarises it.
void SetLastStep(gstab_client* client, v1::StepResponse response, gstab_step_result* result);
// INVALID_ARGUMENT naming what is wrong when tensor `name` or `group` (may be NULL or empty) is
// not a name gstabd takes, the tensor has no elements or implausibly many, or `dtype` or
// `flags` (GSTAB_TENSOR_*) is unknown.
absl::Status CheckTensor(const char* name, const char* group, uint64_t numel, gstab_dtype dtype,
                         uint32_t flags);
// The reduction GSTAB_TENSOR_* `flags` (checked by CheckTensor) ask for.
v1::Reduction ReductionOf(uint32_t flags);

}  // namespace gstab::capi
