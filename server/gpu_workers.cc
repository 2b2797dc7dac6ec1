#include "server/gpu_workers.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"

namespace gstab {
namespace {
constexpr absl::Duration kCloseWait = absl::Seconds(2);
}  // namespace

absl::Status GpuWorkers::Add(uint32_t local_rank, int device, const ChunkTable& table,
                             GpuJobSpec layout, const NcclRendezvous& nccl,
                             const std::vector<GroupStats>& stats) {
  if (Has(local_rank)) {
    return absl::FailedPreconditionError(
        absl::StrCat("local rank ", local_rank, " of job '", job_, "' already has a pipeline"));
  }
  for (const auto& [rank, w] : slots_) {
    if (w.device == device) {
      return absl::FailedPreconditionError(absl::StrCat(
          "local ranks ", rank, " and ", local_rank, " of job '", job_, "' both use GPU ", device,
          ": NCCL takes one rank per GPU, so give each local worker its own device"));
    }
  }
  const bool multi_node = !nccl.unique_id.empty();
  layout.nccl = nccl;
  layout.nccl_one_rank = backend_.nccl_one_rank;
  layout.nccl.node_rank = nccl.node_rank * local_world_size_ + local_rank;
  layout.nccl.node_count = nccl.node_count * local_world_size_;
  if (!multi_node) {
    layout.nccl.timeout = backend_.timeout;
    if (local_world_size_ > 1) {  // the local GPUs share a communicator of this generation
      if (generation_id_.empty()) {
        if (backend_.new_nccl_id == nullptr) {
          return absl::UnimplementedError("this gstabd cannot make NCCL ids");
        }
        absl::StatusOr<std::string> id = backend_.new_nccl_id();
        if (!id.ok()) return id.status();
        generation_id_ = *std::move(id);
      }
      layout.nccl.unique_id = generation_id_;
    }
  }
  absl::StatusOr<std::unique_ptr<GpuPipeline>> pipeline =
      backend_.make_pipeline(device, table, stats, layout);
  if (!pipeline.ok()) return pipeline.status();
  retired_results_.erase(local_rank);  // the worker let go of it before registering again
  Worker& w = slots_[local_rank];
  w.pipeline = *std::move(pipeline);
  w.last_ready.reset();  // a new pipeline's ready word starts at 0
  w.device = device;
  w.groups = table.num_groups();
  w.cross_node_groups = layout.cross_node_groups.value_or(table.num_groups());
  multi_rank_ = layout.nccl.node_count > 1;
  return absl::OkStatus();
}

bool GpuWorkers::InLockstep() const {
  for (const auto& [rank, w] : slots_) {
    if (w.last_step != slots_.begin()->second.last_step) return false;
  }
  return true;
}

absl::StatusOr<uint32_t> GpuWorkers::LocalGroupCount() const {
  if (slots_.empty()) return 0u;
  const uint32_t groups = slots_.begin()->second.groups;
  const uint32_t across = slots_.begin()->second.cross_node_groups;
  for (const auto& [rank, w] : slots_) {
    if (w.groups != groups || w.cross_node_groups != across) {
      // The counts of the job's groups each saw, else of those up to its last registered one.
      const bool totals = w.groups != groups;
      return absl::InvalidArgumentError(absl::StrCat(
          "local ranks ", slots_.begin()->first, " and ", rank, " of job '", job_,
          "' registered different norm groups (", totals ? groups : across, " and ",
          totals ? w.groups : w.cross_node_groups, totals ? "" : " up to the last registered",
          "): on the CUDA pipeline every local worker registers the same groups"));
    }
  }
  return across;
}

bool GpuWorkers::AwaitIdle(absl::Duration wait) {
  const absl::Time deadline = absl::Now() + wait;
  for (;;) {
    bool idle = true;
    for (auto& [rank, w] : slots_) idle = idle && w.pipeline->Idle();
    if (idle) return true;
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Microseconds(200));
  }
}

