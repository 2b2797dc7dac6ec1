// Job's GPU side: a generation of CUDA pipelines, one per local worker's GPU, from the first
// registration until a worker leaves or registers again (which ends the job's communicator);
// the step that enqueues a worker's GPU work and answers without waiting for it.
#include <algorithm>
#include <array>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/done_written.h"
#include "core/config.h"
#include "glog/logging.h"
#include "server/cross_node.h"
#include "server/job.h"
#include "server/local_work.h"

namespace gstab {
namespace {

// Why a finished GPU step applied nothing (StepResponse.not_applied), from its outcomes' flags
// (every group's are the same then); empty when it ran.
std::string NotApplied(uint32_t flags) {
  if ((flags & kFlagMismatch) != 0) {
    return "the job's nodes disagreed on the step number or the norm-group layout";
  }
  if ((flags & kFlagVoided) != 0) {
    return "the step was voided on the GPU: a node or local GPU of the job was lost, or its "
           "all-reduce was aborted";
  }
  return "";
}

}  // namespace

absl::Status Job::RegisterGpu(uint32_t local_rank, const MappedRegistration& registration,
                              const ChunkTable& table, v1::RegisterBuffersResponse* response) {
  if (!gpus_.available()) return absl::UnimplementedError("no CUDA pipeline here");
  if (collective_ != nullptr && nccl_.unique_id.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("job '", name_,
                     "' spans nodes but its rendezvous has no NCCL id: create it with "
                     "CreateRendezvous(cuda=true) to register cuda_ipc buffers "
                     "(gstab.torch.attach(..., cuda=True), `gstabctl rendezvous --cuda`)"));
  }
  // Across nodes a communicator's NCCL id serves one generation. A registration again ends the
  // running one even when it is refused below: its worker's library has let go of its old
  // registration already, and the job's other workers hear of it at once (rather than wait at
  // its ready word until the step timeout).
  if (gpus_.Has(local_rank)) {
    EndGpuGeneration(absl::StrCat("local rank ", local_rank, " registered again"));
  }
  if (collective_ != nullptr && nccl_spent_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job '", name_,
        "''s GPU communicator across nodes has ended and its NCCL id cannot be "
        "used again: attach every worker with a new rendezvous (CreateRendezvous(cuda=true): "
        "gstab.torch.attach(..., cuda=True), `gstabctl rendezvous --cuda`)"));
  }
  GpuJobSpec layout;
  layout.job = name_;
  // For a job of one GPU on one node, a group its registration does not bring (registered
  // earlier, or only an import's or a checkpoint's) keeps its statistics, as the CPU backend's
  // steps pass it over. Otherwise only a group no worker has registered: local GPUs that
  // registered different groups must still step each group alike, and across nodes the
  // cross-node stage below carries the registered groups.
  std::vector<bool> brought(group_reduction_.size(), false);
  for (const Chunk& c : table.chunks()) brought[c.group] = true;
  const bool alone = collective_ == nullptr && local_world_size_ == 1;
  for (uint32_t g = 0; g < group_reduction_.size(); ++g) {
    const bool unregistered = alone ? !brought[g] : group_reduction_[g] < 0;
    layout.modes.push_back(CrossNodeMode(unregistered ? -1 : group_reduction_[g], nccl_.node_rank));
  }
  // Groups no worker registers (an import's, on node 0) come after the registered ones once the
  // first registration ordered them (Register): those stay this node's, as on the CPU backend.
  uint32_t shared = 0;
  for (uint32_t g = 0; g < group_reduction_.size(); ++g) {
    if (group_reduction_[g] >= 0) shared = g + 1;
  }
  layout.cross_node_groups = shared;
  layout.layout_hash = LayoutHash(absl::MakeConstSpan(group_names_.data(), shared),
                                  absl::MakeConstSpan(group_reduction_.data(), shared));
  layout.memory = registration.mappings;
  // And its claim: another job may not claim that memory while these kernels may write it.
  if (registration.claim != nullptr) layout.memory.push_back(registration.claim);
  if (gpus_.empty()) {  // the first pipeline starts from stats_
    AlignStatistics();
    gpu_base_step_ = last_step_;
  }
  if (absl::Status s = gpus_.Add(local_rank, registration.plan.cuda_device, table,
                                 std::move(layout), nccl_, stats_);
      !s.ok()) {
    return s;
  }
  register_again_.erase(local_rank);
  gpu_mismatch_.erase(local_rank);
  cuda_devices_[local_rank] = registration.plan.cuda_device;
  GpuPipeline& pipeline = gpus_.Slot(local_rank);
  response->set_results_handle(pipeline.ResultsHandle());
  response->set_results_bytes(pipeline.ResultsBytes());
  response->set_ready_offset(pipeline.ReadyOffset());
  response->set_done_offset(pipeline.DoneOffset());
  return absl::OkStatus();
}

