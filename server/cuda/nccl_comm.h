// A nonblocking NCCL communicator that never blocks past a deadline (docs/multinode.md): created
// with `blocking = 0`, every call that answers ncclInProgress is polled through
// ncclCommGetAsyncError until it settles or the deadline passes, and Abort (ncclCommAbort)
// may come from another thread (a watchdog) to release kernels stuck waiting for a dead peer.
// After an abort or an error the communicator is broken for good: every call returns the
// reason, and the job must attach again with a new rendezvous (a new generation).
//
// Thread-safe.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace gstab {

class NcclComm {
 public:
  // A new ncclUniqueId, as bytes (CreateRendezvous's blob for CUDA jobs; world size 1 jobs).
  static absl::StatusOr<std::string> NewUniqueId();
  // Starts joining communicator `unique_id` as `rank` of `size` on the current CUDA device;
  // returns at once (Settle waits for the other ranks).
  // `context` (for example "job 'j' rank 1 of 4") ends every message; `before_abort` (may be
  // null) runs just before the communicator is aborted.
  static absl::StatusOr<std::unique_ptr<NcclComm>> Start(const std::string& unique_id, int rank,
                                                         int size, std::string context,
                                                         std::function<void()> before_abort = {});
  ~NcclComm();
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }

  // Waits until the last operation (creation included) is done being set up, or `deadline`.
  // DEADLINE_EXCEEDED (and the communicator aborted) when it passes; `what` names the
  // operation in messages.
  absl::Status Settle(absl::Time deadline, absl::string_view what);
  // Enqueues an in-place all-reduce on `stream` (see Settle for `deadline`).
  absl::Status AllReduce(void* d_values, size_t count, ncclDataType_t type, ncclRedOp_t op,
                         cudaStream_t stream, absl::Time deadline, absl::string_view what);
  // Enqueues an in-place broadcast of `bytes` bytes from rank `root` on `stream`.
  absl::Status Broadcast(void* d_bytes, size_t bytes, int root, cudaStream_t stream,
                         absl::Time deadline, absl::string_view what);
  // OK while healthy; otherwise why not. Never blocks on the network.
  absl::Status Health();
  // Aborts the communicator: kernels waiting on peers return; every later call fails with
  // UNAVAILABLE and `why`.
  void Abort(const std::string& why);

 private:
  NcclComm(ncclComm_t comm, int device, int rank, int size, std::string context,
           std::function<void()> before_abort)
      : comm_(comm),
        device_(device),
        rank_(rank),
        size_(size),
        context_(std::move(context)),
        before_abort_(std::move(before_abort)) {}
  // The status of a call that returned `r`, settling it when it is in progress.
  absl::Status Finish(ncclResult_t r, absl::Time deadline, absl::string_view what);
  absl::Status BrokenLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AbortLocked(const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  ncclComm_t comm_ ABSL_GUARDED_BY(mu_);
  const int device_;  // the CUDA device it was made on (-1: unknown), for its abort's thread
  const int rank_;
  const int size_;
  const std::string context_;
  const std::function<void()> before_abort_;
  std::string broken_ ABSL_GUARDED_BY(mu_);  // empty while healthy
};

}  // namespace gstab
