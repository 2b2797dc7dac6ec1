#include "server/observer.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace gstab {
namespace {

constexpr size_t kRecentNorms = 256;

}  // namespace

uint64_t Observer::ResultsStep(const v1::StepResponse& step) {
  return step.results_step() != 0 ? step.results_step() : step.step();
}

v1::Event Observer::MakeEvent(v1::EventType type, const std::string& job, uint64_t step) {
  v1::Event e;
  e.set_type(type);
  e.set_job(job);
  e.set_step(step);
  return e;
}

Observer::Observer(MetricsRegistry* r, EventBus* bus, uint32_t max_groups)
    : bus_(bus), max_groups_(max_groups) {
  const std::vector<std::string> job = {"job"};
  const std::vector<std::string> job_group = {"job", "group"};
  steps_ = r->AddCounter("gstab_steps_total", "Steps gstabd ran for the job.", job);
  accepted_ =
      r->AddCounter("gstab_accepted_steps_total", "Steps whose every norm group was finite.", job);
  skipped_ = r->AddCounter("gstab_skipped_steps_total",
                           "Steps flagged skip because some gradient was NaN or Inf.", job);
  spikes_ = r->AddCounter("gstab_spikes_total",
                          "Steps on which at least one norm group was a spike.", job);
  non_finite_ =
      r->AddCounter("gstab_non_finite_norms_total",
                    "Norm-group norms that were NaN or Inf (kept out of histograms).", job);
  not_applied_ = r->AddCounter(
      "gstab_not_applied_steps_total",
      "CUDA steps that applied nothing: voided on the GPU (a node or GPU of the job lost, the "
      "all-reduce aborted) or the job's nodes disagreed on the step or groups. Not skipped steps.",
      job);
  norm_ = r->AddGauge("gstab_norm", "Last raw L2 norm of the group.", job_group);
  stabilized_ =
      r->AddGauge("gstab_stabilized_norm", "Last L2 norm of the group after scaling.", job_group);
  scale_ = r->AddGauge("gstab_scale", "Last scale applied to the group's gradients.", job_group);
  ema_mean_ =
      r->AddGauge("gstab_norm_ema_mean", "EMA mean of the group's accepted norms.", job_group);
  ema_stddev_ = r->AddGauge("gstab_norm_ema_stddev",
                            "EMA standard deviation of the group's accepted norms.", job_group);
  job_norm_ = r->AddGauge("gstab_job_norm", "Last raw L2 norm over all of the job's groups.", job);
  job_stabilized_ = r->AddGauge("gstab_job_stabilized_norm",
                                "Last L2 norm over all of the job's groups after scaling.", job);
  norm_histogram_ =
      r->AddHistogram("gstab_job_norm_distribution", "Finite raw L2 norms of the job's steps.", job,
                      ExponentialBuckets(1e-6, 10, 16));
  duration_ =
      r->AddHistogram("gstab_step_duration_seconds",
                      "Daemon-side duration of a step (all local workers arrived to done).", job,
                      // 0.625 us (a small CPU step) to 10.5 s: the bounds of earlier releases
                      // (1e-05 up), and two below them, so series across an upgrade still add up.
                      ExponentialBuckets(6.25e-7, 4, 13));
  diverging_ = r->AddGauge("gstab_diverging", "1 while some group of the job is diverging.", job);
  workers_ =
      r->AddGauge("gstab_attached_workers", "Workers attached to the job on this node.", job);
  bytes_ =
      r->AddGauge("gstab_registered_bytes", "Gradient bytes registered by the job's workers.", job);
  per_job_ = {steps_,          accepted_,       skipped_,  spikes_,    non_finite_, not_applied_,
              norm_,           stabilized_,     scale_,    ema_mean_,  ema_stddev_, job_norm_,
              job_stabilized_, norm_histogram_, duration_, diverging_, workers_,    bytes_};
  shm_mappings_ = r->AddGauge("gstab_shm_mappings",
                              "Shared-memory objects gstabd maps for its jobs' workers.", {});
  shm_mappings_limit_ = r->AddGauge("gstab_shm_mappings_limit",
                                    "gstabd's cap on shared-memory objects (--max_mappings).", {});
  r->AddGauge("gstab_build_info", "gstabd build; the value is always 1.", {"version"})
      ->Set({GSTAB_VERSION}, 1);
}

bool Observer::Retired(const std::string& job) const {
  absl::MutexLock lock(&mu_);
  return retired_.count(job) == 1;
}

