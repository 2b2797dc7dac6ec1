// Observer: the events it publishes (skips, spikes, divergence, attaches and detaches,
// configuration changes) on the event bus.
#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "server/observer.h"  // the class whose members these are

namespace gstab {

void Observer::OnStepNotApplied(const std::string& job, const v1::StepResponse& step) {
  // Nothing was measured: no norm, gauge or divergence changes, and neither a skip for
  // non-finite gradients (alerts take those for NaN/Inf) nor a non-finite norm; an event, as
  // the worker's optimizer skips it.
  not_applied_->Add({job}, 1);
  v1::Event skip = MakeEvent(v1::EVENT_TYPE_SKIP, job, ResultsStep(step));
  skip.set_norm(NAN);
  skip.set_detail(absl::StrCat("nothing applied: ", step.not_applied()));
  bus_->Publish(std::move(skip));
}

void Observer::PublishStepEvents(const std::string& job, const v1::StepResponse& step, double norm,
                                 bool was_diverging) {
  const uint64_t at = ResultsStep(step);
  v1::Event spike = MakeEvent(v1::EVENT_TYPE_SPIKE, job, at);
  v1::Event skip = MakeEvent(v1::EVENT_TYPE_SKIP, job, at);
  v1::Event diverging = MakeEvent(
      step.diverging() ? v1::EVENT_TYPE_DIVERGENCE_START : v1::EVENT_TYPE_DIVERGENCE_END, job, at);
  for (v1::Event* e : {&spike, &skip, &diverging}) e->set_norm(norm);
  // An event names at most kEventGroups groups and counts the rest: a job of thousands of
  // groups would otherwise make every event (and the history and queues holding them) huge.
  // Its z is the largest of the groups it concerns (0 for a skip's non-finite ones).
  auto concerns = [](v1::Event* e, const v1::GroupResult& g) {
    if (e->groups_size() < kEventGroups) {
      e->add_groups(g.group());
    } else {
      e->set_more_groups(e->more_groups() + 1);
    }
    if (std::isfinite(g.z())) e->set_z(std::max(e->z(), g.z()));
  };
  // A skip names the groups that skipped the step: the non-finite ones, where there are (the
  // others, finite, were skipped with them).
  const bool non_finite =
      std::any_of(step.groups().begin(), step.groups().end(),
                  [](const v1::GroupResult& g) { return !std::isfinite(g.norm()); });
  for (const v1::GroupResult& g : step.groups()) {
    if (g.spike()) concerns(&spike, g);
    if (g.skipped() && (!non_finite || !std::isfinite(g.norm()))) concerns(&skip, g);
    if (g.diverging()) concerns(&diverging, g);
  }
  if (step.statistics_rolled_back() > 0) {  // before this step's own events, which follow it
    v1::Event rolled_back = MakeEvent(v1::EVENT_TYPE_STATISTICS_ROLLED_BACK, job, at);
    rolled_back.set_norm(norm);
    rolled_back.set_detail(absl::StrCat(
        "took node 0's statistics at a new rendezvous; they counted up to ",
        step.statistics_rolled_back(),
        " steps fewer than this node's (node 0 resumed from an older state: its gstabd restarted "
        "from an older checkpoint or none, or it imported one): this node's statistics of those "
        "steps are gone"));
    bus_->Publish(std::move(rolled_back));
  }
  if (spike.groups_size() > 0) bus_->Publish(std::move(spike));
  if (skip.groups_size() > 0) bus_->Publish(std::move(skip));
  if (step.diverging() != was_diverging) bus_->Publish(std::move(diverging));
}

void Observer::OnAttach(const std::string& job, uint32_t local_rank, bool observer) {
  {
    absl::MutexLock lock(&mu_);
    if (retired_.erase(job) == 1) {
      retired_order_.erase(std::find(retired_order_.begin(), retired_order_.end(), job));
    }
  }
  // Counters exist from the job's first attach, at 0, so rates and alerts see them start.
  for (MetricFamily* counter : {steps_, accepted_, skipped_, spikes_, non_finite_, not_applied_}) {
    counter->Add({job}, 0);
  }
  v1::Event e = MakeEvent(v1::EVENT_TYPE_ATTACH, job, 0);
  e.set_detail(observer ? std::string("observer") : absl::StrCat("local rank ", local_rank));
  bus_->Publish(std::move(e));
}

void Observer::OnDetach(const std::string& job, uint32_t local_rank, bool observer,
                        const std::string& reason) {
  v1::Event e = MakeEvent(v1::EVENT_TYPE_DETACH, job, 0);
  e.set_detail(observer ? absl::StrCat("observer: ", reason)
                        : absl::StrCat("local rank ", local_rank, ": ", reason));
  bus_->Publish(std::move(e));
}

void Observer::ConfigChangeComing(const std::string& job) {
  absl::MutexLock lock(&mu_);
  ++announcing_[job];
}

void Observer::ConfigChangeDone(const std::string& job) {
  uint64_t version = 0;
  uint64_t at = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = announcing_.find(job);
    if (it == announcing_.end() || --it->second > 0) return;
    announcing_.erase(it);
    auto state = jobs_.find(job);
    if (state == jobs_.end() || state->second.held_back_version == 0) return;
    // Not the version a change here announced: node 0's, taken meanwhile.
    if (state->second.held_back_version > state->second.announced_version) {
      version = state->second.held_back_version;
      at = state->second.held_back_step;
    }
    state->second.held_back_version = 0;
  }
  if (version > 0) PublishTakenConfig(job, version, at);
}

void Observer::PublishTakenConfig(const std::string& job, uint64_t version, uint64_t at) {
  v1::Event e = MakeEvent(v1::EVENT_TYPE_CONFIG_CHANGE, job, at);
  e.set_detail(absl::StrCat("version ", version, " from step ", at,
                            " on: node 0's, taken by this node (a job across nodes runs node "
                            "0's configuration)"));
  bus_->Publish(std::move(e));
}

void Observer::OnConfigChange(const std::string& job, uint64_t version, const std::string& policy,
                              const std::string& changes) {
  {
    absl::MutexLock lock(&mu_);
    if (auto it = jobs_.find(job); it != jobs_.end()) {
      // Its steps from now on are not announced again.
      it->second.config_version = std::max(it->second.config_version, version);
      it->second.announced_version = std::max(it->second.announced_version, version);
    }
  }
  v1::Event e = MakeEvent(v1::EVENT_TYPE_CONFIG_CHANGE, job, 0);
  e.set_detail(absl::StrCat("version ", version, ": policy ", policy,
                            changes.empty() ? "" : "; changed: ", changes));
  bus_->Publish(std::move(e));
}

}  // namespace gstab
