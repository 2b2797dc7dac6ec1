// Job: its workers' registrations, its configuration, and its communicator across nodes. Its
// sessions are in job_sessions.cc, the CPU round of a step in job_round.cc and job_run.cc, the
// CUDA side in job_gpu.cc, export and import in job_state.cc.
#include "server/job.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <set>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "core/config.h"
#include "server/state_codec.h"

namespace gstab {

Job::Job(std::string name, const RuleParams& params, uint32_t local_world_size,
         CpuExecutor* executor, StepCallback on_step, GpuBackend gpu)
    : name_(std::move(name)),
      local_world_size_(local_world_size),
      executor_(executor),
      on_step_(std::move(on_step)),
      params_(params),
      stats_params_(params),
      gpus_(name_, local_world_size, std::move(gpu)) {
  v1::ConfigChange first;
  first.set_version(1);
  first.set_effective_step(0);
  *first.mutable_config() = EffectiveConfig(params);
  config_history_.push_back(std::move(first));
}

RuleParams Job::params() const {
  absl::MutexLock lock(&mu_);
  return params_;
}

uint32_t Job::GroupIndex(const std::string& group) {
  auto [it, inserted] = group_index_.emplace(group, static_cast<uint32_t>(group_names_.size()));
  if (inserted) {
    group_names_.push_back(group);
    group_reduction_.push_back(-1);
    stats_.emplace_back();
    last_outcome_.emplace_back();
  }
  return it->second;
}

Job::GroupLayout Job::Groups() const {
  return GroupLayout{group_names_, group_reduction_, stats_, last_outcome_};
}

void Job::SetGroups(GroupLayout layout) {
  group_names_ = std::move(layout.names);
  group_reduction_ = std::move(layout.reduction);
  stats_ = std::move(layout.stats);
  last_outcome_ = std::move(layout.outcomes);
  group_index_.clear();
  for (uint32_t g = 0; g < group_names_.size(); ++g) group_index_.emplace(group_names_[g], g);
}

bool Job::OrderGroupsLike(const RegistrationPlan& plan) {
  std::vector<std::string> order;
  std::set<std::string> seen;
  for (const PlannedTensor& t : plan.tensors) {
    if (seen.insert(t.group).second) order.push_back(t.group);
  }
  const size_t named = order.size();
  for (const std::string& g : group_names_) {
    if (seen.insert(g).second) order.push_back(g);
  }
  // What registering would make of the order as it is: new groups after the others.
  std::vector<std::string> as_is = group_names_;
  for (size_t i = 0; i < named; ++i) {
    if (group_index_.count(order[i]) == 0) as_is.push_back(order[i]);
  }
  if (as_is == order) return false;
  GroupLayout layout;
  for (const std::string& name : order) {
    auto it = group_index_.find(name);
    layout.names.push_back(name);
    layout.reduction.push_back(it == group_index_.end() ? -1 : group_reduction_[it->second]);
    layout.stats.push_back(it == group_index_.end() ? GroupStats{} : stats_[it->second]);
    layout.outcomes.push_back(it == group_index_.end() ? StepOutcome{} : last_outcome_[it->second]);
  }
  SetGroups(std::move(layout));
  return true;
}

absl::Status Job::Register(uint32_t local_rank, MappedRegistration registration,
                           v1::RegisterBuffersResponse* response, uint64_t session) {
  auto worker = std::make_shared<Worker>();
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CheckSession(local_rank, session); !s.ok()) return s;
  const RegistrationPlan& plan = registration.plan;
  // Check every group's reduction against the job, and the job's group cap, before creating
  // anything.
  std::set<std::string> new_groups;
  for (const PlannedTensor& t : plan.tensors) {
    auto it = group_index_.find(t.group);
    if (it == group_index_.end()) new_groups.insert(t.group);
    if (it != group_index_.end() && group_reduction_[it->second] >= 0 &&
        group_reduction_[it->second] != static_cast<int>(t.reduction)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "': group '", t.group, "' is ",
                       ReductionName(group_reduction_[it->second]), " in job '", name_,
                       "' but this registration marks it ", ReductionName(t.reduction)));
    }
  }
  if (absl::Status s = CheckGroupCap(new_groups.size()); !s.ok()) return s;
  if (absl::Status s = CheckNoSharedMemory(local_rank, registration); !s.ok()) return s;
  if (registration.plan.cuda_device >= 0) {
    for (const auto& [rank, w] : workers_) {
      if (rank != local_rank && w->registration.plan.cuda_device < 0) {
        return absl::FailedPreconditionError(
            absl::StrCat("job '", name_, "''s local rank ", rank,
                         " registered host_shm buffers: one job's workers use one transport"));
      }
    }
  } else if (!gpus_.empty()) {
    if (!gpus_.HasOnly(local_rank)) {
      return absl::FailedPreconditionError(
          absl::StrCat("job '", name_,
                       "''s other local ranks run on the CUDA pipeline: one job's workers use "
                       "one transport (register cuda_ipc buffers, not host_shm)"));
    }
    // The rank's own CUDA registration is the one this replaces: its generation ends (the
    // statistics come home) and the job goes on on the host.
    EndGpuGeneration(absl::StrCat("local rank ", local_rank, " registered host_shm buffers"));
  }
  // The first registration of a job made, restored or imported into, or since it joined its
  // rendezvous, takes its order: on node 0, an import before its workers registered laid the
  // groups out in the state's order, and a model whose groups were added or moved since stepped
  // apart from the other nodes' layout, refused at every step. Not while a worker, a round or an
  // import holds group indices (a registration then leaves the order to a later one).
  const bool may_order = workers_.empty() && gpus_.empty() && !round_running_ && importing_ == 0;
  std::optional<GroupLayout> before_reorder;
  if (!groups_ordered_ && may_order && !group_names_.empty()) {
    // Aligned first, so that a refused registration puts back statistics of stats_params_
    // (the GPU's registration aligns them too).
    AlignStatistics();
    before_reorder = Groups();
    if (!OrderGroupsLike(plan)) before_reorder.reset();
  }
  // The groups this registration brings are the job's only if it succeeds: a refused one
  // leaves the job's groups (names, order, reductions, statistics) as they were.
  const size_t groups_before = group_names_.size();
  const std::vector<int> reductions_before = group_reduction_;
  absl::Cleanup forget_groups = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (before_reorder.has_value()) {
      SetGroups(*std::move(before_reorder));
      return;
    }
    for (size_t g = groups_before; g < group_names_.size(); ++g) {
      group_index_.erase(group_names_[g]);
    }
    group_names_.resize(groups_before);
    group_reduction_ = reductions_before;
    stats_.resize(groups_before);
    last_outcome_.resize(groups_before);
  };
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const PlannedTensor& t = plan.tensors[i];
    const uint32_t g = GroupIndex(t.group);
    group_reduction_[g] = static_cast<int>(t.reduction);
    worker->tensor_group.push_back(g);
    chunks.push_back(Chunk{
        registration.tensor_data[i], static_cast<int64_t>(t.numel), plan.buffers[t.buffer].dtype, g,
        registration.host_objects.empty() ? nullptr
                                          : registration.host_objects[t.buffer]->lost_count()});
  }
  absl::StatusOr<ChunkTable> table =
      ChunkTable::Create(std::move(chunks), static_cast<uint32_t>(group_names_.size()));
  if (!table.ok()) return table.status();
  if (registration.plan.cuda_device >= 0) {
    if (absl::Status s = RegisterGpu(local_rank, registration, *table, response); !s.ok()) {
      return s;
    }
  }
  std::move(forget_groups).Cancel();
  if (may_order) groups_ordered_ = true;
  worker->table = *std::move(table);
  worker->has_group.assign(group_names_.size(), false);
  for (uint32_t g : worker->tensor_group) worker->has_group[g] = true;
  std::set<uint32_t> groups(worker->tensor_group.begin(), worker->tensor_group.end());
  response->set_num_groups(static_cast<uint32_t>(groups.size()));
  response->set_registered_bytes(plan.total_bytes);
  for (const std::string& name : group_names_) response->add_groups(name);
  worker->registration = std::move(registration);
  detached_.erase(local_rank);
  if (session != 0) {
    newest_session_[local_rank] = session;
    // A Step an older session of the rank made in the open round goes (as at its removal, which
    // may not have reached the job yet).
    WithdrawArrival(local_rank, 1, session - 1);
  }
  register_again_.erase(local_rank);  // registered again, on whichever transport
  // A mark left by an earlier registration (or gstabd) of the same memory would read as this
  // one's when a step of the same number is cut off: the word starts blank. Not while a round
  // runs: it marks its workers' words outside the lock, possibly this memory's through an
  // older registration, after the blank.
  if (worker->registration.progress != nullptr && !round_running_) {
    __atomic_store_n(worker->registration.progress, uint64_t{0}, __ATOMIC_SEQ_CST);
  }
  // The registration this replaces is not marked removed: a Step of it still in flight (on
  // another of the worker's threads) scales it as it answers.
  workers_[local_rank] = std::move(worker);
  return absl::OkStatus();
}

