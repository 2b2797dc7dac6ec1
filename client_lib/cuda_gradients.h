// A worker's CUDA gradients for gstabd: tensors anywhere in device memory (the caller's own
// allocations: any framework's pointer, size and device), and the stream-ordered handshake
// through two words in gstabd's memory, `ready` and `done`.
//
//   auto grads = CudaGradients::Create(/*device=*/0);
//   (*grads)->AddTensor("fc1.weight", ptr, numel, DType::kBFloat16);
//   (*grads)->Register(client.get());
//   // every step, after backward on `stream`:
//   auto r = (*grads)->Step(client.get(), step, stream);   // stream then waits on `done`
//   // kernels on `stream` may now read (*grads)->device_results() (this step's skip decision)
//
// Neither host blocks on the GPU: Step writes the next value to the ready word on the stream
// (after the backward pass), asks gstabd to enqueue its work behind that write, and makes the
// stream wait until gstabd has written the same value to the done word. The StepResponse
// carries the newest step whose GPU work had finished when gstabd answered; this step's own
// results are in the device buffer gstabd writes before `done`. Registering again and the
// destructor wait for the last step's `done` (up to twice gstabd's step timeout, and at least
// 120 s: past that, gstabd is taken to have stopped, and the done word is written here so that
// the streams waiting for it go on), then for the device. If that write has not landed within
// 10 s (its stream shares a hardware queue with the waiting one), nothing is waited for, closed
// or freed any more: Register then fails, and the destructor leaves its memory allocated.
// A gstabd found gone before then (its process exited, or a new gstabd at the address, which
// does not know the session: Client::SetDaemonLostHandler) has the done word
// written here at once, from the client's keep-alive thread: a worker whose gstabd was killed or
// restarted mid-step then fails at its next Step rather than hang at its next wait for the
// device (that step's gradients may be partly stabilized).
// Not thread-safe (but for that release, which it orders itself).
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client_lib/client.h"
#include "core/rule_types.h"
#include "kernels/dtype.h"

namespace gstab {

class CudaGradients {
 public:
  static absl::StatusOr<std::unique_ptr<CudaGradients>> Create(int device);
  ~CudaGradients();
  CudaGradients(const CudaGradients&) = delete;
  CudaGradients& operator=(const CudaGradients&) = delete;

  // `ptr` is device memory on this object's device holding `numel` elements. INVALID_ARGUMENT
  // when it is not inside a CUDA allocation. `reduction`: how its group's norm combines the
  // ranks' gradients (REDUCTION_REPLICATED: every rank holds the whole gradient, as after DDP's
  // all-reduce, so it is not summed across ranks; see gstab/v1/stabilizer.proto).
  absl::Status AddTensor(std::string name, void* ptr, uint64_t numel, DType dtype,
                         std::string group = "", v1::Reduction reduction = v1::REDUCTION_SHARDED);
  // Allocates `numel` elements of device memory on this object's device, owned by it (freed
  // with it), and adds them as a tensor; returns the device pointer. Each allocation is a
  // multiple of 2 MiB (kIpcGranule): for many small tensors, allocate one and AddTensor its
  // slices.
  absl::StatusOr<void*> AllocateTensor(std::string name, uint64_t numel, DType dtype,
                                       std::string group = "",
                                       v1::Reduction reduction = v1::REDUCTION_SHARDED);
  v1::RegisterBuffersRequest RegistrationRequest() const { return request_; }
  // Registers the tensors with the job `client` is attached to and maps the
  // results buffer gstabd writes (replacing an earlier registration's). A CudaGradients
  // registered through the same client before is replaced: it lets go of its results buffer
  // (which gstabd frees) and its Step fails until it registers again. Failed, it leaves
  // `client` no registration (Client::RegistrationFailed).
  absl::Status Register(Client* client);
  absl::StatusOr<v1::StepResponse> Step(Client* client, uint64_t step, cudaStream_t stream);

  // After Register: device memory holding a StepResultsHeader and then one StepOutcome per
  // group, in the order of groups(). Stream-ordered: work on the Step's stream after it sees
  // that step's results; gstabd overwrites them only after the next step's `ready`.
  const StepResultsHeader* device_results() const { return results_; }
  uint64_t results_bytes() const { return results_bytes_; }
  const std::vector<std::string>& groups() const { return groups_; }

