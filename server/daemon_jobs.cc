// Daemon: the lifetime of jobs on a long-running gstabd (docs/daemon.md, "A job's lifetime"):
// which jobs are in use, retiring idle ones (and the longest idle at the job cap), deleting
// old checkpoints, and the periodic checkpoint itself (forgetting a job: daemon_forget.cc).
#include <algorithm>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/monotonic_clock.h"
#include "glog/logging.h"
#include "server/daemon.h"  // the class whose members these are
#include "server/grpc_status.h"

namespace gstab {
namespace {

// The failed saves of one round of checkpoints: the first one's reason, and every job's name,
// so that the log says which jobs' statistics are stale on disk, not only the first.
class SaveFailures {
 public:
  void Add(const std::string& job, const absl::Status& s) {
    if (first_.ok()) first_ = s;
    jobs_.push_back(job);
  }
  absl::Status Status() const {
    if (jobs_.size() <= 1) return first_;
    constexpr size_t kNamed = 20;
    const std::vector<std::string> named(jobs_.begin() + 1,
                                         jobs_.begin() + std::min(jobs_.size(), kNamed + 1));
    return absl::Status(first_.code(),
                        absl::StrCat(first_.message(), "; the checkpoints of ", jobs_.size() - 1,
                                     " other jobs failed too: ", absl::StrJoin(named, ", "),
                                     jobs_.size() - 1 > kNamed ? ", ..." : ""));
  }

 private:
  absl::Status first_;
  std::vector<std::string> jobs_;
};

}  // namespace
namespace {

// A job that has no group and never stepped (its workers attached and went): no checkpoint.
bool NothingToKeep(const v1::JobState& state) {
  return state.groups_size() == 0 && state.last_step() == 0;
}

// What a checkpoint of `job` keeps: its state, and whose it is.
v1::JobState CheckpointOf(const Job& job) {
  v1::JobState state = job.ExportState(/*with_history=*/true);
  SetOwnerIn(job.owner(), &state);
  return state;
}

// The same, unless the job's lock stays held for `wait` (Job::ExportStateWithin): then nothing.
std::optional<v1::JobState> CheckpointWithin(const Job& job, absl::Duration wait) {
  std::optional<v1::JobState> state = job.ExportStateWithin(wait, /*with_history=*/true);
  if (state.has_value()) SetOwnerIn(job.owner(), &*state);
  return state;
}

// How long a round of checkpoints waits for a job's lock before it saves the other jobs first.
constexpr absl::Duration kBusyJobWait = absl::Milliseconds(200);

}  // namespace

bool Daemon::InUse(const std::shared_ptr<Job>& job) const {
  return pending_.count(job->name()) == 1 || job_sessions_.count(job.get()) == 1;
}

absl::Status Daemon::JobCapReached() const {
  return absl::ResourceExhaustedError(absl::StrCat(
      "this gstabd holds its cap of ", options_.max_jobs,
      " jobs (--max_jobs), and none has been without workers and observers for the lease (",
      absl::FormatDuration(options_.lease), ") yet; try again later"));
}

absl::Status Daemon::OwnerCapReached(const std::optional<Principal>& caller) const {
  if (!caller.has_value() || caller->nameless()) return absl::OkStatus();
  uint32_t owned = 0;
  for (const auto& [name, job] : jobs_) {
    owned += job != nullptr && job->owner() == caller;  // null: the slot of one being made
  }
  if (owned < options_.max_jobs_per_owner) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      caller->ToString(), " already owns ", owned,
      " of the jobs this gstabd holds, the most one owner may (--max_jobs_per_owner), and none "
      "has been idle for a lease to make room: detach or forget one"));
}

void Daemon::UpdateIdle(absl::Time now) {
  std::map<std::string, absl::Time> idle;
  for (const auto& [name, job] : jobs_) {
    if (job_sessions_.count(job.get()) == 1) continue;
    auto known = idle_since_.find(name);
    // A call under way (an attach that may be refused) keeps the job's idle time as it was,
    // rather than restart it when the call ends: a worker refused in a loop would otherwise
    // hold the job past --job_idle_s. Retire (which checks) and MakeRoomFor pass over it meanwhile.
    if (pending_.count(name) == 1) {
      if (known != idle_since_.end()) idle.insert(*known);
      continue;
    }
    idle[name] = known == idle_since_.end() ? now : known->second;
  }
  idle_since_ = std::move(idle);
}

Daemon::Checkpointed::Checkpointed(v1::JobState job_state, absl::Time saved, bool saved_to_disk)
    : state(std::move(job_state)),
      groups(static_cast<uint32_t>(state.groups_size())),
      since(saved),
      on_disk(false) {
  if (saved_to_disk) SavedToDisk();
}

