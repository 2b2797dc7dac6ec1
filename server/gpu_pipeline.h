// The seams between gstabd's jobs and its CUDA backend, so the daemon's core compiles and runs
// without CUDA: device memory and events of cuda_ipc registrations, and the per-job GPU
// pipeline. The CUDA build provides implementations (server/cuda/cuda_backend.h); without
// them cuda_ipc buffers are refused.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/rule_types.h"
#include "kernels/chunk_table.h"

namespace gstab {

// Opens workers' CUDA allocations and events. Thread-safe.
class DeviceMemory {
 public:
  virtual ~DeviceMemory() = default;
  // A keep-alive of the allocation `handle` names, and the device address of byte `offset`;
  // validates [offset, offset + bytes) against the allocation.
  virtual absl::StatusOr<std::pair<std::shared_ptr<void>, char*>> Open(const std::string& handle,
                                                                       int device, uint64_t offset,
                                                                       uint64_t bytes) = 0;
  // gstabd's ordinal of the GPU whose UUID is `uuid` (16 bytes); `ordinal` itself when `uuid`
  // is empty. INVALID_ARGUMENT when no GPU gstabd sees has that UUID.
  virtual absl::StatusOr<int> ResolveDevice(const std::string& uuid, int ordinal) = 0;
  // Waits until the allocations on `device` released so far are no longer mapped here, or
  // `timeout`.
  virtual void AwaitClosedMappings(int /*device*/, absl::Duration /*timeout*/) {}
};

// The statistics after a finished step, and that step.
struct GpuSnapshot {
  uint64_t step = 0;
  std::vector<GroupStats> stats;
};

struct GpuStepResult {
  uint64_t step = 0;
  std::vector<StepOutcome> outcomes;  // per group
  std::vector<GroupStats> stats;      // per group, after the step
};

// One job's stream-ordered pipeline on one device. Not thread-safe (one step at a time).
class GpuPipeline {
 public:
  virtual ~GpuPipeline() = default;
  // Enqueues the step without waiting for the GPU: the stream waits until the ready word (see
  // ReadyOffset) reaches `ready_value`, which the worker's stream writes after its backward
  // pass, and writes `ready_value` to the done word once the gradients are stabilized. A
  // multi-node job's first step waits (up to the spec's timeout) for every node to join the
  // communicator. UNAVAILABLE or DEADLINE_EXCEEDED once the communicator has failed (a GPU's
  // worker or a node died or stalled): the generation is over. An error after part of the step
  // was queued still writes the done word behind it, and says so (MarkDoneWritten,
  // common/done_written.h): the worker's stream must wait for it before touching the gradients.
  // DEADLINE_EXCEEDED, nothing enqueued, when `call_deadline` (the worker's call's) has passed
  // once the communicator is joined: the worker's stream does not wait for the done word then.
  virtual absl::Status Enqueue(uint64_t step, const RuleParams& params, uint32_t ready_value,
                               absl::Time call_deadline) = 0;
  // The steps finished since the last call, oldest first; never blocks. A step whose results
  // were overwritten before any call saw it finished (the GPU two steps behind) is missing.
  virtual std::vector<GpuStepResult> Poll() = 0;
  // The statistics after the newest finished step, copied to pinned memory with its results
  // (for GetStats and metrics); never blocks; nullopt before any step has finished.
  virtual std::optional<GpuSnapshot> Snapshot() = 0;
  // Waits for the GPU and returns / replaces the statistics.
  virtual absl::StatusOr<std::vector<GroupStats>> Statistics() = 0;
  // SetStatistics also makes them the snapshot, labelled `step` (the step the job is at), until
  // a step enqueued after it finishes: the steps before are older than the statistics.
  virtual absl::Status SetStatistics(const std::vector<GroupStats>& stats, uint64_t step) = 0;
  // The worker-readable results buffer (StepResultsHeader, then a StepOutcome per group),
  // written before `done` every step: its interprocess handle and size.
  virtual std::string ResultsHandle() const = 0;
  virtual uint64_t ResultsBytes() const = 0;
  // Where the ready and done words (uint32, starting at 0) are in the results buffer, past
  // ResultsBytes.
  virtual uint64_t ReadyOffset() const = 0;
  uint64_t DoneOffset() const { return ReadyOffset() + sizeof(uint32_t); }
  // Aborts the pipeline's communicator (kernels waiting on peers return; the step changes
  // nothing); later steps fail with `why`.
  virtual void Abort(const std::string& why) = 0;
  // Lets every queued step still waiting for its worker's ready write past it (a worker that is
  // gone never writes it): gstabd writes the ready word itself, and those steps read and change
  // nothing; to the job's other GPUs they void the step too (every GPU skips it). A step already
  // past its sums is not changed: it finishes as the other GPUs' do. Never waits.
  virtual void Release() = 0;
  // Hands the results buffer over to the caller as the pipeline closes, so that it outlives the
  // pipeline while a worker may still map it: freed once the last copy and the pipeline are gone
  // and the pipeline's GPU work has finished (else left allocated: a kernel may still write it).
  // Never waits. `teardown_wait` bounds the destructor's wait for the GPU before it releases and
  // aborts what is still queued.
  virtual std::shared_ptr<void> TakeResults(absl::Duration teardown_wait) = 0;
  // Whether all its GPU work has finished.
  virtual bool Idle() = 0;
};

inline constexpr size_t kNcclUniqueIdBytes = 128;  // sizeof(ncclUniqueId)

// A job's NCCL communicator across its nodes, from its rendezvous.
struct NcclRendezvous {
  std::string unique_id;  // empty: a job on one node (its local GPUs' own communicator, if any)
  uint32_t node_rank = 0;
  uint32_t node_count = 1;
  absl::Duration timeout = absl::Seconds(30);  // for the nodes to join, and per step
};

// What a job's GPU pipeline needs besides its chunks and statistics.
struct GpuJobSpec {
  std::string job;
  // Per group, how this GPU takes part in the cross-node sum (CrossNodeMode of
  // server/cross_node.h).
  std::vector<uint8_t> modes;
  // The groups the cross-node stage carries: the first ones, up to the last a worker registers.
  // Those after (kUnregistered: an import or a checkpoint brought them, on node 0) stay this
  // node's, as on the CPU backend. Unset: every group.
  std::optional<uint32_t> cross_node_groups;
  uint64_t layout_hash = 0;  // LayoutHash of those groups, compared across nodes
  NcclRendezvous nccl;
  // A job of one rank (one GPU on one node) skips the cross-node stage, which would change
  // nothing; true runs it through an NCCL communicator of world size 1 anyway (for checking
  // NCCL on a machine with one GPU).
  bool nccl_one_rank = false;
  // Keep-alives of the worker's mapped gradients (MappedRegistration::mappings, and its memory
  // claim): held as long
  // as the pipeline's kernels may touch them, for good (with the pipeline's own memory) when a
  // step never finishes.
  std::vector<std::shared_ptr<void>> memory;
};

using GpuPipelineFactory = std::function<absl::StatusOr<std::unique_ptr<GpuPipeline>>(
    int device, const ChunkTable& table, const std::vector<GroupStats>& stats,
    const GpuJobSpec& spec)>;

// What a job needs of the CUDA backend.
struct GpuBackend {
  GpuPipelineFactory make_pipeline;  // null: cuda_ipc registrations are refused
  // A new NCCL unique id (bytes), for the communicator of a job's GPUs on one node.
  std::function<absl::StatusOr<std::string>()> new_nccl_id;
  absl::Duration timeout = absl::Seconds(60);  // deadline of a single-node job's communicator
  bool nccl_one_rank = false;                  // see GpuJobSpec
};

}  // namespace gstab
