// The stream-ordered CUDA pipeline of one job on one device (docs/daemon.md, docs/multinode.md):
//   wait for the ready word (the worker's stream writes it) -> partial sums per group -> cross-node
//   stage (two NCCL all-reduces of one fixed-size vector: the step/layout check and the sums and
//   non-finite flags; skipped by a job of one rank unless GpuJobSpec::nccl_one_rank) -> rule
//   kernel (statistics stay on the GPU) -> scale in place -> results header (the buffer the
//   worker maps) -> the done word -> asynchronous copy of the outcomes to pinned host memory.
// Enqueue never waits for the GPU; Poll reports the newest finished step without blocking.
// For a multi-node job a watchdog thread aborts the communicator when a step has not finished
// within the spec's timeout (a node died or stalled) or NCCL reports an error, so neither the
// GPU nor any host waits forever.
//
// Enqueue, Poll, Statistics and SetStatistics are called one at a time (by the job).
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/rule_types.h"
#include "kernels/chunk_table.h"
#include "kernels/cuda/device_table.h"
#include "server/cuda/nccl_comm.h"
#include "server/gpu_pipeline.h"

namespace gstab {

class CudaStepper final : public GpuPipeline {
 public:
  // `table` holds device pointers on `device`; `stats` are the groups' starting statistics.
  static absl::StatusOr<std::unique_ptr<CudaStepper>> Create(int device, const ChunkTable& table,
                                                             const std::vector<GroupStats>& stats,
                                                             const GpuJobSpec& spec);
  ~CudaStepper() override;
  CudaStepper(const CudaStepper&) = delete;
  CudaStepper& operator=(const CudaStepper&) = delete;

  // How many unfinished steps Poll can report: a worker whose host runs ahead of its GPU
  // (nothing in its loop waits for the GPU) has several queued at once. Past this the oldest
  // unfinished one's results are not reported (its metrics and events; its scaling and
  // statistics are unaffected), and gstabd logs it.
  static constexpr uint64_t kResultSlots = 4;

  // Enqueues one step behind the worker's ready write of `ready_value` (0 while the ready word
  // is still 0: at once), ending with the same value written to the done word.
  absl::Status Enqueue(uint64_t step, const RuleParams& params, uint32_t ready_value,
                       absl::Time call_deadline) override;
  // The newest enqueued step, once its GPU work has finished (reported once).
  std::vector<GpuStepResult> Poll() override;
  std::optional<GpuSnapshot> Snapshot() override;
  // Waits for the stream and copies the statistics back (checkpoints, export) or replaces them.
  absl::StatusOr<std::vector<GroupStats>> Statistics() override;
  absl::Status SetStatistics(const std::vector<GroupStats>& stats, uint64_t step) override;
  std::string ResultsHandle() const override { return results_handle_; }
  uint64_t ResultsBytes() const override { return results_bytes_; }
  uint64_t ReadyOffset() const override { return ready_offset_; }
  std::shared_ptr<void> TakeResults(absl::Duration teardown_wait) override;
  bool Idle() override;
  void Abort(const std::string& why) override {
    if (comm_ != nullptr) comm_->Abort(why);
  }
  // Sets the voided word (read by the sums kernel of every step not yet past it, whose flags the
  // all-reduce carries to the other GPUs), then writes the ready word on a stream of its own.
  void Release() override;

 private:
  CudaStepper(int device, DeviceChunkTable table, GpuJobSpec spec)
      : device_(device), table_(std::move(table)), spec_(std::move(spec)) {}
  // The groups the cross-node stage carries (GpuJobSpec::cross_node_groups).
  uint32_t CrossNodeGroups() const { return spec_.cross_node_groups.value_or(table_.num_groups()); }
  // The first step of a communicator: wait for every rank to join (the host waits here, once
  // per generation) and adopt rank 0's statistics.
  absl::Status Join(uint64_t step, absl::Time deadline);
  // Enqueue's part behind the ready word: sums, cross-node stage, rule, scale, results, done.
  absl::Status EnqueueAfterReady(uint64_t step, const RuleParams& params, uint32_t ready_value,
                                 absl::Time deadline);
  // A new sequence number for `step`, for the watchdog (multi-rank jobs).
  void NextSequence(uint64_t step);
  // Polls the stream until it is idle or `deadline` (then, `abort_peers`, aborts a multi-rank
  // communicator: a step held by a peer that stalls).
  absl::Status WaitStream(absl::Time deadline, const std::string& what, bool abort_peers = true);
  // The cross-node stage, between the partial sums and the rule kernel.
  absl::Status EnqueueCrossNode(uint64_t step, absl::Time deadline);
  // Runs until stop_: aborts the communicator when a step overstays the timeout, counted from
  // when the GPU passed its ready word (before that the worker's backward pass holds it, for
  // as long as that takes).
  void Watch();
  // Writes this step's sequence number to h_progress_[which] on the stream (multi-rank jobs).
  absl::Status MarkProgress(int which);