void Daemon::Checkpointed::SavedToDisk() {
  on_disk = true;
  // Freed, not only cleared: a cleared repeated field keeps its elements allocated for reuse,
  // and a retired job's groups (up to 65,536 of them) would stay in memory for good. So are its
  // configuration history and rendezvous (up to 1,024 changes in a checkpoint of gstabd's own
  // making, or an import's), and fields of a newer release: all are read from the file with
  // the groups when the job comes back. Its configuration, owner and step stay, for listings.
  google::protobuf::RepeatedPtrField<v1::GroupState>().Swap(state.mutable_groups());
  google::protobuf::RepeatedPtrField<v1::ConfigChange>().Swap(state.mutable_config_history());
  state.clear_rendezvous();
  state.DiscardUnknownFields();
}

void Daemon::AwaitNotRetiring(const std::string& name) {
  auto done = [this, &name]()
                  ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return retiring_.count(name) == 0; };
  mu_.Await(absl::Condition(&done));
}

bool Daemon::Retire(const std::shared_ptr<Job>& job, const std::string& reason,
                    absl::Time idle_before) {
  const std::string name = job->name();
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(name);
    auto since = idle_since_.find(name);
    if (it == jobs_.end() || it->second != job || InUse(job) || since == idle_since_.end() ||
        since->second > idle_before || retiring_.count(name) == 1) {
      return false;  // attached again, already gone, or being forgotten
    }
    jobs_.erase(it);
    unclaimed_.erase(name);
    idle_since_.erase(since);
    retiring_.insert(name);  // attaches to it wait until its checkpoint is in place
  }
  // No session, attach or removal uses the job, so nothing changes its state now.
  v1::JobState state;
  bool on_disk;
  bool empty;
  {
    absl::MutexLock save(&save_mu_);  // after any periodic save of the job's older state
    state = CheckpointOf(*job);
    empty = NothingToKeep(state);
    // None for the retention either, nor a periodic save's.
    if (empty) {
      if (absl::Status s = store_.Remove(name); !s.ok()) LOG(WARNING) << s;
    }
    // Its file's time is this retirement's also when unchanged: after a restart the retention
    // counts from it, not from the job's last change (it may have stayed attached, idle, for
    // longer than the retention).
    absl::Status s = empty ? absl::OkStatus() : store_.Save(state, /*touch=*/true);
    on_disk = s.ok();
    if (!on_disk) {
      LOG(WARNING) << "job '" << name << "' retired without a checkpoint on disk (the next "
                   << "periodic checkpoint tries again): " << s;
    }
  }
  if (empty) {
    LOG(INFO) << "job '" << name << "' retired (" << reason << ") with nothing to keep: it never "
              << "stepped";
  } else {
    LOG(INFO) << "job '" << name << "' retired at step " << state.last_step() << " (" << reason
              << "); its statistics come back when a worker attaches";
  }
  if (observer_ != nullptr) {
    // Before attaches may go on: a new job of the same name starts its series afresh.
    absl::MutexLock report(&report_mu_);
    observer_->OnRetire(name, reason);
  }
  absl::MutexLock lock(&mu_);
  // Without a state directory the checkpoint lives in memory only, groups and all.
  if (!empty) {
    checkpoints_.insert_or_assign(
        name, Checkpointed(std::move(state), absl::Now(), on_disk && store_.enabled()));
  }
  retiring_.erase(name);
  return true;
}

void Daemon::Unmake(const std::shared_ptr<Job>& job) {
  absl::MutexLock save(&save_mu_);  // no checkpoint of it under way
  absl::MutexLock lock(&mu_);
  auto unclaimed = unclaimed_.find(job->name());
  auto held = jobs_.find(job->name());
  if (unclaimed == unclaimed_.end() || unclaimed->second.job != job || held == jobs_.end() ||
      held->second != job || InUse(job)) {
    return;  // used since, or another attach is under way (it gives the job back if refused)
  }
  if (unclaimed->second.from.has_value()) {
    checkpoints_.insert_or_assign(job->name(), *std::move(unclaimed->second.from));
  }
  unclaimed_.erase(unclaimed);
  jobs_.erase(held);
  idle_since_.erase(job->name());
}

void Daemon::RetireIdleJobs(absl::Time now) {
  if (options_.job_idle == absl::InfiniteDuration()) return;
  std::vector<std::shared_ptr<Job>> idle;
  {
    absl::MutexLock lock(&mu_);
    UpdateIdle(now);
    for (const auto& [name, since] : idle_since_) {
      if (now - since >= options_.job_idle) idle.push_back(jobs_.at(name));
    }
  }
  const std::string reason =
      absl::StrCat("no worker or observer for ", absl::FormatDuration(options_.job_idle));
  for (const std::shared_ptr<Job>& job : idle) Retire(job, reason, now - options_.job_idle);
}