absl::Status Job::AgreeGpuLayout(uint32_t local_rank) {
  // Before the first collective of a generation the GPUs must agree on the group count: the
  // per-step check runs inside collectives whose size is that count. Locally on the host;
  // across nodes through the job's node collective (once per generation, waiting for every
  // node's first step, so without mu_: GetStats, exports, checkpoints and shutdown go on
  // meanwhile; another local rank's Step waits for this one's agreement).
  if (absl::Status s = gpus_.AllRegistered(); !s.ok()) return s;
  absl::StatusOr<uint32_t> groups = gpus_.LocalGroupCount();
  if (!groups.ok()) return groups.status();
  if (collective_ == nullptr) {
    gpus_.set_layout_agreed();
    return absl::OkStatus();
  }
  const uint64_t generation = gpus_.generations_ended();
  auto generation_ended = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (gpus_.generations_ended() == generation && gpus_.Has(local_rank)) return absl::OkStatus();
    return RegisterAgain(local_rank);
  };
  // Another local rank's Step agreeing for this generation: its outcome is this one's.
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !agreeing_layout_; };
  mu_.Await(absl::Condition(&idle));
  if (absl::Status s = generation_ended(); !s.ok()) return s;
  if (gpus_.layout_agreed()) return absl::OkStatus();
  if (layout_failure_.first == generation && !layout_failure_.second.ok()) {
    return layout_failure_.second;
  }
  auto failed = [&](const absl::Status& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return absl::Status(
        s.code(), absl::StrCat("job '", name_, "' node ", nccl_.node_rank, " of ", nccl_.node_count,
                               ": agreeing the GPUs' group count and "
                               "configuration with the other nodes before the "
                               "first step: ",
                               s.message()));
  };
  // The configuration too: a CUDA step's is not checked across nodes, so every node takes
  // node 0's here, once per generation (UpdateConfig and ImportState are refused while GPUs
  // are registered: params_ stays as it is while mu_ is released below).
  const std::shared_ptr<Collective> collective = collective_;
  const absl::Duration timeout = nccl_.timeout;
  const double n = *groups;
  const uint64_t config = ConfigHash(params_);
  const double hi = static_cast<double>(config >> 32);
  const double lo = static_cast<double>(config & 0xffffffffu);
  // And the GPUs a node: NCCL's ranks are node rank x local world size + local rank.
  const double gpus = local_world_size_;
  std::array<double, kGpuLayoutValues> range = {n, -n, hi, -hi, lo, -lo, gpus, -gpus};
  RuleParams node_zeros = params_;
  agreeing_layout_ = true;
  mu_.Unlock();
  absl::Status agreed;
  absl::Status refused;
  bool configs_differ = false;
  {
    // The node collective takes one caller at a time: a CPU round of another local rank may use
    // it (a worker registering cuda_ipc buffers while a round it was in is given up).
    absl::MutexLock using_collective(&collective_use_);
    agreed = collective->AllReduceMax(absl::MakeSpan(range), timeout);
    // Every node has the same maxima: each refuses alike, and none then waits in the broadcast.
    if (agreed.ok() && range[7] == 0) {
      // A node of host-memory steps joins as one of no GPUs (AgreeHostTransport).
      refused = absl::FailedPreconditionError(absl::StrCat(
          "another node of job '", name_,
          "' registered host_shm buffers, this one cuda_ipc: every node of a job registers its "
          "gradients one way; attach every worker again with a new rendezvous; nothing was "
          "summed"));
    } else if (agreed.ok() && range[6] != -range[7]) {
      refused = absl::InvalidArgumentError(absl::StrCat(
          "the nodes of job '", name_, "' run different numbers of local GPU workers (", gpus,
          " on this node, between ", -range[7], " and ", range[6],
          " across nodes): every node must run as many (torchrun's --nproc-per-node, the "
          "attaches' local_world_size), since NCCL's ranks are node rank x that number + local "
          "rank; nothing was summed"));
    } else if (agreed.ok() && range[0] != -range[1]) {
      refused = absl::InvalidArgumentError(absl::StrCat(
          "the nodes of job '", name_, "' registered different numbers of norm groups (", n,
          " on this node, between ", -range[1], " and ", range[0],
          " across nodes); every node must register the same groups; nothing was summed"));
    }
    configs_differ = range[2] != -range[3] || range[4] != -range[5];
    if (agreed.ok() && refused.ok() && configs_differ) {
      agreed = BroadcastParams(collective.get(), timeout, &node_zeros);
    }
  }
  mu_.Lock();
  agreeing_layout_ = false;
  if (absl::Status s = generation_ended(); !s.ok()) return s;
  if (!agreed.ok()) {
    // The node collective is broken now (by this gstabd's stop, perhaps).
    layout_failure_ = {generation, AsStopping(*collective, failed(agreed))};
    return layout_failure_.second;
  }
  if (!refused.ok()) {
    // The node's other local ranks are told the same, rather than each agreeing anew (with an
    // all-reduce the other nodes, refused already, would never join).
    layout_failure_ = {generation, refused};
    return refused;
  }
  if (configs_differ && !SameEffectiveConfig(node_zeros, params_)) {
    TakeNodeZerosConfig(node_zeros, nccl_.node_rank, "before the generation's first step");
    stats_params_ = node_zeros;  // the GPUs take node 0's statistics at the first step
  }
  gpus_.set_layout_agreed();
  return absl::OkStatus();
}

