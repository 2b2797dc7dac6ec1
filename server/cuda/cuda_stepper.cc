#include "server/cuda/cuda_stepper.h"

#include <atomic>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/done_written.h"
#include "glog/logging.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/driver_api.h"
#include "server/cuda/device_reaper.h"
#include "server/cuda/stream_pool.h"

namespace gstab {
namespace {

template <typename T>
absl::Status DeviceAlloc(T** p, size_t count) {
  RETURN_IF_CUDA_ERROR(
      cudaMalloc(reinterpret_cast<void**>(p), std::max<size_t>(1, count) * sizeof(T)));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaStepper>> CudaStepper::Create(
    int device, const ChunkTable& table, const std::vector<GroupStats>& stats,
    const GpuJobSpec& spec) {
  const size_t groups = table.num_groups();
  const size_t across = spec.cross_node_groups.value_or(groups);
  if (stats.size() != groups || spec.modes.size() != groups || across > groups) {
    return absl::InvalidArgumentError(absl::StrCat(stats.size(), " statistics, ", spec.modes.size(),
                                                   " reductions and ", across,
                                                   " groups across nodes for ", groups, " groups"));
  }
  RETURN_IF_CUDA_ERROR(cudaSetDevice(device));
  // Before anything waits on a worker: a kernel loaded at its first launch, behind such a
  // wait, would hold this host thread until the worker's ready write.
  if (absl::Status s = PreloadCudaKernels(); !s.ok()) return s;
  // Two streams of gstabd's pool (server/cuda/stream_pool.h): each on a hardware queue of its
  // own while gstabd runs sixteen pipelines or fewer, so the release stream does not share the
  // queue of the stream it releases, which would hold its write back.
  absl::StatusOr<cudaStream_t> stream = AcquireStream(device);
  if (!stream.ok()) return stream.status();
  absl::StatusOr<cudaStream_t> release_stream = AcquireStream(device);
  if (!release_stream.ok()) {
    ReturnStream(device, *stream);
    return release_stream.status();
  }
  absl::StatusOr<DeviceChunkTable> dt = DeviceChunkTable::Upload(table, *stream);
  if (!dt.ok()) {
    ReturnStream(device, *stream);
    ReturnStream(device, *release_stream);
    return dt.status();
  }
  std::unique_ptr<CudaStepper> s(new CudaStepper(device, *std::move(dt), spec));
  s->stream_ = *stream;
  s->release_stream_ = *release_stream;
  {
    absl::MutexLock lock(&s->mu_);
    for (Slot& slot : s->slots_) {
      RETURN_IF_CUDA_ERROR(cudaEventCreateWithFlags(&slot.finished, cudaEventDisableTiming));
      RETURN_IF_CUDA_ERROR(cudaMallocHost(reinterpret_cast<void**>(&slot.h_outcomes),
                                          std::max<size_t>(1, groups) * sizeof(StepOutcome)));
      RETURN_IF_CUDA_ERROR(cudaMallocHost(reinterpret_cast<void**>(&slot.h_stats),
                                          std::max<size_t>(1, groups) * sizeof(GroupStats)));
    }
    RETURN_IF_CUDA_ERROR(cudaMallocHost(reinterpret_cast<void**>(&s->h_kept_stats_),
                                        std::max<size_t>(1, groups) * sizeof(GroupStats)));
  }
  for (absl::Status st :
       {DeviceAlloc(&s->d_partials_, table.tiles().size()), DeviceAlloc(&s->d_sums_, groups),
        DeviceAlloc(&s->d_flags_, groups + 1), DeviceAlloc(&s->d_modes_, groups),
        DeviceAlloc(&s->d_exchange_, kCrossNodeCheckSize + 2 * groups),
        DeviceAlloc(&s->d_stats_, groups), DeviceAlloc(&s->d_scales_, groups)}) {
    if (!st.ok()) return st;
  }
  // The results, then three words: the ready word the worker writes, the done word it waits
  // on, and the voided word.
  s->results_bytes_ = sizeof(StepResultsHeader) + groups * sizeof(StepOutcome);
  s->ready_offset_ = (s->results_bytes_ + 7) / 8 * 8;
  // Whole IPC granules: the worker maps it, and must reach no other job's buffers.
  const size_t allocated = RoundUpToIpcGranule(s->ready_offset_ + 4 * sizeof(uint32_t));
  RETURN_IF_CUDA_ERROR(cudaMalloc(reinterpret_cast<void**>(&s->d_results_), allocated));
  RETURN_IF_CUDA_ERROR(cudaMemsetAsync(s->d_results_, 0, allocated, s->stream_));
  s->d_outcomes_ = reinterpret_cast<StepOutcome*>(s->d_results_ + 1);
  s->d_ready_ =
      reinterpret_cast<uint32_t*>(reinterpret_cast<char*>(s->d_results_) + s->ready_offset_);
  s->d_done_ = s->d_ready_ + 1;
  s->d_voided_ = s->d_ready_ + 2;
  cudaIpcMemHandle_t handle;
  RETURN_IF_CUDA_ERROR(cudaIpcGetMemHandle(&handle, s->d_results_));
  s->results_handle_.assign(reinterpret_cast<const char*>(&handle), sizeof handle);
  if (groups > 0) {
    RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(s->d_stats_, stats.data(), groups * sizeof(GroupStats),
                                         cudaMemcpyHostToDevice, s->stream_));
    RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(s->d_modes_, spec.modes.data(), groups,
                                         cudaMemcpyHostToDevice, s->stream_));
  }
  RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(s->stream_));  // the host vectors may go after this

