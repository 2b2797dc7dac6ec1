#include "server/cuda/cuda_stepper.h"

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"

#define RETURN_IF_NCCL_ERROR(expr)                                                                \
  do {                                                                                            \
    const ncclResult_t gstab_nccl_err_ = (expr);                                                  \
    if (gstab_nccl_err_ != ncclSuccess) {                                                         \
      return absl::InternalError(absl::StrCat(__FILE__, ":", __LINE__, ": ", #expr,               \
                                              " failed: ", ncclGetErrorString(gstab_nccl_err_))); \
    }                                                                                             \
  } while (0)

namespace gstab {

absl::StatusOr<std::unique_ptr<CudaStepper>> CudaStepper::Create(
    int device, const ChunkTable& table, const std::vector<GroupStats>& stats) {
  if (stats.size() != table.num_groups()) {
    return absl::InvalidArgumentError(
        absl::StrCat(stats.size(), " statistics for ", table.num_groups(), " groups"));
  }
  RETURN_IF_CUDA_ERROR(cudaSetDevice(device));
  cudaStream_t stream;
  RETURN_IF_CUDA_ERROR(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  absl::StatusOr<DeviceChunkTable> dt = DeviceChunkTable::Upload(table, stream);
  if (!dt.ok()) {
    cudaStreamDestroy(stream);
    return dt.status();
  }
  std::unique_ptr<CudaStepper> s(new CudaStepper(device, *std::move(dt)));
  s->stream_ = stream;
  const size_t groups = std::max<size_t>(1, table.num_groups());
  for (Slot& slot : s->slots_) {
    RETURN_IF_CUDA_ERROR(cudaEventCreateWithFlags(&slot.finished, cudaEventDisableTiming));
    RETURN_IF_CUDA_ERROR(
        cudaMallocHost(reinterpret_cast<void**>(&slot.h_outcomes), groups * sizeof(StepOutcome)));
  }
  RETURN_IF_CUDA_ERROR(cudaMalloc(reinterpret_cast<void**>(&s->d_partials_),
                                  std::max<size_t>(1, table.tiles().size()) * sizeof(TilePartial)));
  RETURN_IF_CUDA_ERROR(cudaMalloc(reinterpret_cast<void**>(&s->d_sums_), groups * sizeof(double)));
  RETURN_IF_CUDA_ERROR(
      cudaMalloc(reinterpret_cast<void**>(&s->d_flags_), groups * sizeof(uint32_t)));
  RETURN_IF_CUDA_ERROR(
      cudaMalloc(reinterpret_cast<void**>(&s->d_stats_), groups * sizeof(GroupStats)));
  s->results_bytes_ = sizeof(StepResultsHeader) + table.num_groups() * sizeof(StepOutcome);
  RETURN_IF_CUDA_ERROR(cudaMalloc(reinterpret_cast<void**>(&s->d_results_), s->results_bytes_));
  RETURN_IF_CUDA_ERROR(cudaMemsetAsync(s->d_results_, 0, s->results_bytes_, stream));
  s->d_outcomes_ = reinterpret_cast<StepOutcome*>(s->d_results_ + 1);
  cudaIpcMemHandle_t handle;
  RETURN_IF_CUDA_ERROR(cudaIpcGetMemHandle(&handle, s->d_results_));
  s->results_handle_.assign(reinterpret_cast<const char*>(&handle), sizeof handle);
  RETURN_IF_CUDA_ERROR(cudaMalloc(reinterpret_cast<void**>(&s->d_scales_), groups * sizeof(float)));
  if (!stats.empty()) {
    RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(s->d_stats_, stats.data(),
                                         stats.size() * sizeof(GroupStats), cudaMemcpyHostToDevice,
                                         stream));
  }
  ncclUniqueId id;
  RETURN_IF_NCCL_ERROR(ncclGetUniqueId(&id));
  RETURN_IF_NCCL_ERROR(ncclCommInitRank(&s->comm_, 1, id, 0));
  RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream));
  return s;
}