std::optional<std::vector<GroupStats>> GpuWorkers::Close(std::optional<uint32_t> gone,
                                                         std::vector<GpuStepResult>* finished) {
  // Closing happens under the job's lock (and, for a new rendezvous, the daemon's): the waits
  // are short and shared by every local rank, whatever their number.
  // A gone worker's ready write never comes: its steps are released first, so that its peers'
  // collectives, which wait for it, meet it and finish (every GPU skips the step).
  // The primary's steps finished so far, before anything is released: they ran as asked.
  if (finished != nullptr && !slots_.empty()) *finished = Primary().Poll();
  bool voided = gone.has_value() && Has(*gone);  // a step released or aborted
  if (voided) Slot(*gone).Release();
  if (multi_rank_ && !InLockstep()) {
    voided = true;
    // Local ranks stopped at different steps: their collectives cannot meet. Every held step is
    // released first, so that no collective is still queued behind a ready word when its
    // communicator is aborted, then the communicators are.
    for (auto& [rank, w] : slots_) {
      if (rank != gone) w.pipeline->Release();
    }
    for (auto& [rank, w] : slots_) {
      w.pipeline->Abort("the job's local GPUs stopped at different steps");
    }
  }
  bool idle = AwaitIdle(kCloseWait);
  if (!idle) {  // a live worker has not written its ready word yet: its steps are voided too
    voided = true;
    for (auto& [rank, w] : slots_) {
      if (rank != gone && !w.pipeline->Idle()) w.pipeline->Release();
    }
    idle = AwaitIdle(kCloseWait);
  }
  if (!idle && multi_rank_) {
    // A peer that never comes (on another node, or stalled): the communicators are aborted
    // together, after the releases (no collective is held behind a ready word then).
    for (auto& [rank, w] : slots_) {
      w.pipeline->Abort("the job's GPU pipelines closed with a step still running");
    }
    idle = AwaitIdle(kCloseWait);
  }
  // Nothing was released or aborted: the steps that finished meanwhile ran as asked too.
  if (finished != nullptr && idle && !voided && !slots_.empty()) {
    for (GpuStepResult& r : Primary().Poll()) finished->push_back(std::move(r));
  }
  // A results buffer is freed once idle; one still written by a step that never finishes is
  // left allocated with that step's memory, and the statistics are the newest finished step's.
  // An aborted pipeline that is still not idle has had its waits: it is given up on at once.
  const absl::Duration teardown = idle || !multi_rank_ ? kCloseWait : absl::ZeroDuration();
  for (auto& [rank, w] : slots_) {
    std::shared_ptr<void> results = w.pipeline->TakeResults(teardown);
    if (gone != rank) retired_results_[rank] = std::move(results);
  }
  std::optional<std::vector<GroupStats>> stats;
  if (!slots_.empty()) {
    if (Primary().Idle()) {
      absl::StatusOr<std::vector<GroupStats>> s = Primary().Statistics();
      if (s.ok()) stats = *std::move(s);
    } else {
      std::optional<GpuSnapshot> snapshot = Primary().Snapshot();
      if (snapshot.has_value()) stats = std::move(snapshot->stats);
    }
  }
  slots_.clear();
  ++generations_ended_;
  generation_id_.clear();
  layout_agreed_ = false;
  multi_rank_ = false;
  return stats;
}

absl::Status GpuWorkers::AllRegistered() const {
  if (slots_.size() >= local_world_size_) return absl::OkStatus();
  std::vector<uint32_t> missing;
  for (uint32_t r = 0; r < local_world_size_; ++r) {
    if (!Has(r)) missing.push_back(r);
  }
  return absl::FailedPreconditionError(
      absl::StrCat("local rank(s) ", absl::StrJoin(missing, ", "), " of job '", job_,
                   "' have not registered their CUDA buffers yet; the job's GPUs step "
                   "together once every local worker has"));
}

absl::Status GpuWorkers::CheckEnqueue(uint32_t local_rank, uint64_t step,
                                      uint32_t ready_value) const {
  if (absl::Status s = AllRegistered(); !s.ok()) return s;
  const Worker& w = slots_.at(local_rank);
  if (w.last_step.has_value() && step <= *w.last_step) {
    return absl::InvalidArgumentError(absl::StrCat("step ", step, " is not after local rank ",
                                                   local_rank, "'s last step ", *w.last_step,
                                                   " of job '", job_, "'"));
  }
  // The wait for the ready word is cyclic (it passes once the word is at or after the value):
  // a value not after the last would let the kernels read gradients the worker's backward pass
  // is still writing. Gaps are fine (a worker's refused steps use values up).
  if (w.last_ready.has_value() && static_cast<int32_t>(ready_value - *w.last_ready) <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "step ", step, " of local rank ", local_rank, " of job '", job_, "' carries ready_value ",
        ready_value, ", not after its last step's, ", *w.last_ready,
        ": the worker's stream writes one more to the ready word each step (past 2^32 - 1 to "
        "1), after its backward pass, and the step's ready_value is that write's"));
  }
  return absl::OkStatus();
}

absl::Status GpuWorkers::Enqueue(uint32_t local_rank, uint64_t step, const RuleParams& params,
                                 uint32_t ready_value, absl::Time call_deadline) {
  if (absl::Status s = CheckEnqueue(local_rank, step, ready_value); !s.ok()) return s;
  Worker& w = slots_.at(local_rank);
  if (absl::Status s = w.pipeline->Enqueue(step, params, ready_value, call_deadline); !s.ok()) {
    return s;
  }
  w.last_step = step;
  w.last_ready = ready_value;
  return absl::OkStatus();
}

std::optional<uint64_t> GpuWorkers::LastStep(uint32_t local_rank) const {
  auto it = slots_.find(local_rank);
  return it == slots_.end() ? std::nullopt : it->second.last_step;
}

absl::Status GpuWorkers::SetStatistics(const std::vector<GroupStats>& stats, uint64_t step) {
  for (auto& [rank, w] : slots_) {
    if (absl::Status s = w.pipeline->SetStatistics(stats, step); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace gstab