  // Set before any abort, read by the merge kernel: a step whose all-reduce an abort cut
  // short changes no gradient and no statistic.
  RETURN_IF_CUDA_ERROR(
      cudaHostAlloc(reinterpret_cast<void**>(&s->h_aborted_), sizeof(int), cudaHostAllocMapped));
  *s->h_aborted_ = 0;
  RETURN_IF_CUDA_ERROR(cudaMallocHost(reinterpret_cast<void**>(&s->h_stage_),
                                      std::max<size_t>(1, groups) * sizeof(GroupStats)));
  RETURN_IF_CUDA_ERROR(
      cudaHostGetDevicePointer(reinterpret_cast<void**>(&s->d_aborted_), s->h_aborted_, 0));
  RETURN_IF_CUDA_ERROR(cudaHostAlloc(reinterpret_cast<void**>(&s->h_progress_),
                                     2 * sizeof(uint32_t), cudaHostAllocMapped));
  s->h_progress_[0] = s->h_progress_[1] = 0;
  RETURN_IF_CUDA_ERROR(
      cudaHostGetDevicePointer(reinterpret_cast<void**>(&s->d_progress_), s->h_progress_, 0));
  if (spec.nccl.node_count == 1 && !spec.nccl_one_rank) return s;  // no cross-node stage

  std::string id = spec.nccl.unique_id;
  if (id.empty()) {
    absl::StatusOr<std::string> fresh = NcclComm::NewUniqueId();
    if (!fresh.ok()) return fresh.status();
    id = *std::move(fresh);
  }
  absl::StatusOr<std::unique_ptr<NcclComm>> comm = NcclComm::Start(
      id, static_cast<int>(spec.nccl.node_rank), static_cast<int>(spec.nccl.node_count),
      absl::StrCat("job '", spec.job, "' rank ", spec.nccl.node_rank, " of ", spec.nccl.node_count),
      [flag = s->h_aborted_] {
        *flag = 1;
        std::atomic_thread_fence(std::memory_order_seq_cst);
      });
  if (!comm.ok()) return comm.status();
  s->comm_ = *std::move(comm);
  LOG(INFO) << "job '" << spec.job << "': cross-node stage through NCCL, rank "
            << spec.nccl.node_rank << " of " << spec.nccl.node_count;
  if (spec.nccl.node_count > 1) s->watchdog_ = std::thread([p = s.get()] { p->Watch(); });
  return s;
}

