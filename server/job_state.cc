// Job: its configuration and statistics as the outside sees them: UpdateConfig, GetStats,
// and the state that ExportState writes and ImportState restores (checkpoints, restarts,
// moves between daemons).
#include <algorithm>
#include <cmath>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "core/config.h"
#include "core/rule.h"
#include "glog/logging.h"
#include "google/protobuf/util/message_differencer.h"
#include "server/grpc_status.h"
#include "server/job.h"  // the class whose members these are
#include "server/state_codec.h"

namespace gstab {
namespace {

// The EMA settings (betas, bias correction) a state was saved with, read from its stabilize
// part alone, where its configuration as a whole is refused: the preset's or the defaults
// where unset, each beta taken if it is in [0, 1) (even one this gstabd now refuses to run
// with, such as a beta1 above sqrt(beta2)). Nullopt when they cannot be read.
std::optional<RuleParams> SavedEmas(const v1::StabilizeConfig& saved) {
  v1::PolicyConfig preset;
  *preset.mutable_stabilize() = saved;
  preset.mutable_stabilize()->clear_beta1();
  preset.mutable_stabilize()->clear_beta2();
  preset.mutable_stabilize()->clear_eps();  // no part of the EMAs' expression
  absl::StatusOr<RuleParams> p = ResolveConfig(preset);
  if (!p.ok()) return std::nullopt;
  auto unit = [](double b) { return std::isfinite(b) && b >= 0.0 && b < 1.0; };
  if (saved.has_beta1()) {
    if (!unit(saved.beta1())) return std::nullopt;
    p->beta1 = saved.beta1();
  }
  if (saved.has_beta2()) {
    if (!unit(saved.beta2())) return std::nullopt;
    p->beta2 = saved.beta2();
  }
  return *p;
}

}  // namespace

absl::Status Job::NodeZerosStateOnly(const std::string& what) const {
  if (collective_ == nullptr) return absl::OkStatus();
  const std::string job = absl::StrCat("job '", name_, "' spans ", collective_->size(), " nodes");
  if (collective_->rank() != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        job, ", and this gstabd is node ", collective_->rank(), ": ", what,
        " on node 0's gstabd, whose configuration and statistics every node takes at the next "
        "step"));
  }
  if (!gpus_.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        job, " on the CUDA pipeline, whose nodes would not take a change at the same step: ", what,
        " before its workers register their CUDA buffers (or while none is registered)"));
  }
  return absl::OkStatus();
}

absl::Status Job::RegisteredGpuBetas() const {
  // The statistics would have to be re-expressed for the new betas on the GPU, in stream order
  // with the steps queued there (a CPU job's are, at its next step: AlignStatistics).
  return absl::FailedPreconditionError(absl::StrCat(
      "job '", name_,
      "' runs on the CUDA pipeline, where beta1, beta2 and bias_correction cannot change "
      "while its workers' buffers are registered (the statistics are re-expressed for new "
      "betas): change them before the workers register, or after they have all left"));
}

absl::Status Job::UpdateConfig(const v1::PolicyConfig& update, v1::UpdateConfigResponse* response,
                               RuleParams* before) {
  absl::MutexLock lock(&mu_);
  if (before != nullptr) *before = params_;
  // A bad request is said as such on any node. One that changes nothing is answered where the
  // configuration is the job's own (not on a node other than 0, whose configuration may not be
  // the one its next step takes: node 0's).
  absl::StatusOr<RuleParams> merged = MergeConfig(params_, update);
  if (!merged.ok()) return merged.status();
  const bool other_node = collective_ != nullptr && collective_->rank() != 0;
  if (!other_node && SameEffectiveConfig(params_, *merged)) {  // nothing changes: no new version
    *response->mutable_effective_config() = EffectiveConfig(params_);
    response->set_version(config_version_);
    return absl::OkStatus();
  }
  if (absl::Status s = NodeZerosStateOnly("change its configuration"); !s.ok()) return s;
  if (!gpus_.empty() && !SameStabilizerEmas(params_, *merged)) return RegisteredGpuBetas();
  if (!gpus_.empty() && gpus_.multi_rank() && !gpus_.InLockstep()) {
    // Each GPU takes the configuration as its step is enqueued: all of them the same step.
    return absl::AbortedError(absl::StrCat(
        "job '", name_, "''s GPUs are enqueueing a step (some have, some not yet): try again"));
  }
  params_ = *merged;
  RecordConfigChange();
  *response->mutable_effective_config() = config_history_.back().config();
  response->set_version(config_version_);
  return absl::OkStatus();
}