  const int device_;
  DeviceChunkTable table_;
  const GpuJobSpec spec_;
  absl::Duration teardown_wait_ = spec_.nccl.timeout;  // shortened by TakeResults
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<NcclComm> comm_;  // null for a job of one rank (see GpuJobSpec)
  bool joined_ = false;             // the communicator is up and node 0's statistics adopted

  // Result slots, used by steps in turn (see kResultSlots), so that while the newest step runs
  // the ones before it can still be reported: its outcomes copied to pinned memory, then its
  // event.
  struct Slot {
    cudaEvent_t finished = nullptr;
    StepOutcome* h_outcomes = nullptr;  // pinned
    GroupStats* h_stats = nullptr;      // pinned: the statistics after this slot's step
    uint64_t step = 0;
    uint64_t index = 0;  // enqueued_ when its copies were queued
    bool unreported = false;
    // Its copies are being queued anew: until its event is recorded with them, the event may
    // still mark the slot's previous step finished while the copies overwrite its memory, so
    // the readers skip it (for good, when queuing failed).
    bool rewriting = false;
  };
  absl::Mutex mu_;  // the slots, between the job's thread and the watchdog
  Slot slots_[kResultSlots] ABSL_GUARDED_BY(mu_);
  uint64_t lost_results_ ABSL_GUARDED_BY(mu_) = 0;  // steps whose slot was reused unfinished
  // Finished steps taken from a slot as Enqueue reused it, for the next Poll.
  std::vector<GpuStepResult> harvested_ ABSL_GUARDED_BY(mu_);
  GpuStepResult ResultOf(const Slot& slot) const;
  // Multi-rank jobs: each step gets a sequence number, which the stream writes to
  // h_progress_[0] once past the ready word and to h_progress_[1] when the step is done; the
  // watchdog times the GPU while they differ. The newest steps' numbers, for its messages.
  uint32_t sequence_ = 0;
  std::pair<uint32_t, uint64_t> recent_[16] ABSL_GUARDED_BY(mu_) = {};
  // The newest step is in slots_[(enqueued_ - 1) % kResultSlots].
  uint64_t enqueued_ ABSL_GUARDED_BY(mu_) = 0;
  // Statistics SetStatistics wrote when enqueued_ was set_at_: the snapshot until a step
  // enqueued since finishes.
  std::optional<GpuSnapshot> set_ ABSL_GUARDED_BY(mu_);
  uint64_t set_at_ ABSL_GUARDED_BY(mu_) = 0;
  // The statistics after the newest finished step Enqueue found in a slot it reused (pinned;
  // swapped with the slot's buffer, not copied), that step, and its slot's enqueue index: the
  // snapshot while every slot holds a step not finished yet (the worker kResultSlots ahead).
  GroupStats* h_kept_stats_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::optional<uint64_t> kept_step_ ABSL_GUARDED_BY(mu_);
  uint64_t kept_at_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread watchdog_;

  TilePartial* d_partials_ = nullptr;
  double* d_sums_ = nullptr;
  uint32_t* d_flags_ = nullptr;  // one more than the groups: LaunchApplyRule's
  uint8_t* d_modes_ = nullptr;
  double* d_exchange_ = nullptr;    // the cross-node vector (see cuda_kernels.h)
  int* h_aborted_ = nullptr;        // mapped pinned memory: 1 once the communicator is aborted
  int* d_aborted_ = nullptr;        // its device address
  uint32_t* h_progress_ = nullptr;  // mapped pinned memory: [started, finished] (see above)
  uint32_t* d_progress_ = nullptr;
  GroupStats* h_stage_ = nullptr;  // pinned: statistics read or replaced by the host
  GroupStats* d_stats_ = nullptr;
  // The results the worker maps: a header, then the outcomes (d_outcomes_ points inside), then
  // at ready_offset_ the ready word, the done word and the voided word (nonzero: queued steps
  // read nothing).
  StepResultsHeader* d_results_ = nullptr;
  StepOutcome* d_outcomes_ = nullptr;
  std::string results_handle_;
  // The results buffer once TakeResults has handed it over: freed when the last of its holders
  // (the caller's copies, this pipeline) lets go, if the destructor drained the stream.
  struct ResultsRelease {
    ~ResultsRelease();
    int device = 0;
    void* buffer = nullptr;
    bool finished = false;
  };
  std::shared_ptr<ResultsRelease> results_release_;
  uint64_t results_bytes_ = 0;
  uint64_t ready_offset_ = 0;
  uint32_t* d_ready_ = nullptr;
  uint32_t* d_done_ = nullptr;
  uint32_t* d_voided_ = nullptr;
  std::atomic<uint32_t> last_ready_{0};  // the newest value a step waits for
  cudaStream_t release_stream_ = nullptr;
  float* d_scales_ = nullptr;
};

}  // namespace gstab