void Observer::OnStep(const std::string& job, const v1::StepResponse& step,
                      std::optional<absl::Duration> duration) {
  if (Retired(job)) return;
  RecordStep(job, step, duration);
  // Retired meanwhile: what this step set goes with the rest. Under mu_, with the look: an
  // attach of the job again after it (OnAttach) has its series kept.
  absl::MutexLock lock(&mu_);
  if (retired_.count(job) == 0) return;
  jobs_.erase(job);
  for (MetricFamily* family : per_job_) family->RemoveByFirstLabel(job);
}

void Observer::RecordStep(const std::string& job, const v1::StepResponse& step,
                          std::optional<absl::Duration> duration) {
  steps_->Add({job}, 1);
  if (!step.not_applied().empty()) {
    OnStepNotApplied(job, step);
    return;
  }
  (step.skip() ? skipped_ : accepted_)->Add({job}, 1);
  // The first max_groups_ group names a job shows are exported one by one, for good (so the
  // series stay bounded however often it registers new groups); the rest as one aggregate.
  std::vector<bool> exported(step.groups_size());
  bool aggregated = false;
  // Exported groups this step does not have (a registration without them since), and the
  // aggregate when there is none now: their series go rather than stand still at old values,
  // and the groups' places go to others.
  std::vector<std::string> gone;
  bool config_taken = false;  // a newer configuration no change announced here
  {
    absl::MutexLock lock(&mu_);
    JobState& state = jobs_[job];
    if (step.config_version() > state.config_version) {
      config_taken = state.config_known && announcing_.count(job) == 0;
      // While this node changes the configuration, a newer version is held back: the change's
      // own, announced by it, or node 0's meanwhile (this node's change refused), announced when
      // the change is done.
      if (state.config_known && !config_taken) {
        state.held_back_version = step.config_version();
        state.held_back_step = ResultsStep(step);
      }
      state.config_version = step.config_version();
    }
    state.config_known = true;
    std::set<std::string>& names = state.exported_groups;
    size_t present = 0;
    for (int i = 0; i < step.groups_size(); ++i) {
      exported[i] = names.count(step.groups(i).group()) == 1;
      present += exported[i];
    }
    if (present < names.size()) {
      std::set<std::string> here;
      for (const v1::GroupResult& g : step.groups()) here.insert(g.group());
      for (auto it = names.begin(); it != names.end();) {
        if (here.count(*it) == 1) {
          ++it;
        } else {
          gone.push_back(*it);
          it = names.erase(it);
        }
      }
    }
    for (int i = 0; i < step.groups_size(); ++i) {  // new names, while there is room
      if (!exported[i]) {
        exported[i] = names.size() < max_groups_ && names.insert(step.groups(i).group()).second;
      }
      aggregated |= !exported[i];
    }
    if (state.aggregated && !aggregated) gone.push_back(kOtherGroup);
    state.aggregated = aggregated;
  }
  for (const std::string& group : gone) {
    for (MetricFamily* gauge : {norm_, stabilized_, scale_, ema_mean_, ema_stddev_}) {
      gauge->Remove({job, group});
    }
  }
  double sum = 0, stabilized_sum = 0, other = 0, other_stabilized = 0, other_mean = 0, other_sd = 0;
  bool spike = false, non_finite = false;
  for (int i = 0; i < step.groups_size(); ++i) {
    const v1::GroupResult& g = step.groups(i);
    sum += g.norm() * g.norm();
    stabilized_sum += g.stabilized_norm() * g.stabilized_norm();
    spike |= g.spike();
    if (!std::isfinite(g.norm())) {
      non_finite_->Add({job}, 1);
      non_finite = true;
    }
    if (exported[i]) {
      norm_->Set({job, g.group()}, g.norm());
      stabilized_->Set({job, g.group()}, g.stabilized_norm());
      scale_->Set({job, g.group()}, g.scale());
      ema_mean_->Set({job, g.group()}, g.norm_mean());
      ema_stddev_->Set({job, g.group()}, g.norm_stddev());
    } else {
      other += g.norm() * g.norm();
      other_stabilized += g.stabilized_norm() * g.stabilized_norm();
      other_mean += g.norm_mean() * g.norm_mean();
      other_sd += g.norm_stddev() * g.norm_stddev();
    }
  }
  if (aggregated) {
    // Beyond the cap the groups are one: L2 combinations of their norms and statistics.
    norm_->Set({job, kOtherGroup}, std::sqrt(other));
    stabilized_->Set({job, kOtherGroup}, std::sqrt(other_stabilized));
    // A non-finite norm's gradients were zeroed (the step was skipped): scale 0, not the 1 of
    // "no gradient" that NaN > 0 being false would give.
    double other_scale = 1.0;
    if (!std::isfinite(other)) {
      other_scale = other_stabilized == 0 ? 0.0 : NAN;
    } else if (other > 0) {
      other_scale = std::sqrt(other_stabilized / other);
    }
    scale_->Set({job, kOtherGroup}, other_scale);
    ema_mean_->Set({job, kOtherGroup}, std::sqrt(other_mean));
    ema_stddev_->Set({job, kOtherGroup}, std::sqrt(other_sd));
  }
  const double norm = non_finite ? NAN : std::sqrt(sum);
  if (spike) spikes_->Add({job}, 1);
  job_norm_->Set({job}, norm);
  job_stabilized_->Set({job}, std::sqrt(stabilized_sum));
  norm_histogram_->Observe({job}, norm);
  if (duration.has_value()) duration_->Observe({job}, absl::ToDoubleSeconds(*duration));
  diverging_->Set({job}, step.diverging() ? 1 : 0);

  bool was_diverging;
  {
    absl::MutexLock lock(&mu_);
    JobState& s = jobs_[job];
    was_diverging = s.diverging;
    s.diverging = step.diverging();
    s.skipped += step.skip();
    s.spike_steps += spike;
    s.last_norm = norm;
    s.last_stabilized = std::sqrt(stabilized_sum);
    s.recent.push_back(norm);
    if (s.recent.size() > kRecentNorms) s.recent.pop_front();
  }
  if (config_taken) {  // before the step's own events: it ran with it
    PublishTakenConfig(job, step.config_version(), ResultsStep(step));
  }
  PublishStepEvents(job, step, norm, was_diverging);
}