void Job::TakeNodeZerosConfig(const RuleParams& node_zeros, uint32_t node,
                              const std::string& when) {
  params_ = node_zeros;
  RecordConfigChange();
  LOG(WARNING) << "job '" << name_ << "' node " << node << ": took node 0's "
               << "configuration " << when << " (a multi-node job's is node 0's)";
}

void Job::AlignStatistics() {
  if (SameStabilizerEmas(stats_params_, params_)) return;  // every step: no loop over groups
  for (GroupStats& s : stats_) RescaleStabilizerEmas(stats_params_, params_, &s);
  stats_params_ = params_;
}

void Job::RecordConfigChange() {
  ++config_version_;
  v1::ConfigChange change;
  change.set_version(config_version_);
  change.set_effective_step(0);  // set by the next step that runs with it
  *change.mutable_config() = EffectiveConfig(params_);
  config_history_.push_back(std::move(change));
  if (config_history_.size() > kConfigHistory) config_history_.erase(config_history_.begin());
}

void Job::RestoreRendezvous(const v1::RendezvousInfo& rendezvous) {
  if (rendezvous.store_address().empty()) return;  // none, or a checkpoint of an older release
  absl::MutexLock lock(&mu_);
  if (rendezvous_.store_address().empty()) rendezvous_ = rendezvous;
}

void Job::RestoreConfigHistory(
    const google::protobuf::RepeatedPtrField<v1::ConfigChange>& history) {
  if (history.empty()) return;  // a checkpoint of a release before it: the job starts at 1
  uint64_t version = 0;
  for (const v1::ConfigChange& change : history) {
    if (change.version() <= version) {
      LOG(WARNING) << "job '" << name_ << "': its checkpoint's configuration history is not in "
                   << "order (version " << change.version() << " after " << version
                   << "); its versions start again at 1";
      return;
    }
    version = change.version();
  }
  absl::MutexLock lock(&mu_);
  const int from = std::max(0, history.size() - static_cast<int>(kConfigHistory));
  config_history_.assign(history.begin() + from, history.end());
  config_version_ = version;
  if (!google::protobuf::util::MessageDifferencer::Equals(config_history_.back().config(),
                                                          EffectiveConfig(params_))) {
    RecordConfigChange();
  }
}

void Job::GetStats(v1::GetStatsResponse* response) const {
  absl::MutexLock lock(&mu_);
  (void)CopySnapshot();  // the newest finished step's: GetStats never waits for the GPU
  response->set_job(name_);
  response->set_steps(steps_);
  response->set_last_step(last_step_);
  *response->mutable_config() = EffectiveConfig(params_);
  for (const v1::ConfigChange& c : config_history_) *response->add_config_history() = c;
  uint64_t bytes = 0;
  std::set<const void*> regions;
  for (const auto& [rank, w] : workers_) {
    bytes += w->registration.plan.total_bytes;
    for (const auto& m : w->registration.mappings) regions.insert(m.get());
  }
  response->set_registered_bytes(bytes);
  response->set_mapped_regions(static_cast<uint32_t>(regions.size()));
  response->set_local_world_size(local_world_size_);
  response->set_imports_waiting(static_cast<uint32_t>(importing_));
  if (round_open_ && !round_running_) {
    response->set_waiting_step(round_step_);
    for (const auto& [rank, arrival] : arrived_) response->add_arrived_local_ranks(rank);
  }
  for (size_t g = 0; g < group_names_.size(); ++g) {
    GroupStats s = stats_[g];
    RescaleStabilizerEmas(stats_params_, params_, &s);  // as the next step will have them
    v1::GroupStats* out = response->add_groups();
    out->set_group(group_names_[g]);
    out->set_accepted_steps(s.t);
    out->set_m(s.m);
    out->set_v(s.v);
    out->set_norm_mean(s.spike_mean);
    out->set_norm_stddev(std::sqrt(s.spike_var));
    out->set_spikes(s.spikes);
    out->set_non_finite_steps(s.non_finite_steps);
    out->set_diverging(s.diverging != 0);
    out->set_last_norm(last_outcome_[g].norm);
    out->set_last_stabilized_norm(last_outcome_[g].stabilized_norm);
    out->set_last_scale(last_outcome_[g].scale);
  }
}

v1::JobState Job::ExportState(bool with_history) const {
  absl::MutexLock lock(&mu_);
  return ExportStateLocked(with_history);
}

std::optional<v1::JobState> Job::ExportStateWithin(absl::Duration wait, bool with_history) const {
  // Polled: a timed lock of abseil's still waits for the lock itself once its time is up.
  for (const absl::Time deadline = absl::Now() + wait; !mu_.TryLock();) {
    if (absl::Now() >= deadline) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(1));
  }
  v1::JobState state = ExportStateLocked(with_history);
  mu_.Unlock();
  return state;
}