absl::Status Job::RegisterAgain(uint32_t local_rank) const {
  auto again = register_again_.find(local_rank);
  return absl::FailedPreconditionError(absl::StrCat(
      "local rank ", local_rank, " of job '", name_,
      "': ", again != register_again_.end() ? again->second : "register the buffers again"));
}

void Job::EndGpuGeneration(const std::string& why, std::optional<uint32_t> gone,
                           GpuReports* finished) {
  if (gpus_.empty()) return;
  if (collective_ != nullptr) nccl_spent_ = true;  // the rendezvous's NCCL id is used up
  const uint32_t primary = gpus_.primary();        // before Close empties gpus_
  std::vector<GpuStepResult> unpolled;
  // The statistics outlive it.
  std::optional<std::vector<GroupStats>> stats = gpus_.Close(gone, &unpolled);
  if (finished != nullptr) {
    CollectGpuSteps(primary, true, unpolled, last_step_, finished);
    TakeReportTicket(finished);
  } else {  // reported once mu_ is free, by the next that collects the primary's steps
    GpuReports ended;
    CollectGpuSteps(primary, true, unpolled, last_step_, &ended);
    unreported_gpu_steps_ = std::move(ended.reports);
  }
  newest_gpu_report_.reset();  // the next generation's first Step has no results yet
  if (stats.has_value()) std::copy(stats->begin(), stats->end(), stats_.begin());
  for (const auto& [rank, w] : workers_) {
    register_again_[rank] =
        absl::StrCat(why, ", which ends the job's GPU communicator: register the buffers again");
  }
  for (const auto& [rank, w] : workers_) w->removed.store(true);
  workers_.clear();
}

std::optional<uint64_t> Job::RefreshStatistics() const {
  if (gpus_.empty()) return std::nullopt;
  // Never waits for the GPU under the job's lock: a queued step can be held at its worker's
  // ready word for a whole backward pass (or, for a worker that died, until its lease expires),
  // and with several local ranks a wait could wait for another rank's next step, which needs
  // this lock. So the exact statistics only when the GPU is idle; else the newest finished
  // step's copy.
  if (!gpus_.multi_rank() && gpus_.Primary().Idle()) {
    absl::StatusOr<std::vector<GroupStats>> stats = gpus_.Primary().Statistics();
    if (stats.ok()) std::copy(stats->begin(), stats->end(), stats_.begin());
    return std::nullopt;
  }
  return CopySnapshot();
}

std::optional<uint64_t> Job::CopySnapshot() const {
  if (gpus_.empty()) return std::nullopt;
  std::optional<GpuSnapshot> snapshot = gpus_.Primary().Snapshot();
  if (!snapshot.has_value()) return gpu_base_step_;
  std::copy(snapshot->stats.begin(), snapshot->stats.end(), stats_.begin());
  return snapshot->step;
}