CudaStepper::~CudaStepper() {
  if (watchdog_.joinable()) {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    watchdog_.join();
  }
  cudaSetDevice(device_);
  // A step stuck on a dead peer, or behind a `ready` that a killed worker never reached,
  // would never finish: give it the timeout (TakeResults may shorten it), release it and abort
  // the communicator, give it a little more; what is still stuck then is left allocated rather
  // than freed under running kernels.
  auto drained = [this](absl::Duration wait) {
    const absl::Time deadline = absl::Now() + wait;
    // Release's writes too: they land in the results buffer, freed once drained.
    const auto busy = [](cudaStream_t s) {
      return s != nullptr && cudaStreamQuery(s) == cudaErrorNotReady;
    };
    while (busy(stream_) || busy(release_stream_)) {
      if (absl::Now() >= deadline) return false;
      absl::SleepFor(absl::Milliseconds(1));
    }
    return true;
  };
  if (!drained(teardown_wait_)) {
    Release();
    if (comm_ != nullptr) comm_->Abort("the job's pipeline closed with a step still running");
    if (!drained(std::min(absl::Seconds(5), teardown_wait_))) {
      LOG(ERROR) << "job '" << spec_.job << "': a GPU step never finished; leaving its memory "
                 << "and stream allocated";
      new DeviceChunkTable(std::move(table_));  // leaked on purpose, with everything else,
      new GpuJobSpec(spec_);  // the worker's mappings included: its kernels may still run
      return;
    }
  }
  ClearStaleCudaError();
  if (results_release_ != nullptr) results_release_->finished = true;  // drained
  results_release_.reset();
  std::vector<void*> host = {h_aborted_, h_stage_, h_progress_};
  {
    absl::MutexLock lock(&mu_);
    for (Slot& slot : slots_) {
      host.push_back(slot.h_outcomes);
      host.push_back(slot.h_stats);
      if (slot.finished != nullptr) cudaEventDestroy(slot.finished);
    }
    host.push_back(h_kept_stats_);
  }
  ReturnStream(device_, stream_);  // drained: the next pipeline reuses it
  ReturnStream(device_, release_stream_);
  // Frees may wait for other jobs' work on the device: not on this (locked) path. Nor the
  // communicator's destruction, which frees NCCL's memory.
  DeferDeviceRelease(
      device_, [device = device_, comm = std::shared_ptr<NcclComm>(std::move(comm_)),
                table = std::make_shared<DeviceChunkTable>(std::move(table_)),
                memory = std::vector<void*>{d_partials_, d_sums_, d_flags_, d_modes_, d_exchange_,
                                            d_stats_, d_results_, d_scales_},
                host]() mutable {
        cudaSetDevice(device);
        comm.reset();
        table.reset();
        for (void* p : memory) cudaFree(p);
        for (void* p : host) cudaFreeHost(p);
        ClearStaleCudaError();
      });
}

absl::Status CudaStepper::WaitStream(absl::Time deadline, const std::string& what,
                                     bool abort_peers) {
  for (;;) {
    const cudaError_t e = cudaStreamQuery(stream_);
    if (e == cudaSuccess) return absl::OkStatus();
    if (e != cudaErrorNotReady) return CudaError(e, "cudaStreamQuery", __FILE__, __LINE__);
    if (absl::Now() >= deadline) {
      if (spec_.nccl.node_count == 1 || !abort_peers) {  // the GPU is busy, or not yet released
        return absl::DeadlineExceededError(
            absl::StrCat(what, " did not complete in time: the GPU is still busy"));
      }
      const std::string why =
          absl::StrCat(what, " did not complete in time: a node is missing or stalled");
      comm_->Abort(why);
      return absl::DeadlineExceededError(why);
    }
    absl::SleepFor(absl::Microseconds(200));
  }
}

