// The CUDA side of one job on this node (docs/daemon.md, docs/multinode.md): one stream-ordered
// pipeline per local worker, each on its own GPU, and all of them ranks of one NCCL communicator
// with the job's GPUs on every node (rank node_rank * local_world_size + local_rank of node_count *
// local_world_size). NCCL combines a node's GPUs and the nodes in one all-reduce.
//
// A generation of pipelines lasts until a local worker registers again or leaves, or the job
// gets a new rendezvous: then the communicator cannot go on, every pipeline is closed (the
// statistics are kept) and every local worker registers again.
//
// Not thread-safe: the Job calls it under its lock.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/rule_types.h"
#include "kernels/chunk_table.h"
#include "server/gpu_pipeline.h"

namespace gstab {

class GpuWorkers {
 public:
  GpuWorkers(std::string job, uint32_t local_world_size, GpuBackend backend)
      : job_(std::move(job)), local_world_size_(local_world_size), backend_(std::move(backend)) {}

  bool available() const { return backend_.make_pipeline != nullptr; }
  bool empty() const { return slots_.empty(); }
  bool Has(uint32_t local_rank) const { return slots_.count(local_rank) == 1; }
  // Whether local_rank's pipeline is the only one.
  bool HasOnly(uint32_t local_rank) const { return slots_.size() == 1 && Has(local_rank); }
  // The local rank whose results speak for the job (metrics, statistics): the lowest.
  uint32_t primary() const { return slots_.begin()->first; }

  // Builds local_rank's pipeline over `table` (device pointers on `device`), starting from
  // `stats`. `layout` carries the job, the groups' reductions and layout hash; `nccl` the
  // job's rendezvous (empty id: one node). FAILED_PRECONDITION when another local worker uses
  // the same GPU (NCCL allows one rank per GPU) or local_rank already has a pipeline.
  absl::Status Add(uint32_t local_rank, int device, const ChunkTable& table, GpuJobSpec layout,
                   const NcclRendezvous& nccl, const std::vector<GroupStats>& stats);
  // Ends the generation: closes every pipeline (waiting for the GPU at most a few seconds in
  // all, however many local ranks; local ranks stopped at different steps are aborted first, as
  // their collectives cannot meet; steps still held at a live worker's ready word are released,
  // then a communicator still stuck is aborted); returns
  // the primary's statistics, if there was one. Each worker's results buffer stays allocated until
  // that local rank registers again (the client closes its mapping first) or the job goes: CUDA
  // leaves freeing memory that another process still has mapped undefined, and a worker keeps
  // it mapped after it detaches until its CudaGradients goes.
  // `gone`: a local rank whose worker is gone (its lease expired, or a new process attached in
  // its place): its queued steps are released before anything waits (GpuPipeline::Release), so
  // the other local ranks' steps, whose collectives wait for it, finish; its results buffer is
  // freed once the GPU is done with it, as a dead process maps nothing.
  // `finished` (optional): the primary's steps finished and not yet polled: those finished
  // before anything is released, and, when nothing was released or aborted, those that
  // finished while the close waited.
  std::optional<std::vector<GroupStats>> Close(std::optional<uint32_t> gone = std::nullopt,
                                               std::vector<GpuStepResult>* finished = nullptr);

  // FAILED_PRECONDITION naming the local ranks that have not registered yet (the
  // communicator needs them all).
  absl::Status AllRegistered() const;
  // Whether Enqueue would take local_rank's step (AllRegistered first): INVALID_ARGUMENT for a
  // step not after the rank's last, or a ready_value not after the last (cyclically), since
  // the rank registered.
  absl::Status CheckEnqueue(uint32_t local_rank, uint64_t step, uint32_t ready_value) const;
  // Enqueues local_rank's step behind its worker's ready write of `ready_value`, CheckEnqueue's
  // checks first (GpuPipeline::Enqueue).
  absl::Status Enqueue(uint32_t local_rank, uint64_t step, const RuleParams& params,
                       uint32_t ready_value, absl::Time call_deadline);
  std::vector<GpuStepResult> Poll(uint32_t local_rank) { return Slot(local_rank).Poll(); }
  GpuPipeline& Slot(uint32_t local_rank) { return *slots_.at(local_rank).pipeline; }
  GpuPipeline& Primary() { return *slots_.begin()->second.pipeline; }
  // Whether the pipelines are ranks of a communicator with other GPUs (local or remote): then
  // a wait on one rank's stream may depend on another rank's next step.
  bool multi_rank() const { return multi_rank_; }
  // Whether every local rank has enqueued the same steps.
  bool InLockstep() const;
  // Whether this generation's group counts have been agreed (see Job::StepGpu), and the count
  // every local pipeline carries across nodes (GpuJobSpec::cross_node_groups; INVALID_ARGUMENT
  // when the local workers' pipelines differ in their groups).
  bool layout_agreed() const { return layout_agreed_; }
  void set_layout_agreed() { layout_agreed_ = true; }
  // Counts the generations Close has ended (a wait without the job's lock tells by it whether
  // its generation is still the current one).
  uint64_t generations_ended() const { return generations_ended_; }
  absl::StatusOr<uint32_t> LocalGroupCount() const;
  // The newest step local_rank enqueued, if any.
  std::optional<uint64_t> LastStep(uint32_t local_rank) const;
  absl::Status SetStatistics(const std::vector<GroupStats>& stats, uint64_t step);

 private:
  // Whether every pipeline got idle within `wait`.
  bool AwaitIdle(absl::Duration wait);

  struct Worker {
    std::unique_ptr<GpuPipeline> pipeline;
    int device = 0;
    std::optional<uint64_t> last_step;
    std::optional<uint32_t> last_ready;  // the ready_value of its last step enqueued
    uint32_t groups = 0;
    uint32_t cross_node_groups = 0;
  };

  const std::string job_;
  const uint32_t local_world_size_;
  const GpuBackend backend_;
  std::map<uint32_t, Worker> slots_;
  std::map<uint32_t, std::shared_ptr<void>> retired_results_;  // of closed pipelines
  std::string generation_id_;  // a single-node multi-GPU job's NCCL id for this generation
  bool layout_agreed_ = false;
  bool multi_rank_ = false;
  uint64_t generations_ended_ = 0;
};

}  // namespace gstab
