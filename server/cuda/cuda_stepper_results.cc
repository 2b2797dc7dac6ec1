// CudaStepper: what the host reads back (Poll, Snapshot, Statistics and SetStatistics), how a
// pipeline winds down (Idle, Release, TakeResults), and the watchdog that times each step.
#include <algorithm>
#include <atomic>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "glog/logging.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/driver_api.h"
#include "server/cuda/cuda_stepper.h"  // the class whose members these are
#include "server/cuda/device_reaper.h"

namespace gstab {

bool CudaStepper::Idle() {
  cudaSetDevice(device_);
  // And no write of Release's still queued (into the results buffer, freed once idle).
  const bool idle = NoteCudaError(cudaStreamQuery(stream_)) == cudaSuccess &&
                    (release_stream_ == nullptr ||
                     NoteCudaError(cudaStreamQuery(release_stream_)) == cudaSuccess);
  ClearStaleCudaError();  // a cudaErrorNotReady must not surface in a later check
  return idle;
}

void CudaStepper::Release() {
  cudaSetDevice(device_);
  // Voided first (the sums kernel then reads nothing and flags the step kStepVoided, which the
  // rule kernel applies nothing for and the all-reduce tells the other GPUs), then the ready
  // word, on a stream of its own: the pipeline's stream is the one that waits. A step already
  // past its sums is not changed: it finishes as every other GPU's does.
  absl::Status s = StreamWriteValue(release_stream_, d_voided_, 1);
  if (s.ok()) s = StreamWriteValue(release_stream_, d_ready_, last_ready_.load());
  ClearStaleCudaError();
  if (!s.ok()) {
    LOG(ERROR) << "job '" << spec_.job
               << "': could not release its worker's unfinished steps: " << s;
  } else {
    LOG(WARNING) << "job '" << spec_.job << "': released the steps still waiting for a ready "
                 << "write (up to value " << last_ready_.load() << "); they change nothing";
  }
}

CudaStepper::ResultsRelease::~ResultsRelease() {
  if (!finished) return;  // a kernel may still write it: left allocated
  DeferDeviceRelease(device, [device = device, p = buffer] {
    cudaSetDevice(device);
    cudaFree(p);
    ClearStaleCudaError();
  });
}

std::shared_ptr<void> CudaStepper::TakeResults(absl::Duration teardown_wait) {
  teardown_wait_ = std::min(teardown_wait_, teardown_wait);
  auto release = std::make_shared<ResultsRelease>();
  release->device = device_;
  release->buffer = d_results_;
  results_release_ = release;  // finished once the destructor has drained the stream
  StepResultsHeader* results = d_results_;
  d_results_ = nullptr;
  d_outcomes_ = nullptr;
  return std::shared_ptr<void>(results, [release](void*) {});
}

void CudaStepper::Watch() {
  cudaSetDevice(device_);
  uint32_t timed = 0;  // the sequence number of the step being timed
  std::optional<absl::Time> since;
  for (;;) {
    std::string overdue;
    mu_.LockWhenWithTimeout(absl::Condition(&stop_), absl::Milliseconds(20));
    const bool stop = stop_;
    // Written by the GPU (mapped memory). Equal: between steps, or a step held at its ready
    // word, which is the worker's time, not the nodes'.
    const uint32_t started = __atomic_load_n(&h_progress_[0], __ATOMIC_ACQUIRE);
    const uint32_t finished = __atomic_load_n(&h_progress_[1], __ATOMIC_ACQUIRE);
    if (started == finished) {
      since.reset();
    } else if (!since.has_value() || started != timed) {
      timed = started;
      since = absl::Now();
    } else if (absl::Now() - *since > spec_.nccl.timeout) {
      since.reset();
      const auto& [sequence, step] = recent_[timed % std::size(recent_)];
      overdue =
          absl::StrCat(sequence == timed ? absl::StrCat("step ", step) : "a step", " of job '",
                       spec_.job, "' on rank ", spec_.nccl.node_rank, " of ", spec_.nccl.node_count,
                       " did not finish within ", absl::FormatDuration(spec_.nccl.timeout),
                       " of its worker's ready write: a GPU's worker or a node died or "
                       "stalled; the NCCL communicator was aborted");
    }
    mu_.Unlock();
    if (stop) return;
    if (!overdue.empty()) comm_->Abort(overdue);  // outside mu_: Poll and Snapshot go on
    (void)comm_->Health();                        // aborts on an asynchronous NCCL error
  }
}

GpuStepResult CudaStepper::ResultOf(const Slot& slot) const {
  GpuStepResult r;
  r.step = slot.step;
  r.outcomes.assign(slot.h_outcomes, slot.h_outcomes + table_.num_groups());
  r.stats.assign(slot.h_stats, slot.h_stats + table_.num_groups());
  return r;
}

// Poll and Snapshot run on threads that may not have used this device yet: set first, so that
// a query makes no context on another device; a cudaErrorNotReady cleared after.
std::vector<GpuStepResult> CudaStepper::Poll() {
  absl::MutexLock lock(&mu_);
  cudaSetDevice(device_);
  std::vector<GpuStepResult> done = std::move(harvested_);
  harvested_.clear();
  // The oldest slot first: the stream finishes its steps in order.
  for (uint64_t back = std::min(kResultSlots, enqueued_); back >= 1; --back) {
    Slot& slot = slots_[(enqueued_ - back) % kResultSlots];
    if (!slot.unreported || slot.rewriting) continue;
    if (NoteCudaError(cudaEventQuery(slot.finished)) != cudaSuccess) break;
    done.push_back(ResultOf(slot));
    slot.unreported = false;
  }
  ClearStaleCudaError();
  return done;
}

std::optional<GpuSnapshot> CudaStepper::Snapshot() {
  absl::MutexLock lock(&mu_);
  cudaSetDevice(device_);
  for (uint64_t back = 1; back <= kResultSlots && back <= enqueued_; ++back) {
    if (set_.has_value() && enqueued_ - back < set_at_) break;  // older than set_
    const Slot& slot = slots_[(enqueued_ - back) % kResultSlots];
    if (slot.rewriting) continue;
    const bool finished = NoteCudaError(cudaEventQuery(slot.finished)) == cudaSuccess;
    ClearStaleCudaError();
    if (!finished) continue;
    return GpuSnapshot{slot.step,
                       std::vector<GroupStats>(slot.h_stats, slot.h_stats + table_.num_groups())};
  }
  // No slot's step finished (the worker kResultSlots ahead): the newest one that did, unless
  // SetStatistics came after it.
  if (kept_step_.has_value() && (!set_.has_value() || kept_at_ >= set_at_)) {
    return GpuSnapshot{*kept_step_,
                       std::vector<GroupStats>(h_kept_stats_, h_kept_stats_ + table_.num_groups())};
  }
  return set_;
}

absl::Status CudaStepper::SetStatistics(const std::vector<GroupStats>& stats, uint64_t step) {
  if (stats.size() != table_.num_groups()) {
    return absl::InvalidArgumentError(
        absl::StrCat(stats.size(), " statistics for ", table_.num_groups(), " groups"));
  }
  RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  // Through pinned memory: a copy from pageable memory could wait for the stream unbounded.
  if (absl::Status s = WaitStream(absl::Now() + spec_.nccl.timeout, "replacing the statistics");
      !s.ok()) {
    return s;
  }
  std::copy(stats.begin(), stats.end(), h_stage_);
  if (!stats.empty()) {
    RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(d_stats_, h_stage_, stats.size() * sizeof(GroupStats),
                                         cudaMemcpyHostToDevice, stream_));
  }
  if (absl::Status s = WaitStream(absl::Now() + spec_.nccl.timeout, "replacing the statistics");
      !s.ok()) {
    return s;
  }
  absl::MutexLock lock(&mu_);
  set_ = GpuSnapshot{step, stats};
  set_at_ = enqueued_;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<GroupStats>> CudaStepper::Statistics() {
  RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  const size_t groups = table_.num_groups();
  if (groups > 0) {
    RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(h_stage_, d_stats_, groups * sizeof(GroupStats),
                                         cudaMemcpyDeviceToHost, stream_));
  }
  if (absl::Status s = WaitStream(absl::Now() + spec_.nccl.timeout, "reading the statistics");
      !s.ok()) {
    return s;
  }
  return std::vector<GroupStats>(h_stage_, h_stage_ + groups);
}

}  // namespace gstab