absl::Status CudaStepper::Join(uint64_t step, absl::Time deadline) {
  const uint32_t groups = CrossNodeGroups();  // node 0's others stay its own
  if (comm_ == nullptr) {  // one rank: nothing to join
    joined_ = true;
    return absl::OkStatus();
  }
  if (absl::Status s = comm_->Settle(deadline, "joining the NCCL communicator"); !s.ok()) {
    return s;
  }
  // The ranks' group counts were agreed on the host before this first step (Job, with
  // GpuWorkers and the node collective): the collectives below all have one size.
  // Every rank continues from rank 0's statistics (a new generation starts from one state),
  // timed by the watchdog like a step (no worker in the way).
  if (spec_.nccl.node_count > 1 && groups > 0) {
    NextSequence(step);
    if (absl::Status s = MarkProgress(0); !s.ok()) return s;
    absl::Status s = comm_->Broadcast(d_stats_, groups * sizeof(GroupStats), 0, stream_, deadline,
                                      "the statistics broadcast");
    (void)MarkProgress(1);
    if (!s.ok()) return s;
  }
  joined_ = true;
  return absl::OkStatus();
}

void CudaStepper::NextSequence(uint64_t step) {
  ++sequence_;
  absl::MutexLock lock(&mu_);
  recent_[sequence_ % std::size(recent_)] = {sequence_, step};
}

absl::Status CudaStepper::EnqueueCrossNode(uint64_t step, absl::Time deadline) {
  if (comm_ == nullptr) return absl::OkStatus();  // one rank: its sums are the job's
  const uint32_t groups = CrossNodeGroups();
  const CrossNodeCheck check{
      static_cast<double>(step), static_cast<double>(spec_.layout_hash >> 32),
      static_cast<double>(spec_.layout_hash & 0xffffffffu), static_cast<double>(groups)};
  // Messages are composed only on failure: this runs every step.
  auto at_step = [step](const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat("step ", step, ": ", s.message()));
  };
  if (absl::Status s =
          LaunchCrossNodePrepare(check, d_sums_, d_flags_, d_modes_, groups, d_exchange_, stream_);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = comm_->AllReduce(d_exchange_, kCrossNodeCheckSize, ncclDouble, ncclMax,
                                        stream_, deadline, "the check all-reduce");
      !s.ok()) {
    return at_step(s);
  }
  if (absl::Status s =
          comm_->AllReduce(d_exchange_ + kCrossNodeCheckSize, 2 * size_t{groups}, ncclDouble,
                           ncclSum, stream_, deadline, "the sums all-reduce");
      !s.ok()) {
    return at_step(s);
  }
  return LaunchCrossNodeMerge(d_exchange_, d_modes_, d_aborted_, groups, d_sums_, d_flags_,
                              stream_);
}

absl::Status CudaStepper::Enqueue(uint64_t step, const RuleParams& params, uint32_t ready_value,
                                  absl::Time call_deadline) {
  const absl::Time deadline = absl::Now() + spec_.nccl.timeout;
  RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  if (!joined_) {  // before waiting on `ready`: the worker's backward pass is not in the way
    if (absl::Status s = Join(step, deadline); !s.ok()) return s;
    // Joining waits for every rank (up to the NCCL timeout): the worker's call may have given up
    // meanwhile, and its stream then goes on without waiting for the done word.
    if (absl::Now() >= call_deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("step ", step,
                       ": its worker's call gave up while gstabd joined the GPU communicator; "
                       "nothing of it was enqueued"));
    }
  }
  // The worker's stream writes ready_value after its backward pass; nothing here reads its
  // gradients before that.
  if (absl::Status s = StreamWaitValue(stream_, d_ready_, ready_value); !s.ok()) return s;
  last_ready_.store(ready_value);
  absl::Status s;
  if (spec_.nccl.node_count > 1) {
    NextSequence(step);
    s = MarkProgress(0);  // the watchdog times from here
  }
  if (s.ok()) s = EnqueueAfterReady(step, params, ready_value, deadline);
  if (!s.ok() && StreamWriteValue(stream_, d_done_, ready_value).ok()) {
    // Whatever part was enqueued, the worker's stream goes on: `done` behind it (which an
    // aborted communicator no longer holds up). The error says so, and the worker's stream
    // waits for it before its gradients are touched again (the kernels queued may still run).
    MarkDoneWritten(&s);
  }
  (void)MarkProgress(1);  // and the watchdog stops timing the step there
  return s;
}