 private:
  explicit CudaGradients(int device) : device_(device) {}
  // INVALID_ARGUMENT when a tensor named `name` was added already.
  absl::Status CheckNewName(const std::string& name) const;
  // Lets go of the results buffer once nothing on this process's streams waits for or reads it
  // (unless streams_stuck_).
  void CloseResults() ABSL_LOCKS_EXCLUDED(handshake_mu_);
  // Writes the done word of the last step from a stream of its own, when a stream still waits
  // for it; false when the write did not land within kOwnWriteWait (then streams_stuck_).
  bool WriteDoneHere() ABSL_EXCLUSIVE_LOCKS_REQUIRED(handshake_mu_);
  // A new stream with the done word's write of the last step queued on it (null: none made).
  cudaStream_t QueueDoneWrite() ABSL_EXCLUSIVE_LOCKS_REQUIRED(handshake_mu_);
  // Says that a write of the done word has not landed, and sets streams_stuck_.
  void GiveUpRelease() ABSL_EXCLUSIVE_LOCKS_REQUIRED(handshake_mu_);
  // ReleaseForLostDaemon's work on this object: queues the write when a stream waits for the
  // done word, or looks at the one queued before.
  void ReleaseIfWaiting() ABSL_EXCLUSIVE_LOCKS_REQUIRED(handshake_mu_);
  // Client::SetDaemonLostHandler's: for the CudaGradients registered through the client
  // `client_id`, queues a write of the done word when a stream still waits for it, and looks
  // at that write again at the next call; nothing while it is busy (a Step or a close).
  static void ReleaseForLostDaemon(uint64_t client_id);
  // Register's work; Register marks the client's registration failed when this fails.
  absl::Status RegisterThrough(Client* client);

  const int device_;
  std::string device_uuid_;         // sent with each buffer: gstabd finds the GPU by it
  uint64_t registered_through_ = 0;  // the id of the Client that registered them (0: none)
  uint64_t registration_ = 0;        // that registration's Client::Registration()
  // Under the registry's lock: registrations of others through the same client closing this
  // one's results (RegisterThrough), which the destructor waits out.
  int pins_ = 0;
  uint32_t* ready_word_ = nullptr;   // inside results_
  // The handshake's state that the release for a lost gstabd, on a keep-alive thread, reads.
  absl::Mutex handshake_mu_;
  uint32_t* done_word_ ABSL_GUARDED_BY(handshake_mu_) = nullptr;
  uint32_t ready_value_ ABSL_GUARDED_BY(handshake_mu_) = 0;  // the last Step's ready write
  // Recorded on each Step's stream after its wait for `done`.
  cudaEvent_t done_passed_ ABSL_GUARDED_BY(handshake_mu_) = nullptr;
  absl::Duration done_wait_;  // how long CloseResults waits for it (set by Register)
  v1::RegisterBuffersRequest request_;
  // request_'s buffer of each allocation (its IPC handle) and dtype.
  std::map<std::pair<std::string, DType>, uint32_t> buffers_;
  // The tensors' names: one given twice is refused as it is added, not by gstabd at the
  // registration, after the results buffer of the one it would replace was let go.
  std::set<std::string> names_;
  StepResultsHeader* results_ = nullptr;  // opened from gstabd's IPC handle
  uint64_t results_bytes_ = 0;
  std::vector<std::string> groups_;
  std::vector<void*> owned_;  // AllocateTensor's allocations
  // Streams wait for a done word that neither gstabd nor CloseResults could write: anything
  // that waits for the device (a free, a close) would wait for good.
  bool streams_stuck_ ABSL_GUARDED_BY(handshake_mu_) = false;
  bool released_for_lost_daemon_ ABSL_GUARDED_BY(handshake_mu_) = false;  // said once
  // Set by ReleaseForLostDaemon even when it could not act (a Step or a close held
  // handshake_mu_): CloseResults then does not wait done_wait_ for a gstabd that is gone.
  std::atomic<bool> daemon_lost_{false};
  // ReleaseForLostDaemon's write of the done word, queued at release_queued_ (null: none).
  cudaStream_t release_stream_ ABSL_GUARDED_BY(handshake_mu_) = nullptr;
  absl::Time release_queued_ ABSL_GUARDED_BY(handshake_mu_);
};

}  // namespace gstab