void Observer::SetWorkers(const std::string& job, uint32_t workers, uint64_t registered_bytes) {
  workers_->Set({job}, workers);
  bytes_->Set({job}, static_cast<double>(registered_bytes));
}

void Observer::Seed(const std::string& job, bool diverging) {
  absl::MutexLock lock(&mu_);  // a step's gauge comes after: it finds the record made here
  auto [record, made] = jobs_.try_emplace(job);
  if (!made) return;  // known: its own record is newer
  record->second.diverging = diverging;
  diverging_->Set({job}, diverging ? 1 : 0);
}

void Observer::SetImported(const std::string& job, bool diverging) {
  absl::MutexLock lock(&mu_);
  auto record = jobs_.find(job);
  if (record == jobs_.end()) return;  // none yet: Seed makes it
  record->second.diverging = diverging;
  diverging_->Set({job}, diverging ? 1 : 0);
}

void Observer::SetShmMappings(int mapped, int cap) {
  shm_mappings_->Set({}, mapped);
  shm_mappings_limit_->Set({}, cap);
}

void Observer::OnRetire(const std::string& job, const std::string& reason) {
  {
    // First: a report coming meanwhile adds nothing back. The series go under mu_ too: an attach
    // of the job again (OnAttach) comes wholly before or after.
    absl::MutexLock lock(&mu_);
    jobs_.erase(job);
    if (retired_.insert(job).second) {
      retired_order_.push_back(job);
      if (retired_order_.size() > kRememberedRetired) {
        retired_.erase(retired_order_.front());
        retired_order_.pop_front();
      }
    }
    for (MetricFamily* family : per_job_) family->RemoveByFirstLabel(job);
  }
  v1::Event e = MakeEvent(v1::EVENT_TYPE_JOB_RETIRED, job, 0);
  e.set_detail(reason);
  bus_->Publish(std::move(e));
}

void Observer::Summarize(const std::string& job, uint32_t history, v1::JobSummary* out) const {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job);
  if (it == jobs_.end()) return;
  const JobState& s = it->second;
  out->set_skipped_steps(s.skipped);
  out->set_spike_steps(s.spike_steps);
  out->set_diverging(s.diverging);
  out->set_last_norm(s.last_norm);
  out->set_last_stabilized_norm(s.last_stabilized);
  const size_t n = std::min<size_t>(history, s.recent.size());
  for (size_t i = s.recent.size() - n; i < s.recent.size(); ++i) out->add_recent_norms(s.recent[i]);
}

}  // namespace gstab
