// The stream-ordered CUDA pipeline of one job on one device (DESIGN.md 2.3):
//   wait(ready) -> partial sums per group -> NCCL all-reduce (world size 1 here; the
//   cross-node issue widens it) -> rule kernel (statistics stay on the GPU) -> scale in place
//   -> results header (the buffer the worker maps) -> record(done) -> asynchronous copy of the
//   outcomes to pinned host memory.
// Enqueue never waits for the GPU; Completed() reports the newest finished step without
// blocking.
//
// Not thread-safe: the job calls it from one step at a time.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/rule_types.h"
#include "kernels/chunk_table.h"
#include "kernels/cuda/device_table.h"
#include "server/gpu_pipeline.h"

namespace gstab {

class CudaStepper final : public GpuPipeline {
 public:
  // `table` holds device pointers on `device`; `stats` are the groups' starting statistics.
  static absl::StatusOr<std::unique_ptr<CudaStepper>> Create(int device, const ChunkTable& table,
                                                             const std::vector<GroupStats>& stats);
  ~CudaStepper() override;
  CudaStepper(const CudaStepper&) = delete;
  CudaStepper& operator=(const CudaStepper&) = delete;

  // Enqueues one step; `ready` and `done` are the worker's cudaEvent_t (null: no wait /
  // record).
  absl::Status Enqueue(uint64_t step, const RuleParams& params, void* ready, void* done) override;
  // The newest enqueued step, once its GPU work has finished (reported once).
  std::optional<GpuStepResult> Poll() override;
  // Waits for the stream and copies the statistics back (checkpoints, export) or replaces them.
  absl::StatusOr<std::vector<GroupStats>> Statistics() override;
  absl::Status SetStatistics(const std::vector<GroupStats>& stats) override;
  std::string ResultsHandle() const override { return results_handle_; }
  uint64_t ResultsBytes() const override { return results_bytes_; }

 private:
  CudaStepper(int device, DeviceChunkTable table) : device_(device), table_(std::move(table)) {}

  const int device_;
  DeviceChunkTable table_;
  cudaStream_t stream_ = nullptr;
  // Two result slots, used by alternate steps, so that while the newest step runs the one
  // before it can still be reported: its outcomes copied to pinned memory, then its event.
  struct Slot {
    cudaEvent_t finished = nullptr;
    StepOutcome* h_outcomes = nullptr;  // pinned
    uint64_t step = 0;
    bool unreported = false;
  };
  Slot slots_[2];
  uint64_t enqueued_ = 0;  // steps enqueued so far; the newest is in slots_[(enqueued_ - 1) % 2]
  ncclComm_t comm_ = nullptr;
  TilePartial* d_partials_ = nullptr;
  double* d_sums_ = nullptr;
  uint32_t* d_flags_ = nullptr;
  GroupStats* d_stats_ = nullptr;
  // The results the worker maps: a header, then the outcomes (d_outcomes_ points inside).
  StepResultsHeader* d_results_ = nullptr;
  StepOutcome* d_outcomes_ = nullptr;
  std::string results_handle_;
  uint64_t results_bytes_ = 0;
  float* d_scales_ = nullptr;
};

}  // namespace gstab