v1::JobState Job::ExportStateLocked(bool with_history) const {
  // While a step runs on the GPU the statistics are an earlier step's: that step is the one
  // the state is at.
  const std::optional<uint64_t> statistics_step = RefreshStatistics();
  v1::JobState state;
  state.set_format_version(kJobStateFormatVersion);
  state.set_job(name_);
  state.set_last_step(statistics_step.value_or(last_step_));
  *state.mutable_config() = EffectiveConfig(params_);
  for (size_t g = 0; g < group_names_.size(); ++g) {
    GroupStats s = stats_[g];
    RescaleStabilizerEmas(stats_params_, params_, &s);  // as the config it is written with
    *state.add_groups() = GroupStateToProto(group_names_[g], s);
  }
  if (with_history) {
    for (const v1::ConfigChange& change : config_history_) *state.add_config_history() = change;
    if (!rendezvous_.store_address().empty()) {
      v1::RendezvousInfo& r = *state.mutable_rendezvous();
      r.set_job(rendezvous_.job());
      r.set_store_address(rendezvous_.store_address());
      r.set_store_started_us(rendezvous_.store_started_us());
      r.set_generation(rendezvous_.generation());
    }
  }
  return state;
}

absl::Status Job::AwaitBetweenSteps(absl::Duration wait) {
  const absl::Time deadline = absl::Now() + wait;
  absl::Status status;
  bool holding = false;
  for (;;) {
    // A round being abandoned tells the other nodes with mu_ released (round_open_ is false
    // by then): an import then would take its refusal's step back from a retried Step.
    const bool round = round_open_ || announcing_ > 0;
    const bool gpu = !gpus_.empty() && !gpus_.multi_rank() && !gpus_.Primary().Idle();
    if (!round && !gpu) break;
    if (shutting_down_) {
      status = StoppingError("gstabd is shutting down: import after it restarts");
      break;
    }
    if (absl::Now() >= deadline) {
      const std::string after = absl::StrCat(" after ", absl::FormatDuration(wait));
      status = absl::FailedPreconditionError(
          round ? absl::StrCat("step ", round_step_, " of job '", name_, "' was still in progress",
                               after,
                               " (its local workers arriving, or its nodes stepping together): "
                               "import between steps")
                : absl::StrCat("step ", last_step_, " of job '", name_,
                               "' was still queued on its GPU", after,
                               " (held at its worker's ready word, or running): import between "
                               "steps, or before the workers register their CUDA buffers"));
      break;
    }
    if (!holding) {
      holding = true;
      ++importing_;  // the job's next step waits: the one in progress is the last before this
    }
    auto ended = [this, round]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return shutting_down_ || (round && !round_open_ && announcing_ == 0);
    };
    if (gpu) {
      mu_.AwaitWithTimeout(absl::Condition(&ended), absl::Microseconds(200));  // polled
    } else {
      mu_.AwaitWithDeadline(absl::Condition(&ended), deadline);
    }
  }
  if (holding) --importing_;
  return status;
}