CudaStepper::~CudaStepper() {
  cudaSetDevice(device_);
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  if (comm_ != nullptr) ncclCommDestroy(comm_);
  cudaFree(d_partials_);
  cudaFree(d_sums_);
  cudaFree(d_flags_);
  cudaFree(d_stats_);
  cudaFree(d_results_);
  cudaFree(d_scales_);
  for (Slot& slot : slots_) {
    cudaFreeHost(slot.h_outcomes);
    if (slot.finished != nullptr) cudaEventDestroy(slot.finished);
  }
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::Status CudaStepper::Enqueue(uint64_t step, const RuleParams& params, void* ready_event,
                                  void* done_event) {
  auto ready = static_cast<cudaEvent_t>(ready_event);
  auto done = static_cast<cudaEvent_t>(done_event);
  RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  const uint32_t groups = table_.num_groups();
  if (ready != nullptr) RETURN_IF_CUDA_ERROR(cudaStreamWaitEvent(stream_, ready, 0));
  if (absl::Status s = LaunchGroupSumSquares(table_, d_partials_, d_sums_, d_flags_, stream_);
      !s.ok()) {
    return s;
  }
  // The collective stage: every rank's partial sums and non-finite flags, in a fixed order.
  RETURN_IF_NCCL_ERROR(
      ncclAllReduce(d_sums_, d_sums_, groups, ncclDouble, ncclSum, comm_, stream_));
  RETURN_IF_NCCL_ERROR(
      ncclAllReduce(d_flags_, d_flags_, groups, ncclUint32, ncclMax, comm_, stream_));
  if (absl::Status s = LaunchApplyRule(params, d_stats_, d_sums_, d_flags_, groups, d_outcomes_,
                                       d_scales_, stream_);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = LaunchScaleGroups(table_, d_scales_, stream_); !s.ok()) return s;
  if (absl::Status s = LaunchSummarizeResults(step, d_outcomes_, groups, d_results_, stream_);
      !s.ok()) {
    return s;
  }
  if (done != nullptr) RETURN_IF_CUDA_ERROR(cudaEventRecord(done, stream_));
  Slot& slot = slots_[enqueued_ % 2];
  RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(slot.h_outcomes, d_outcomes_, groups * sizeof(StepOutcome),
                                       cudaMemcpyDeviceToHost, stream_));
  RETURN_IF_CUDA_ERROR(cudaEventRecord(slot.finished, stream_));
  slot.step = step;
  slot.unreported = true;
  ++enqueued_;
  return absl::OkStatus();
}

std::optional<GpuStepResult> CudaStepper::Poll() {
  if (enqueued_ == 0) return std::nullopt;
  // The newest step if it has finished, else the one before it if that has.
  for (uint64_t back = 1; back <= 2 && back <= enqueued_; ++back) {
    Slot& slot = slots_[(enqueued_ - back) % 2];
    if (!slot.unreported || cudaEventQuery(slot.finished) != cudaSuccess) continue;
    GpuStepResult r;
    r.step = slot.step;
    r.outcomes.assign(slot.h_outcomes, slot.h_outcomes + table_.num_groups());
    for (Slot& s : slots_) s.unreported = false;                   // older results are superseded
    if (back == 2) slots_[(enqueued_ - 1) % 2].unreported = true;  // the newest still runs
    return r;
  }
  return std::nullopt;
}

absl::Status CudaStepper::SetStatistics(const std::vector<GroupStats>& stats) {
  if (stats.size() != table_.num_groups()) {
    return absl::InvalidArgumentError(
        absl::StrCat(stats.size(), " statistics for ", table_.num_groups(), " groups"));
  }
  RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  if (!stats.empty()) {
    RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(d_stats_, stats.data(), stats.size() * sizeof(GroupStats),
                                         cudaMemcpyHostToDevice, stream_));
  }
  RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream_));  // `stats` may die after we return
  return absl::OkStatus();
}

absl::StatusOr<std::vector<GroupStats>> CudaStepper::Statistics() {
  RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  std::vector<GroupStats> stats(table_.num_groups());
  if (!stats.empty()) {
    RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(stats.data(), d_stats_, stats.size() * sizeof(GroupStats),
                                         cudaMemcpyDeviceToHost, stream_));
  }
  RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream_));
  return stats;
}

}  // namespace gstab
