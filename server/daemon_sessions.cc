// Daemon: its sessions (workers' and observers'), and each job's, so that no call counts a
// job's sessions by scanning every session of the node under mu_ (it holds up to --max_jobs
// times 1,024 local ranks).
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/monotonic_clock.h"
#include "server/daemon.h"  // the class whose members these are

namespace gstab {

absl::StatusOr<Daemon::Session> Daemon::Use(const std::string& token, bool hold) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(token);
  if (token.empty() || it == sessions_.end()) {
    if (absl::Status replaced = Replaced(token); !replaced.ok()) return replaced;
    return absl::UnauthenticatedError(
        "unknown or expired session: attach again (sessions expire after the lease without "
        "calls, and when gstabd restarts)");
  }
  it->second.last_seen = MonotonicNow();
  if (hold) ++pending_[it->second.job->name()];
  return it->second;
}

void Daemon::Unhold(const Session& session) {
  absl::MutexLock lock(&mu_);
  Unpend(session.job);
}

absl::StatusOr<Daemon::Session> Daemon::UseAsWorker(const std::string& token) {
  absl::StatusOr<Session> session = Use(token);
  if (session.ok() && session->observer) {
    return absl::FailedPreconditionError(
        "an observer session cannot register buffers or step; attach as a worker");
  }
  return session;
}

absl::Status Daemon::Replaced(const std::string& token) const {
  auto replaced = replaced_sessions_.find(token);
  if (replaced == replaced_sessions_.end()) return absl::OkStatus();
  return absl::AbortedError(replaced->second);
}

absl::Status Daemon::ReplacedOr(const std::string& token, absl::Status status) {
  if (!absl::IsUnauthenticated(status)) return status;
  absl::MutexLock lock(&mu_);
  absl::Status replaced = Replaced(token);
  return replaced.ok() ? status : replaced;
}

void Daemon::RememberReplaced(const std::string& token, const std::string& job,
                              uint32_t local_rank) {
  replaced_sessions_[token] = absl::StrCat(
      "this session of local rank ", local_rank, " of job '", job,
      "' was replaced: another process attached as that local rank (two processes cannot share "
      "one; check the launcher's local ranks, or detach this one), or this process attached "
      "again and got no answer in time (gstabd took that attach: attach again)");
  replaced_order_.push_back(token);
  if (replaced_order_.size() > kRememberedReplacements) {
    replaced_sessions_.erase(replaced_order_.front());
    replaced_order_.pop_front();
  }
}

std::optional<Daemon::Removal> Daemon::DropSession(const std::string& token,
                                                   const std::string& reason, bool worker_gone) {
  auto it = sessions_.find(token);
  if (it == sessions_.end()) return std::nullopt;
  const Session s = it->second;
  sessions_.erase(it);
  auto of_job = job_sessions_.find(s.job.get());
  if (s.observer) {
    --of_job->second.observers;
  } else {
    of_job->second.workers.erase(s.local_rank);
  }
  if (of_job->second.observers == 0 && of_job->second.workers.empty()) {
    job_sessions_.erase(of_job);
  }
  if (observer_ != nullptr) observer_->OnDetach(s.job->name(), s.local_rank, s.observer, reason);
  if (s.observer) {
    if (!InUse(s.job)) idle_since_.emplace(s.job->name(), MonotonicNow());
    return std::nullopt;
  }
  ++pending_[s.job->name()];  // until Remove is done: the job's final state is not in it yet
  return Removal{s.job, s.local_rank, worker_gone, /*expired=*/false, s.attach, s.id};
}

void Daemon::AddSession(const std::string& token, Session session) {
  JobSessions& of_job = job_sessions_[session.job.get()];
  if (session.observer) {
    ++of_job.observers;
  } else {
    of_job.workers[session.local_rank] = token;
  }
  sessions_[token] = std::move(session);
}

uint32_t Daemon::WorkersOf(const std::shared_ptr<Job>& job) const {
  auto of_job = job_sessions_.find(job.get());
  return of_job == job_sessions_.end() ? 0 : static_cast<uint32_t>(of_job->second.workers.size());
}

uint32_t Daemon::ObserversOf(const std::shared_ptr<Job>& job) const {
  auto of_job = job_sessions_.find(job.get());
  return of_job == job_sessions_.end() ? 0 : of_job->second.observers;
}

const std::string* Daemon::WorkerToken(const std::shared_ptr<Job>& job, uint32_t local_rank) const {
  auto of_job = job_sessions_.find(job.get());
  if (of_job == job_sessions_.end()) return nullptr;
  auto worker = of_job->second.workers.find(local_rank);
  return worker == of_job->second.workers.end() ? nullptr : &worker->second;
}

}  // namespace gstab