void Job::CollectGpuSteps(uint32_t local_rank, bool primary,
                          const std::vector<GpuStepResult>& finished, uint64_t step,
                          GpuReports* out) {
  if (primary) {  // steps of an ended generation first: they are older
    for (v1::StepResponse& r : unreported_gpu_steps_) out->reports.push_back(std::move(r));
    unreported_gpu_steps_.clear();
  }
  for (const GpuStepResult& done : finished) {
    // What the step did, as its registered groups say (one no worker registers says nothing).
    const auto first =
        std::find_if(done.outcomes.begin(), done.outcomes.end(),
                     [](const StepOutcome& o) { return (o.flags & kFlagUnregistered) == 0; });
    const uint32_t step_flags = first != done.outcomes.end() ? first->flags : 0;
    if ((step_flags & kFlagMismatch) != 0) {
      gpu_mismatch_[local_rank] = done.step;  // its outcomes say skipped; the next Step fails
    }
    v1::StepResponse& report = out->reports.emplace_back();
    report.set_step(step);
    report.set_config_version(config_version_);
    report.set_results_step(done.step);
    for (size_t g = 0; g < done.outcomes.size(); ++g) {
      const StepOutcome& o = done.outcomes[g];
      // A group no worker registers is not one of the step's, as on the CPU backend.
      if ((o.flags & kFlagUnregistered) != 0) continue;
      if (primary) last_outcome_[g] = o;
      v1::GroupResult* r = report.add_groups();
      FillGroupResult(g, o, r);
      if (g < done.stats.size()) {
        r->set_norm_mean(done.stats[g].spike_mean);
        r->set_norm_stddev(std::sqrt(done.stats[g].spike_var));
      }
      if (r->skipped()) report.set_skip(true);
      if (r->diverging()) report.set_diverging(true);
    }
    if (first != done.outcomes.end()) report.set_not_applied(NotApplied(step_flags));
  }
  // The job's metrics and events follow its first local GPU.
  if (primary && !finished.empty()) newest_gpu_report_ = out->reports.back();
}

void Job::TakeReportTicket(GpuReports* out) {
  // One ticket for all of `out`'s reports: each ticket handed out must be reported.
  if (!out->reports.empty() && on_step_ && out->ticket == 0) out->ticket = ++gpu_reports_taken_;
}

void Job::ReportGpuSteps(const GpuReports& taken) {
  if (taken.ticket == 0) return;
  absl::MutexLock lock(&report_mu_);
  // After the reports taken before them, which another thread may still be handing over.
  auto turn = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(report_mu_) {
    return gpu_reports_given_ + 1 == taken.ticket;
  };
  report_mu_.Await(absl::Condition(&turn));
  // Not timed: the steps ran on the GPU after Step had answered.
  for (const v1::StepResponse& report : taken.reports) on_step_(report, std::nullopt);
  gpu_reports_given_ = taken.ticket;
}

void Job::ReportFinishedGpuSteps() {
  // Not waited for: a job closing its pipelines holds its lock while the GPU finishes, and
  // gstabd's housekeeping (leases, checkpoints) must not wait with it. The next call looks.
  if (!mu_.TryLock()) return;
  GpuReports taken;
  if (importing_ == 0) {  // an import waits for the GPU: not now
    // Without pipelines (the generation ended), the ended generation's steps alone.
    uint32_t primary = 0;
    std::vector<GpuStepResult> finished;
    if (!gpus_.empty()) {
      primary = gpus_.primary();
      finished = gpus_.Poll(primary);
    }
    CollectGpuSteps(primary, true, finished, last_step_, &taken);
    TakeReportTicket(&taken);
  }
  mu_.Unlock();
  ReportGpuSteps(taken);
}