void Daemon::ReportFinishedGpuSteps() {
  if (!options_.cuda) return;
  std::vector<std::shared_ptr<Job>> jobs;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, job] : jobs_) {
      if (job != nullptr) jobs.push_back(job);
    }
  }
  for (const std::shared_ptr<Job>& job : jobs) job->ReportFinishedGpuSteps();
}

void Daemon::DeleteOldCheckpoints(absl::Time now) {
  absl::MutexLock save(&save_mu_);  // not racing Checkpoint's retry of a failed save
  // Which to delete, and why, is decided under the daemon's lock; the files are deleted outside
  // it (an unlink and a folder sync, which a busy disk can hold for seconds, would hold every
  // job's steps), while attaches to those jobs wait (retiring_), so that none restores one (and
  // saves it anew) meanwhile.
  std::vector<std::pair<std::string, std::string>> deleting;
  {
    absl::MutexLock lock(&mu_);
    std::map<std::string, std::vector<std::pair<absl::Time, std::string>>> by_owner;
    for (const auto& [name, c] : checkpoints_) {
      if (now - c.since >= options_.job_retention) {
        deleting.emplace_back(
            name, absl::StrCat("not attached for ", absl::FormatDuration(options_.job_retention)));
      } else if (checkpoints_.size() > options_.max_checkpoints_per_owner) {
        // (No owner can be past its cap with no more checkpoints than the cap in all: the
        // common case, this running every housekeeping tick.)
        const std::optional<Principal> owner = OwnerIn(c.state);
        by_owner[owner.has_value() ? owner->ToString() : ""].emplace_back(c.since, name);
      }
    }
    for (auto& [owner, kept] : by_owner) {
      if (kept.size() <= options_.max_checkpoints_per_owner) continue;
      std::sort(kept.begin(), kept.end(), std::greater<>());  // newest first
      for (size_t i = options_.max_checkpoints_per_owner; i < kept.size(); ++i) {
        deleting.emplace_back(kept[i].second,
                              absl::StrCat(owner.empty() ? "no owner" : owner, " keeps ",
                                           options_.max_checkpoints_per_owner,
                                           " newer ones (--max_checkpoints_per_owner)"));
      }
    }
    for (const auto& [name, why] : deleting) retiring_.insert(name);
  }
  for (const auto& [name, why] : deleting) {
    // Kept when the file stays (a read-only disk): tried again next tick, rather than
    // forgotten here and restored at the next start.
    bool file = false;
    const absl::Status removed = store_.Remove(name, &file);
    if (!removed.ok()) {
      LOG_EVERY_N(WARNING, 60) << removed << " (tried again each second)";
    }
    absl::MutexLock lock(&mu_);
    retiring_.erase(name);
    if (!removed.ok()) continue;
    file = file || !store_.enabled();  // in memory alone: deleted there
    LOG(INFO) << (file ? "deleted the checkpoint of job '" : "dropped the checkpoint of job '")
              << name << "' at step " << checkpoints_.at(name).state.last_step() << ": " << why
              << (file ? "" : " (no file of it to delete)");
    checkpoints_.erase(name);
  }
}

absl::Status Daemon::MakeRoomFor(const std::string& name, const std::optional<Principal>& caller) {
  // A job attached between the choice and its retirement is kept; then choose again, up to 3
  // times. One retired meanwhile by another new job's attach (which chose it too) counts not:
  // that made room, which one of the two takes; the other chooses again.
  for (int kept = 0, turns = 0; kept < 3 && turns < 4096; ++turns) {
    std::shared_ptr<Job> oldest;
    std::string why;
    {
      absl::MutexLock lock(&mu_);
      if (shutting_down_) return StoppingError("gstabd is shutting down");
      if (jobs_.count(name) == 1) return absl::OkStatus();
      // At the owner's cap one of its own jobs goes (which makes room at the node's too).
      const bool owner_full = !OwnerCapReached(caller).ok();
      if (!owner_full && jobs_.size() < options_.max_jobs) return absl::OkStatus();
      const absl::Time now = MonotonicNow();
      UpdateIdle(now);
      // Not a job whose last worker left within the lease: it may still have the results
      // buffer gstabd exports mapped, which goes with the job.
      const absl::Time* first = nullptr;
      for (const auto& [idle_name, since] : idle_since_) {
        const std::shared_ptr<Job>& job = jobs_.at(idle_name);
        if (since > now - options_.lease || job == nullptr || InUse(job) ||
            retiring_.count(idle_name) == 1) {
          continue;  // (one being forgotten stays in jobs_ until its files are gone)
        }
        if (owner_full && job->owner() != caller) continue;
        if (first == nullptr || since < *first) {
          first = &since;
          oldest = job;
        }
      }
      const std::string cap =
          owner_full ? absl::StrCat(caller->ToString(), "'s cap of ", options_.max_jobs_per_owner)
                     : absl::StrCat("the cap of ", options_.max_jobs);
      why = absl::StrCat("making room for job '", name, "' at ", cap, " jobs");
    }
    if (oldest == nullptr) break;
    if (Retire(oldest, why, MonotonicNow() - options_.lease)) continue;
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(oldest->name());
    if (it != jobs_.end() && it->second == oldest && retiring_.count(oldest->name()) == 0) ++kept;
  }
  absl::MutexLock lock(&mu_);
  if (jobs_.count(name) == 1) return absl::OkStatus();
  if (absl::Status s = OwnerCapReached(caller); !s.ok()) return s;
  if (jobs_.size() < options_.max_jobs) return absl::OkStatus();
  return JobCapReached();
}