absl::Status Job::CheckNoSharedMemory(uint32_t local_rank,
                                      const MappedRegistration& registration) const {
  struct Extent {
    uintptr_t begin, end;
    uint32_t rank;
    size_t index;  // in WrittenExtents
  };
  // One mapping per object (and per IPC allocation): the same memory has the same address.
  std::vector<Extent> others;
  for (const auto& [rank, w] : workers_) {
    if (rank == local_rank) continue;  // replaced by this registration
    const std::vector<MemoryClaims::Extent> theirs = WrittenExtents(w->registration);
    for (size_t i = 0; i < theirs.size(); ++i) {
      others.push_back({theirs[i].begin, theirs[i].end, rank, i});
    }
  }
  if (others.empty()) return absl::OkStatus();
  // Each rank's extents are disjoint, and so are the ranks' (checked here as each came).
  std::sort(others.begin(), others.end(),
            [](const Extent& a, const Extent& b) { return a.begin < b.begin; });
  const std::vector<MemoryClaims::Extent> mine = WrittenExtents(registration);
  for (size_t i = 0; i < mine.size(); ++i) {
    auto after = std::lower_bound(others.begin(), others.end(), mine[i].end,
                                  [](const Extent& e, uintptr_t end) { return e.begin < end; });
    if (after == others.begin() || std::prev(after)->end <= mine[i].begin) continue;
    const Extent& theirs = *std::prev(after);
    return absl::InvalidArgumentError(absl::StrCat(
        WrittenExtentName(registration, i), " shares memory with ",
        WrittenExtentName(workers_.at(theirs.rank)->registration, theirs.index), " of local rank ",
        theirs.rank, " of job '", name_,
        "': gstabd would write both at each step, counting and scaling gradients twice or "
        "writing over them. Each rank registers its own gradients and progress word"));
  }
  return absl::OkStatus();
}

