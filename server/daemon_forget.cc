// Daemon: forgetting a job (ForgetJob, `gstabctl forget`): an operator drops all gstabd holds of
// an idle job, its checkpoint on disk included, so that its next attach starts it afresh.
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "server/daemon.h"  // the class whose members these are
#include "server/grpc_status.h"

namespace gstab {

absl::Status Daemon::ForgetJob(const v1::ForgetJobRequest& request, v1::ForgetJobResponse* response,
                               const std::optional<Principal>& caller) {
  const std::string& name = request.job();
  if (absl::Status s = ValidateJobName(name); !s.ok()) return s;
  // The job, let go of under the daemon's lock and destroyed outside it (its GPU pipelines
  // close then), before an attach of the name may make it anew.
  std::shared_ptr<Job> dropped;
  bool set_aside_only = false;  // nothing held of it, and the caller may delete its files
  {
    absl::MutexLock save(&save_mu_);  // no save of the job under way to bring it back
    absl::ReleasableMutexLock lock(&mu_);
    if (shutting_down_) return StoppingError("gstabd is shutting down");
    auto held = jobs_.find(name);
    const bool checkpoint = checkpoints_.count(name) == 1;
    // Another owner's job is refused as such, whatever state it is in.
    if (held != jobs_.end() || checkpoint) {
      if (absl::Status s = OwnerRefusal(name, OwnerOf(name), caller, "forget it"); !s.ok()) {
        return s;
      }
    }
    if (retiring_.count(name) == 1) {
      return absl::UnavailableError(
          absl::StrCat("job '", name,
                       "' is being retired or forgotten just now: try again "
                       "(`gstabctl status --all` lists it while gstabd still holds it)"));
    }
    if (held != jobs_.end()) {
      const uint32_t sessions = WorkersOf(held->second) + ObserversOf(held->second);
      if (sessions > 0) {
        return absl::FailedPreconditionError(absl::StrCat(
            "job '", name, "' has ", sessions,
            " session(s) attached (workers or observers): stop its workers first (a stopped "
            "worker's session ends within the lease, ",
            absl::FormatDuration(options_.lease), ")"));
      }
      if (pending_.count(name) == 1) {
        return absl::FailedPreconditionError(absl::StrCat(
            "job '", name,
            "' has a call under way (an attach, a step, an import or configuration change, or an "
            "ended session's release): try again"));
      }
    }
    if (held == jobs_.end() && !checkpoint) {
      // Perhaps its set-aside files alone (a checkpoint found garbled at start): they carry no
      // owner, so an operator's forget deletes them, below.
      if (caller.has_value() && !ActsOnEveryJob(*caller)) {
        return absl::NotFoundError(
            absl::StrCat("gstabd holds no job '", name, "' and no checkpoint of it"));
      }
      set_aside_only = true;
    }
    // An attach of the name waits (and a retirement leaves the job alone) for the file's
    // removal below, the set-aside files' deletion, and the observer's retirement of the old
    // series.
    retiring_.insert(name);
    if (!set_aside_only) {
      // The file first, outside the daemon's lock (an unlink and a folder sync, which a hung
      // disk holds for good, would hold every job's steps): should it stay, nothing is
      // forgotten (else it would come back at start).
      lock.Release();
      bool file = false;
      const absl::Status removed = store_.Remove(name, &file);
      absl::MutexLock relock(&mu_);
      if (!removed.ok()) {
        retiring_.erase(name);
        return removed;
      }
      // As it was: no attach or retirement touched it meanwhile, and it had no session.
      auto still = jobs_.find(name);
      response->set_held(still != jobs_.end());
      response->set_checkpoint(checkpoints_.count(name) == 1);
      response->set_checkpoint_file(file);
      if (response->held()) {
        dropped = std::move(still->second);
        jobs_.erase(still);
      }
      unclaimed_.erase(name);  // the same job, if held
      idle_since_.erase(name);
      checkpoints_.erase(name);
    }
  }
  // Outside the daemon's lock (a listing of the folder), while an attach of the name waits
  // (retiring_): one that sets a file aside anew is not undone here.
  response->set_set_aside_files_deleted(store_.RemoveSetAside(name));
  if (set_aside_only) {
    absl::MutexLock lock(&mu_);
    retiring_.erase(name);
    if (response->set_aside_files_deleted() == 0) {
      return absl::NotFoundError(absl::StrCat("gstabd holds no job '", name,
                                              "', no checkpoint of it and no set-aside file"));
    }
    LOG(INFO) << "deleted the " << response->set_aside_files_deleted()
              << " set-aside file(s) of job '" << name
              << "', of which gstabd holds nothing else (an operator's ForgetJob)";
    return absl::OkStatus();
  }
  LOG(INFO) << "forgot job '" << name << "' (an operator's ForgetJob): its next attach starts it "
            << "afresh"
            << (response->set_aside_files_deleted() > 0
                    ? absl::StrCat("; deleted its ", response->set_aside_files_deleted(),
                                   " set-aside file(s)")
                    : "");
  if (observer_ != nullptr) {
    absl::MutexLock report(&report_mu_);
    observer_->OnRetire(name, "forgotten (ForgetJob): its next attach starts it afresh");
  }
  dropped.reset();
  absl::MutexLock lock(&mu_);
  retiring_.erase(name);
  return absl::OkStatus();
}

}  // namespace gstab
