#include "server/cuda/nccl_comm.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/cuda/device_reaper.h"
#include "server/gpu_pipeline.h"

namespace gstab {
static_assert(sizeof(ncclUniqueId) == kNcclUniqueIdBytes);
namespace {

absl::Status NcclError(absl::string_view what, absl::string_view context, ncclResult_t r) {
  return absl::InternalError(absl::StrCat(what, " of ", context, ": ", ncclGetErrorString(r)));
}

// ncclCommAbort lets go of kernels waiting for peers at once, then frees the communicator's
// resources on the calling thread, which can wait for work anywhere on the device (another
// job's stream held at its worker's ready word, for as long as that worker's backward pass, or
// until a release that needs a lock the caller holds). So it runs in the background.
// `device`: the communicator's (-1: leave the thread's as it is).
void AbortInBackground(ncclComm_t comm, int device) {
  if (comm == nullptr) return;
  DeferCommunicatorAbort([comm, device] {
    if (device >= 0) cudaSetDevice(device);
    ncclCommAbort(comm);
    (void)cudaGetLastError();
  });
}

}  // namespace

absl::StatusOr<std::string> NcclComm::NewUniqueId() {
  ncclUniqueId id;
  if (ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess) {
    return NcclError("ncclGetUniqueId", "this gstabd", r);
  }
  return std::string(reinterpret_cast<const char*>(&id), sizeof id);
}

absl::StatusOr<std::unique_ptr<NcclComm>> NcclComm::Start(const std::string& unique_id, int rank,
                                                          int size, std::string context,
                                                          std::function<void()> before_abort) {
  if (unique_id.size() != sizeof(ncclUniqueId)) {
    return absl::InvalidArgumentError(absl::StrCat("an NCCL unique id has ", sizeof(ncclUniqueId),
                                                   " bytes, not ", unique_id.size()));
  }
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " of ", size));
  }
  ncclUniqueId id;
  std::memcpy(&id, unique_id.data(), sizeof id);
  int device = -1;  // the communicator's, the caller's current one
  if (cudaGetDevice(&device) != cudaSuccess) device = -1;
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  const ncclResult_t r = ncclCommInitRankConfig(&comm, size, id, rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    AbortInBackground(comm, device);
    return NcclError("ncclCommInitRankConfig", context, r);
  }
  return std::unique_ptr<NcclComm>(
      new NcclComm(comm, device, rank, size, std::move(context), std::move(before_abort)));
}

NcclComm::~NcclComm() {
  absl::MutexLock lock(&mu_);
  if (comm_ == nullptr) return;
  // A healthy communicator is finalized (which for a nonblocking one completes in the
  // background) and destroyed; one that does not finalize within a second is aborted.
  ncclResult_t r = ncclCommFinalize(comm_);
  const absl::Time deadline = absl::Now() + absl::Seconds(1);
  while (r == ncclInProgress && absl::Now() < deadline) {
    absl::SleepFor(absl::Microseconds(100));
    if (ncclCommGetAsyncError(comm_, &r) != ncclSuccess) break;
  }
  if (r == ncclSuccess) {
    ncclCommDestroy(comm_);
  } else {
    AbortInBackground(comm_, device_);
  }
  comm_ = nullptr;
}

absl::Status NcclComm::BrokenLocked() const {
  if (broken_.empty()) return absl::OkStatus();
  return absl::UnavailableError(broken_);
}

void NcclComm::AbortLocked(const std::string& why) {
  if (!broken_.empty()) return;
  broken_ = why;
  if (before_abort_) before_abort_();
  AbortInBackground(comm_, device_);
  comm_ = nullptr;
}

void NcclComm::Abort(const std::string& why) {
  absl::MutexLock lock(&mu_);
  AbortLocked(why);
}

absl::Status NcclComm::Health() {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = BrokenLocked(); !s.ok()) return s;
  ncclResult_t state = ncclSuccess;
  if (ncclResult_t r = ncclCommGetAsyncError(comm_, &state); r != ncclSuccess) state = r;
  if (state == ncclSuccess || state == ncclInProgress) return absl::OkStatus();
  AbortLocked(absl::StrCat("the NCCL communicator failed: ", ncclGetErrorString(state), " (",
                           ncclGetLastError(comm_), ")"));
  return BrokenLocked();
}

absl::Status NcclComm::Settle(absl::Time deadline, absl::string_view what) {
  for (absl::Duration pause = absl::Microseconds(20);;
       pause = std::min(2 * pause, absl::Milliseconds(5))) {
    {
      absl::MutexLock lock(&mu_);
      if (absl::Status s = BrokenLocked(); !s.ok()) return s;
      ncclResult_t state = ncclSuccess;
      if (ncclResult_t r = ncclCommGetAsyncError(comm_, &state); r != ncclSuccess) state = r;
      if (state == ncclSuccess) return absl::OkStatus();
      if (state != ncclInProgress) {
        AbortLocked(absl::StrCat(what, " of ", context_, " failed: ", ncclGetErrorString(state)));
        return BrokenLocked();
      }
      if (absl::Now() >= deadline) {
        AbortLocked(absl::StrCat(what, " of ", context_,
                                 " did not complete in time: a node is missing or stalled"));
        return absl::DeadlineExceededError(broken_);
      }
    }
    absl::SleepFor(pause);
  }
}

absl::Status NcclComm::Broadcast(void* d_bytes, size_t bytes, int root, cudaStream_t stream,
                                 absl::Time deadline, absl::string_view what) {
  ncclResult_t r;
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = BrokenLocked(); !s.ok()) return s;
    r = ncclBroadcast(d_bytes, d_bytes, bytes, ncclUint8, root, comm_, stream);
  }
  return Finish(r, deadline, what);
}

absl::Status NcclComm::Finish(ncclResult_t r, absl::Time deadline, absl::string_view what) {
  if (r == ncclSuccess) return absl::OkStatus();
  if (r == ncclInProgress) return Settle(deadline, what);
  // UNAVAILABLE, as a failure found later is: the generation ends, and its workers attach again.
  Abort(absl::StrCat(what, " of ", context_, " failed: ", ncclGetErrorString(r)));
  absl::MutexLock lock(&mu_);
  return BrokenLocked();
}

absl::Status NcclComm::AllReduce(void* d_values, size_t count, ncclDataType_t type, ncclRedOp_t op,
                                 cudaStream_t stream, absl::Time deadline, absl::string_view what) {
  ncclResult_t r;
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = BrokenLocked(); !s.ok()) return s;
    r = ncclAllReduce(d_values, d_values, count, type, op, comm_, stream);
  }
  return Finish(r, deadline, what);
}

}  // namespace gstab