void Job::FillGroupResult(size_t g, const StepOutcome& out, v1::GroupResult* r) const {
  r->set_group(group_names_[g]);
  r->set_norm(out.norm);
  r->set_stabilized_norm(out.stabilized_norm);
  r->set_scale(out.scale);
  r->set_z(out.z);
  r->set_spike((out.flags & (kFlagSpike | kFlagSpikeRatio)) != 0);
  r->set_skipped((out.flags & kFlagSkipped) != 0);
  r->set_diverging((out.flags & kFlagDiverging) != 0);
}

absl::Status Job::JoinRendezvous(std::shared_ptr<Collective> collective,
                                 const v1::RendezvousInfo& info, NcclRendezvous nccl) {
  absl::MutexLock lock(&mu_);  // the check and the install together: attaches race
  if (rendezvous_token_ == info.token()) {
    const uint32_t rank = collective_ == nullptr ? 0 : collective_->rank();
    if (rank == nccl.node_rank) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(
        "job '", name_, "' is node ", rank, " on this gstabd; a worker here cannot attach as node ",
        nccl.node_rank,
        ": each node of a job has a gstabd of its own (on one machine, start another with its "
        "own --socket, --state_dir and --peer_listen)"));
  }
  // rendezvous_ is the job's newest, joined here or restored from its checkpoint.
  if (!rendezvous_.store_address().empty() && rendezvous_.store_address() == info.store_address() &&
      std::make_pair(info.store_started_us(), info.generation()) <
          std::make_pair(rendezvous_.store_started_us(), rendezvous_.generation())) {
    // Generations count from each start of the store's gstabd: one made before a restart of it
    // is older whatever its number.
    const std::string which =
        info.store_started_us() == rendezvous_.store_started_us()
            ? absl::StrCat("(generation ", info.generation(),
                           ") is older than the one the job runs with here (generation ",
                           rendezvous_.generation(), ")")
            : "was made before the store's gstabd last started, and the job runs with a newer "
              "one here";
    return absl::FailedPreconditionError(
        absl::StrCat("this rendezvous of job '", name_, "' ", which,
                     ": attach with the newest blob (a restarted worker may have kept an old "
                     "GSTAB_RENDEZVOUS)"));
  }
  rendezvous_ = info;
  InstallCollective(std::move(collective), info.token(), std::move(nccl));
  return absl::OkStatus();
}

void Job::SetCollective(std::shared_ptr<Collective> collective, std::string rendezvous_token,
                        NcclRendezvous nccl) {
  absl::MutexLock lock(&mu_);
  InstallCollective(std::move(collective), std::move(rendezvous_token), std::move(nccl));
}

