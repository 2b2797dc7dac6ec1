// What gstabd tells the outside about each job: Prometheus metrics, events, and the summaries
// behind ListJobs (counters and recent norms). Fed by the pipeline once per step and by the
// daemon on attach, detach and config changes. Owns no job state the pipeline needs.
//
// Thread-safe.
#pragma once

#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gstab/v1/stabilizer.pb.h"
#include "server/event_bus.h"
#include "server/metrics.h"
#include "server/reserved_names.h"

namespace gstab {

class Observer {
 public:
  // Groups exported one by one per job (the first this many names it shows); the rest are
  // aggregated as group kOtherGroup.
  static constexpr uint32_t kDefaultMaxGroups = 32;

  Observer(MetricsRegistry* registry, EventBus* bus, uint32_t max_groups = kDefaultMaxGroups);

  // `duration`: the daemon's time for the step; nullopt (CUDA) leaves the histogram alone.
  void OnStep(const std::string& job, const v1::StepResponse& step,
              std::optional<absl::Duration> duration);
  void OnAttach(const std::string& job, uint32_t local_rank, bool observer);
  void OnDetach(const std::string& job, uint32_t local_rank, bool observer,
                const std::string& reason);
  // Around a change of `job`'s configuration that this node makes (UpdateConfig, ImportState),
  // from before the job takes it to after OnConfigChange announces it: a step that runs with it
  // meanwhile is not taken for a change made elsewhere (node 0's, taken by this node).
  void ConfigChangeComing(const std::string& job);
  void ConfigChangeDone(const std::string& job);
  // `changes`: what changed, for people ("clip.max_norm 1 (asked: 0.5)", ConfigDifference).
  void OnConfigChange(const std::string& job, uint64_t version, const std::string& policy,
                      const std::string& changes = "");
  void SetWorkers(const std::string& job, uint32_t workers, uint64_t registered_bytes);
  // Starts the record of a job this observer has none of (one restored from its checkpoint,
  // after gstabd's restart or its retirement) from the job's own state: whether it is
  // diverging, so that its next step's event says a change only when there is one.
  void Seed(const std::string& job, bool diverging);
  // After an import into a job this observer has a record of: whether the imported statistics
  // are diverging, before the job's next step says so (its event then says a change only when
  // there is one).
  void SetImported(const std::string& job, bool diverging);
  // Shared-memory objects gstabd maps for all its jobs, and its cap (--max_mappings).
  void SetShmMappings(int mapped, int cap);
  // The daemon let go of `job` (see Daemon::RetireIdleJobs): its series leave /metrics and
  // its summary is forgotten; a JOB_RETIRED event says `reason`. A report of its steps that
  // comes after (a GPU's finished steps, collected before) is dropped, until the job's next
  // attach: it would bring the series back, for good.
  void OnRetire(const std::string& job, const std::string& reason);

  // Fills counters, the last norms and up to `history` recent norms of `job`.
  void Summarize(const std::string& job, uint32_t history, v1::JobSummary* summary) const;

 private:
  static constexpr int kEventGroups = 64;  // groups an event names (the rest are counted)
  // The step a step's results belong to (the CUDA backend answers before its GPU work finishes).
  static uint64_t ResultsStep(const v1::StepResponse& step);
  static v1::Event MakeEvent(v1::EventType type, const std::string& job, uint64_t step);

  struct JobState {
    uint64_t skipped = 0;
    uint64_t spike_steps = 0;
    bool diverging = false;
    double last_norm = 0;
    double last_stabilized = 0;
    std::deque<double> recent;              // job-level norms, oldest first
    std::set<std::string> exported_groups;  // at most max_groups_
    bool aggregated = false;                // the last step had groups past max_groups_
    // The configuration version the job's steps ran with, once a step or a change said it: a
    // step of a newer one that no change announced (a node taking node 0's) is announced.
    uint64_t config_version = 0;
    bool config_known = false;
    // The newest version a change on this node announced, and one a step showed while a change
    // was under way (with its step), announced as node 0's when the change was not it.
    uint64_t announced_version = 0;
    uint64_t held_back_version = 0;
    uint64_t held_back_step = 0;
  };
  bool Retired(const std::string& job) const;
  // A CONFIG_CHANGE event: `version` from step `at` on is node 0's, taken by this node.
  void PublishTakenConfig(const std::string& job, uint64_t version, uint64_t at);
  // OnStep's work, for a job not retired.
  void RecordStep(const std::string& job, const v1::StepResponse& step,
                  std::optional<absl::Duration> duration);
  // A step that applied nothing (StepResponse.not_applied): counted and told (a SKIP event
  // saying why), and nothing else.
  void OnStepNotApplied(const std::string& job, const v1::StepResponse& step);
  void PublishStepEvents(const std::string& job, const v1::StepResponse& step, double norm,
                         bool was_diverging);

  EventBus* const bus_;
  const uint32_t max_groups_;
  MetricFamily* steps_;
  MetricFamily* not_applied_;
  MetricFamily* accepted_;
  MetricFamily* skipped_;
  MetricFamily* spikes_;
  MetricFamily* non_finite_;
  MetricFamily* norm_;
  MetricFamily* stabilized_;
  MetricFamily* scale_;
  MetricFamily* ema_mean_;
  MetricFamily* ema_stddev_;
  MetricFamily* job_norm_;
  MetricFamily* job_stabilized_;
  MetricFamily* norm_histogram_;
  MetricFamily* duration_;
  MetricFamily* diverging_;
  MetricFamily* workers_;
  MetricFamily* bytes_;
  MetricFamily* shm_mappings_;
  MetricFamily* shm_mappings_limit_;
  std::vector<MetricFamily*> per_job_;  // every family above (all have the job label first)

  mutable absl::Mutex mu_;
  std::map<std::string, JobState> jobs_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> announcing_ ABSL_GUARDED_BY(mu_);  // ConfigChangeComing's, per job
  // Jobs retired and not attached since, the newest kRememberedRetired of them (in order).
  static constexpr size_t kRememberedRetired = 1024;
  std::set<std::string> retired_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> retired_order_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gstab