absl::Status Daemon::Checkpoint() {
  std::vector<std::shared_ptr<Job>> jobs;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, job] : jobs_) {
      if (job != nullptr) jobs.push_back(job);
    }
  }
  absl::MutexLock round(&round_mu_);
  SaveFailures failures;
  // Whether `job` is still to be saved, under save_mu_.
  auto to_save = [this](const std::shared_ptr<Job>& job) {
    absl::MutexLock lock(&mu_);
    // A job retired since the list was taken has saved a newer state than this would.
    auto held = jobs_.find(job->name());
    if (held == jobs_.end() || held->second != job) return false;
    // Not used yet: its checkpoint (if it came from one) is as it was, and it may be given back
    // to it (Unmake).
    if (unclaimed_.count(job->name()) == 1) return false;
    // Its unreadable checkpoint not set aside yet: a save now would be set aside in its place.
    return setting_aside_.count(job->name()) == 0;
  };
  auto write = [&](const v1::JobState& state) {
    if (NothingToKeep(state)) return;
    // A live job's file gets this round's time also when unchanged (the retention after a
    // restart, a stop's included, counts from it).
    if (absl::Status s = store_.Save(state, /*touch=*/true); !s.ok()) failures.Add(state.job(), s);
  };
  // A job whose lock a step holds a while (one of several GPUs enqueuing, in NCCL's waits) is
  // saved after the others, which do not wait for it (a stop's checkpoint may be cut short).
  // False: busy, not saved.
  auto save_job = [&](const std::shared_ptr<Job>& job) {
    absl::MutexLock saving(&save_mu_);
    if (!to_save(job)) return true;
    std::optional<v1::JobState> state = CheckpointWithin(*job, kBusyJobWait);
    if (!state.has_value()) return false;
    write(*state);
    return true;
  };
  // A busy job's export waits for its lock outside save_mu_, which retirements, forgets and
  // attaches at the job cap take meanwhile; it is written if the job is still held as it was
  // (retired or forgotten since, its own save came after this export).
  auto save_busy_job = [&](const std::shared_ptr<Job>& job) {
    {
      absl::MutexLock saving(&save_mu_);
      if (!to_save(job)) return;
    }
    const v1::JobState state = CheckpointOf(*job);
    absl::MutexLock saving(&save_mu_);
    if (to_save(job)) write(state);
  };
  std::vector<std::shared_ptr<Job>> busy;
  for (const auto& job : jobs) {
    if (!save_job(job)) busy.push_back(job);
  }
  // Before the busy jobs, which a step can hold until gstabd's stop gives up on them: retired
  // jobs whose own save failed have their statistics nowhere else.
  SaveRetiredUnsaved(
      [&failures](const std::string& job, const absl::Status& s) { failures.Add(job, s); });
  for (const auto& job : busy) save_busy_job(job);
  return failures.Status();
}

void Daemon::SaveRetiredUnsaved(
    const std::function<void(const std::string& job, const absl::Status&)>& failed) {
  if (!store_.enabled()) return;
  absl::MutexLock save(&save_mu_);
  std::vector<std::string> unsaved;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, c] : checkpoints_) {
      if (!c.on_disk) unsaved.push_back(name);
    }
  }
  // One state copied at a time, under the daemon's lock only for the copy.
  for (const std::string& name : unsaved) {
    v1::JobState state;
    {
      absl::MutexLock lock(&mu_);
      auto c = checkpoints_.find(name);
      if (c == checkpoints_.end() || c->second.on_disk) continue;
      state = c->second.state;
    }
    absl::Status s = store_.Save(state);
    if (!s.ok()) failed(name, s);
    absl::MutexLock lock(&mu_);
    auto c = checkpoints_.find(name);
    if (s.ok() && c != checkpoints_.end() && !c->second.on_disk) c->second.SavedToDisk();
  }
}

}  // namespace gstab