void Job::InstallCollective(std::shared_ptr<Collective> collective, std::string rendezvous_token,
                            NcclRendezvous nccl) {
  collective_ = std::move(collective);
  rendezvous_token_ = std::move(rendezvous_token);
  nccl_ = std::move(nccl);
  sync_statistics_ = true;
  // A node other than 0 follows node 0's step numbers (the step check holds the nodes to one),
  // which may go back: a job resumed from a checkpoint older than this node's last step.
  if (collective_ != nullptr && collective_->rank() != 0) have_step_ = false;
  generation_stepped_ = false;
  replicas_warned_ = false;
  abandoned_step_.reset();  // a step given up in the old generation
  EndGpuGeneration("the job attached with a new rendezvous");  // a new communicator
  nccl_spent_ = false;
  // Every node of the new run joins before its workers register (and node 0 imports after):
  // each node's first registration of it sets the order, whatever the node held before (the
  // job held from the last run on some nodes, restored or new on others).
  groups_ordered_ = false;
}

uint32_t Job::node_rank() const {
  absl::MutexLock lock(&mu_);
  return collective_ == nullptr ? 0 : collective_->rank();
}

uint32_t Job::node_count() const {
  absl::MutexLock lock(&mu_);
  return collective_ == nullptr ? 1 : collective_->size();
}

std::string Job::rendezvous_token() const {
  absl::MutexLock lock(&mu_);
  return rendezvous_token_;
}

std::optional<int> Job::CudaDevice(uint32_t local_rank) const {
  absl::MutexLock lock(&mu_);
  auto it = cuda_devices_.find(local_rank);
  if (it == cuda_devices_.end()) return std::nullopt;
  return it->second;
}

std::optional<uint64_t> Job::RunningStep() const {
  absl::MutexLock lock(&mu_);
  if (!round_running_) return std::nullopt;
  return round_step_;
}

uint64_t Job::RegisteredBytes() const {
  absl::MutexLock lock(&mu_);
  uint64_t bytes = 0;
  for (const auto& [rank, w] : workers_) bytes += w->registration.plan.total_bytes;
  return bytes;
}

uint64_t Job::RegisteredTensors(std::optional<uint32_t> except_rank) const {
  absl::MutexLock lock(&mu_);
  uint64_t tensors = 0;
  for (const auto& [rank, w] : workers_) {
    if (rank != except_rank) tensors += w->registration.plan.tensors.size();
  }
  return tensors;
}

bool Job::Diverging() const {
  absl::MutexLock lock(&mu_);
  return std::any_of(stats_.begin(), stats_.end(),
                     [](const GroupStats& s) { return s.diverging != 0; });
}

absl::Status Job::CheckGroupCap(size_t new_groups) const {
  if (group_names_.size() + new_groups <= kMaxGroupsPerJob) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "job '", name_, "' has ", group_names_.size(), " norm groups, and ", new_groups,
      " new ones would pass its cap of ", kMaxGroupsPerJob,
      " (a job keeps its groups, also across retirement and restarts: reuse group names, or "
      "use a new job name)"));
}

void Job::Summarize(v1::JobSummary* out) const {
  absl::MutexLock lock(&mu_);
  out->set_job(name_);
  out->set_policy(PolicyName(params_.policy));
  out->set_steps(steps_);
  out->set_last_step(last_step_);
  out->set_groups(static_cast<uint32_t>(group_names_.size()));
  uint64_t bytes = 0;
  for (const auto& [rank, w] : workers_) bytes += w->registration.plan.total_bytes;
  out->set_registered_bytes(bytes);
  out->set_local_world_size(local_world_size_);
  if (round_open_ && !round_running_) {
    out->set_waiting_step(round_step_);
    for (const auto& [rank, arrival] : arrived_) out->add_arrived_local_ranks(rank);
  }
}

std::vector<std::string> Job::UnregisteredGroups(const v1::JobState& state) const {
  absl::MutexLock lock(&mu_);
  std::vector<bool> registered(group_names_.size(), false);
  for (const auto& [rank, worker] : workers_) {
    for (size_t g = 0; g < worker->has_group.size() && g < registered.size(); ++g) {
      registered[g] = registered[g] || worker->has_group[g];
    }
  }
  std::vector<std::string> unregistered;
  if (workers_.size() < local_world_size_) return unregistered;  // the others' groups unknown
  for (const v1::GroupState& group : state.groups()) {
    auto it = group_index_.find(group.name());
    if (it == group_index_.end() || !registered[it->second]) unregistered.push_back(group.name());
  }
  return unregistered;
}

}  // namespace gstab