absl::Status CudaStepper::EnqueueAfterReady(uint64_t step, const RuleParams& params,
                                            uint32_t ready_value, absl::Time deadline) {
  const uint32_t groups = table_.num_groups();
  if (absl::Status s =
          LaunchGroupSumSquares(table_, d_partials_, d_sums_, d_flags_, stream_, d_voided_);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = EnqueueCrossNode(step, deadline); !s.ok()) return s;
  if (absl::Status s = LaunchApplyRule(params, d_stats_, d_sums_, d_flags_, d_modes_, groups,
                                       d_outcomes_, d_scales_, stream_);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = LaunchScaleGroups(table_, d_scales_, stream_); !s.ok()) return s;
  if (absl::Status s = LaunchSummarizeResults(step, d_outcomes_, groups, d_results_, stream_);
      !s.ok()) {
    return s;
  }
  absl::MutexLock lock(&mu_);
  Slot& slot = slots_[enqueued_ % kResultSlots];
  const bool held = enqueued_ >= kResultSlots && !slot.rewriting;  // a step's copies, queued
  const cudaError_t finished =
      held ? NoteCudaError(cudaEventQuery(slot.finished)) : cudaErrorNotReady;
  ClearStaleCudaError();  // cudaErrorNotReady
  // Its step, if finished and not yet reported, is kept for Poll before the slot is reused.
  if (slot.unreported) {
    if (finished == cudaSuccess) {
      harvested_.push_back(ResultOf(slot));
    } else if (finished == cudaErrorNotReady &&
               (++lost_results_ == 1 || lost_results_ % 1000 == 0)) {
      LOG(WARNING) << "job '" << spec_.job << "' GPU " << device_ << ": step " << slot.step
                   << "'s results are not reported (its metrics and events), as the worker "
                   << "queued " << kResultSlots << " steps after it before it finished ("
                   << lost_results_ << " such steps so far); its gradients and statistics are "
                   << "not affected";
    }
    slot.unreported = false;
  }
  // Its statistics, once finished (and taken for Poll above), stay the snapshot while the
  // slots hold newer steps not finished yet; its copies are done: the buffers trade places.
  if (held && finished == cudaSuccess) {
    std::swap(slot.h_stats, h_kept_stats_);
    kept_step_ = slot.step;
    kept_at_ = slot.index;
  }
  // Copies and the event go in together under mu_; should queuing them fail part way, the
  // readers below skip the slot (rewriting) rather than take copies under way.
  slot.rewriting = true;
  slot.step = step;  // the copies' step, even should `done` below fail to queue
  slot.index = enqueued_;
  RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(slot.h_outcomes, d_outcomes_, groups * sizeof(StepOutcome),
                                       cudaMemcpyDeviceToHost, stream_));
  RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(slot.h_stats, d_stats_, groups * sizeof(GroupStats),
                                       cudaMemcpyDeviceToHost, stream_));
  RETURN_IF_CUDA_ERROR(cudaEventRecord(slot.finished, stream_));
  slot.rewriting = false;
  // `done` last: a worker that waits for it sees this step in Step, GetStats and metrics.
  if (absl::Status s = StreamWriteValue(stream_, d_done_, ready_value); !s.ok()) return s;
  slot.unreported = true;
  ++enqueued_;
  return absl::OkStatus();
}

absl::Status CudaStepper::MarkProgress(int which) {
  if (spec_.nccl.node_count == 1) return absl::OkStatus();
  return StreamWriteValue(stream_, d_progress_ + which, sequence_);
}

}  // namespace gstab