absl::Status Job::ImportRefusal(const v1::JobState& state, bool with_config,
                                const RuleParams& params) const {
  size_t new_groups = 0;
  for (const v1::GroupState& g : state.groups()) new_groups += group_index_.count(g.name()) == 0;
  if (absl::Status s = CheckGroupCap(new_groups); !s.ok()) return s;
  if (absl::Status s = NodeZerosStateOnly("import its state"); !s.ok()) return s;
  if (collective_ != nullptr && generation_stepped_ && state.last_step() != last_step_) {
    // Every node refuses a step it has passed, and only node 0 would move: back (the others
    // refusing the steps after the state's) or ahead (node 0 refusing the others' next steps).
    return absl::FailedPreconditionError(absl::StrCat(
        "job '", name_, "' spans ", collective_->size(),
        " nodes, which have stepped together to step ", last_step_, ", and this state is at step ",
        state.last_step(),
        ": node 0 alone would move there, and the nodes' next steps would not meet. To resume "
        "the job from it, attach every worker again with a new rendezvous, and import on node 0 "
        "before the first step"));
  }
  if (!gpus_.empty() && gpus_.multi_rank()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job '", name_,
        "''s statistics live on several GPUs stepping together: import them before its "
        "workers register their CUDA buffers, so every GPU starts from them"));
  }
  if (!gpus_.empty()) {
    if (with_config && !SameStabilizerEmas(params, params_)) return RegisteredGpuBetas();
    for (const v1::GroupState& g : state.groups()) {
      if (group_index_.count(g.name()) == 0) {
        return absl::FailedPreconditionError(absl::StrCat(
            "group '", g.name(),
            "' of the state is not registered: a job on the CUDA pipeline imports statistics of "
            "its registered groups only, once they are registered (import before the workers "
            "register their CUDA buffers to bring other groups)"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Job::ImportState(const v1::JobState& state, bool with_config, absl::Duration wait,
                              std::optional<ConfigSwitch>* switched) {
  if (absl::Status s = ValidateJobState(state); !s.ok()) return s;
  // A state without a config (ExportState always writes one) leaves the job's as it is.
  with_config = with_config && state.has_config();
  RuleParams params;
  if (with_config) {
    absl::StatusOr<RuleParams> p = ResolveConfig(state.config());
    if (!p.ok()) {
      return absl::Status(
          p.status().code(),
          absl::StrCat("the imported state's configuration: ", p.status().message(),
                       " (import with keep_config, `gstabctl import --keep_config`, to take its "
                       "statistics alone, keeping the job's configuration)"));
    }
    params = *p;
  }
  absl::MutexLock lock(&mu_);
  // Between steps: a step in progress would overwrite what this writes, and one queued on the
  // GPU would be undone by it (the other groups' statistics here would be the step before it).
  // What refuses the import anyway does so before the wait, and again after it (the wait
  // releases mu_, and the step it waits for moves the job on).
  if (absl::Status s = ImportRefusal(state, with_config, params); !s.ok()) return s;
  if (absl::Status s = AwaitBetweenSteps(wait); !s.ok()) return s;
  if (absl::Status s = ImportRefusal(state, with_config, params); !s.ok()) return s;
  // The statistics are re-expressed (RescaleStabilizerEmas) for the configuration the job goes
  // on with: the imported ones from the configuration they were saved with, the job's others
  // from its own.
  const RuleParams target = with_config ? params : params_;
  RuleParams saved_with = target;
  if (!with_config && state.has_config()) {
    if (absl::StatusOr<RuleParams> saved = ResolveConfig(state.config()); saved.ok()) {
      saved_with = *saved;
    } else {
      // Its statistics are still re-expressed from its betas, if this gstabd can read those.
      std::optional<RuleParams> emas = SavedEmas(state.config().stabilize());
      if (emas.has_value()) saved_with = *emas;
      LOG(WARNING) << "job '" << name_ << "': the imported state's configuration is not one "
                   << "this gstabd takes (" << saved.status().message() << "); its statistics "
                   << (emas.has_value() ? "are taken with its stabilize betas"
                                        : "are taken as the job's configuration's");
    }
  }
  auto imported_group = [&](const v1::GroupState& g) {
    GroupStats s = GroupStateFromProto(g);
    RescaleStabilizerEmas(saved_with, target, &s);
    return s;
  };
  if (!gpus_.empty()) {
    // Every group is registered (checked above). The GPU first: an import it refuses leaves the
    // job as it was. Groups the state lacks keep the GPU's statistics (exact: it is idle).
    RefreshStatistics();
    std::vector<GroupStats> imported = stats_;
    for (GroupStats& s : imported) RescaleStabilizerEmas(stats_params_, target, &s);
    for (const v1::GroupState& g : state.groups()) {
      imported[group_index_.at(g.name())] = imported_group(g);
    }
    if (absl::Status s = gpus_.SetStatistics(imported, state.last_step()); !s.ok()) return s;
    stats_ = std::move(imported);
  } else {
    AlignStatistics();  // stats_params_ is params_ from here
    for (GroupStats& s : stats_) RescaleStabilizerEmas(params_, target, &s);
    for (const v1::GroupState& g : state.groups()) stats_[GroupIndex(g.name())] = imported_group(g);
  }
  if (with_config && !SameEffectiveConfig(params, params_)) {
    const RuleParams before = params_;
    params_ = params;
    RecordConfigChange();
    if (switched != nullptr) *switched = ConfigSwitch{before, params_, config_version_};
  }
  stats_params_ = params_;  // the imported statistics are the configuration's
  groups_ordered_ = false;  // the next first registration orders them (see Register)
  // The imported state defines where the job is: a job resumed from an older checkpoint
  // continues from that checkpoint's step, and one saved before its first step (registered,
  // never stepped) from any step, 0 included.
  last_step_ = state.last_step();
  // (Groups the state lacks keep their counts: a job that stepped them has stepped.)
  have_step_ =
      state.last_step() > 0 ||
      std::any_of(stats_.begin(), stats_.end(), [](const GroupStats& g) { return g.steps > 0; });
  abandoned_step_.reset();
  if (collective_ != nullptr) sync_statistics_ = true;  // every node takes node 0's
  return absl::OkStatus();
}

}  // namespace gstab