absl::Status Job::StepGpu(uint32_t local_rank, uint64_t step, uint32_t ready_value,
                          uint64_t session, absl::Time call_deadline, v1::StepResponse* response) {
  GpuReports taken;  // the finished steps, for on_step_ (the primary's)
  // How a job whose GPU generation a failed step ended goes on.
  auto recovery = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return collective_ != nullptr ? "attach every worker again with a new rendezvous"
                                  : "every local worker registers its buffers again";
  };
  {
    absl::MutexLock lock(&mu_);
    // An import waiting for the GPU's queued step goes first (for a bounded time).
    auto no_import = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return importing_ == 0; };
    mu_.Await(absl::Condition(&no_import));
    if (absl::Status s = CheckSession(local_rank, session); !s.ok()) return s;
    if (!gpus_.Has(local_rank)) return RegisterAgain(local_rank);  // the generation ended
    // A new session of a restarted worker, before the old one's removal reaches the job.
    if (!RegisteredBy(local_rank, session)) return NoBuffers(local_rank);
    if (ready_value == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("local rank ", local_rank, " of job '", name_,
                       "' registered cuda_ipc buffers but step ", step,
                       " carries no ready_value: the worker's stream writes it to the ready word "
                       "(RegisterBuffersResponse.ready_offset) after its backward pass"));
    }
    if (!gpus_.layout_agreed()) {  // may release mu_ while it waits for the other nodes
      if (absl::Status s = AgreeGpuLayout(local_rank); !s.ok()) return s;
      if (absl::Status s = CheckSession(local_rank, session); !s.ok()) return s;
    }
    const bool primary = local_rank == gpus_.primary();
    // A disagreement is reported before a step is enqueued: once one is, the answer must be
    // OK, so that the worker's stream waits for its done word before touching the gradients.
    if (auto mismatch = gpu_mismatch_.find(local_rank); mismatch != gpu_mismatch_.end()) {
      const uint64_t at = mismatch->second;
      gpu_mismatch_.erase(mismatch);
      return absl::InvalidArgumentError(absl::StrCat(
          "step numbers or norm-group layouts differ across the nodes of job '", name_,
          "' (found at step ", at,
          "); nothing was applied to that step; every node must step in lockstep with the same "
          "groups; step ",
          step, " was not taken"));
    }
    const LocalWork enqueueing;
    if (!enqueueing.began()) return ShuttingDown(step);  // gstabd is exiting
    // Its worker's call gave up (gstabd stalled past its deadline): the client did not make its
    // stream wait for the done word, so kernels enqueued now would scale gradients its next
    // backward pass writes. Nothing is enqueued; the other GPUs' collectives of this step (of
    // this node's and the other nodes') would wait for its, so with several the generation ends.
    // A step refused anyway is refused as such, ending nothing.
    if (absl::Status s = gpus_.CheckEnqueue(local_rank, step, ready_value); !s.ok()) return s;
    if (absl::Now() >= call_deadline) {
      std::string consequence = "nothing of it was enqueued";
      if (gpus_.multi_rank()) {
        EndGpuGeneration(absl::StrCat("local rank ", local_rank, "'s step ", step,
                                      " came after its worker's call gave up"));
        absl::StrAppend(&consequence, "; this ended the job's GPU generation: ", recovery());
      }
      LOG(WARNING) << "job '" << name_ << "' local rank " << local_rank << " step " << step
                   << ": its worker's call gave up before it was enqueued; " << consequence;
      return absl::DeadlineExceededError(absl::StrCat(
          "step ", step, " of job '", name_, "' local rank ", local_rank,
          " came after its worker's call gave up (gstabd stalled past the call's deadline); ",
          consequence));
    }
    if (absl::Status s = gpus_.Enqueue(local_rank, step, params_, ready_value, call_deadline);
        !s.ok()) {
      if (!gpus_.multi_rank() || (!absl::IsUnavailable(s) && !absl::IsDeadlineExceeded(s))) {
        return s;
      }
      // The communicator failed (another GPU's worker or a node died or stalled), or joining it
      // outlasted the worker's call: no later step of this generation can run (the other GPUs'
      // collectives of this step wait for this one's), so it ends now and its memory goes.
      const bool gave_up =
          absl::IsDeadlineExceeded(s) && absl::StrContains(s.message(), "call gave up");
      EndGpuGeneration(absl::StrCat(
          "local rank ", local_rank, "'s step ", step,
          gave_up ? " came after its worker's call gave up (" : " failed in the GPU communicator (",
          s.message(), ")"));
      absl::Status ended(
          s.code(), absl::StrCat("local rank ", local_rank, " of job '", name_, "': ", s.message(),
                                 "; this ended the job's GPU generation: ", recovery()));
      if (DoneWritten(s)) MarkDoneWritten(&ended);  // the worker's stream waits for it still
      return ended;
    }
    if (primary) {  // the job's step count and history follow its first local GPU
      for (v1::ConfigChange& change : config_history_) {  // every change made since
        if (change.version() > 1 && change.effective_step() == 0) change.set_effective_step(step);
      }
      steps_ += 1;
      last_step_ = step;
      have_step_ = true;
    }
    response->set_step(step);
    response->set_config_version(config_version_);
    // Every finished step is reported to on_step_ (metrics, events); the answer carries the
    // newest.
    std::vector<GpuStepResult> finished = gpus_.Poll(local_rank);
    CollectGpuSteps(local_rank, primary, finished, step, &taken);
    if (primary) TakeReportTicket(&taken);
    if (!finished.empty()) {
      *response = taken.reports.back();
    } else if (primary && newest_gpu_report_.has_value()) {
      // Taken off the pipeline by the housekeeping since (ReportFinishedGpuSteps): the answer
      // still carries the newest finished step's results.
      *response = *newest_gpu_report_;
      response->set_step(step);
      response->set_config_version(config_version_);
    }
  }
  ReportGpuSteps(taken);
  return absl::OkStatus();
}

}  // namespace gstab
