// Job: its workers' sessions: which session's registration and Step are whose, a worker's
// leaving (detached, expired, replaced), and a Step taken back from the open round.
#include <algorithm>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/job.h"

namespace gstab {

void Job::WithdrawArrival(uint32_t local_rank, uint64_t first, uint64_t last) {
  auto arrival = arrived_.find(local_rank);
  if (!round_open_ || round_running_ || arrival == arrived_.end() ||
      arrival->second.session < first || arrival->second.session > last) {
    return;
  }
  arrived_.erase(arrival);
  if (arrived_.empty()) round_open_ = false;
}

void Job::DropRegistration(uint32_t local_rank, uint64_t session, const absl::Status& why) {
  absl::MutexLock lock(&mu_);
  if (SessionEnded(local_rank, session)) return;
  // The rank's newest session from here, as a registration would make it: an older session's
  // late calls, and its removal reaching the job after this (a replaced worker's), neither step
  // nor take this refusal's reason away.
  if (session != 0) {
    uint64_t& newest = newest_session_[local_rank];
    newest = std::max(newest, session);
  }
  const bool had = workers_.count(local_rank) != 0 || gpus_.Has(local_rank);
  WithdrawArrival(local_rank, 0, session);  // its Step in the open round goes with it
  if (gpus_.Has(local_rank)) {
    EndGpuGeneration(absl::StrCat("local rank ", local_rank, "'s registration was refused"));
  }
  EraseWorker(local_rank);
  if (!had && register_again_.count(local_rank) == 0) return;  // "has no buffers" says it all
  register_again_[local_rank] =
      absl::StrCat("its last registration was refused (", why.message(),
                   "), and its earlier one went with it: register its gradients again before Step");
}

bool Job::SessionEnded(uint32_t local_rank, uint64_t session) const {
  auto newest = newest_session_.find(local_rank);
  return session != 0 && newest != newest_session_.end() && session < newest->second;
}

absl::Status Job::NoBuffers(uint32_t local_rank) const {
  return absl::FailedPreconditionError(
      absl::StrCat("local rank ", local_rank, " of job '", name_,
                   "' has no buffers of this session's: register its gradients (RegisterBuffers: "
                   "gstab_register_arena, register_arena) before Step"));
}

bool Job::RegisteredBy(uint32_t local_rank, uint64_t session) const {
  auto newest = newest_session_.find(local_rank);
  return session == 0 || (newest != newest_session_.end() && newest->second == session);
}

absl::Status Job::CheckSession(uint32_t local_rank, uint64_t session) const {
  if (!SessionEnded(local_rank, session)) return absl::OkStatus();
  return absl::UnauthenticatedError(absl::StrCat(
      "this session of local rank ", local_rank, " of job '", name_,
      "' has ended (it detached, its lease expired, or the rank attached again): attach again"));
}

std::vector<ShmObject> Job::RemoveWorker(uint32_t local_rank, bool gone, uint64_t session,
                                         std::optional<uint64_t> attach, bool expired) {
  GpuReports finished;  // a clean detach's last steps on the GPU, reported once mu_ is released
  std::vector<ShmObject> objects =
      RemoveWorkerUnderLock(local_rank, gone, session, attach, expired, &finished);
  ReportGpuSteps(finished);
  return objects;
}

std::vector<ShmObject> Job::RemoveWorkerUnderLock(uint32_t local_rank, bool gone, uint64_t session,
                                                  std::optional<uint64_t> attach, bool expired,
                                                  GpuReports* finished) {
  absl::MutexLock lock(&mu_);
  // Its Step in the open round, if it made one, goes with it (a restarted worker's registration
  // follows).
  WithdrawArrival(local_rank, 0, session == 0 ? UINT64_MAX : session);
  if (session != 0) {
    uint64_t& newest = newest_session_[local_rank];
    if (session < newest) return {};  // a newer session has registered since
    newest = session + 1;             // and this one may register no more
  }
  if (gpus_.Has(local_rank)) {  // the communicator cannot go on without it
    EndGpuGeneration(absl::StrCat("local rank ", local_rank, " left"),
                     gone ? std::optional<uint32_t>(local_rank) : std::nullopt, finished);
  }
  register_again_.erase(local_rank);
  cuda_devices_.erase(local_rank);
  std::vector<ShmObject> objects;
  if (auto w = workers_.find(local_rank); w != workers_.end()) {
    for (const ShmMapping* m : w->second->registration.host_objects) objects.push_back(m->object());
    EraseWorker(local_rank);
  }
  // A rank that attached again since this session did (a restarted worker's attach can come
  // before the old session's detach or expiry reaches the job) is not waited on as gone.
  if (!attach.has_value() || Attaches(local_rank) == *attach) {
    if (!gone) {
      detached_[local_rank] = false;
    } else if (expired) {
      detached_[local_rank] = true;
    }
  }
  if (workers_.empty()) detached_.clear();
  return objects;
}

void Job::AwaitRoundOf(uint32_t local_rank, absl::Duration wait) const {
  absl::MutexLock lock(&mu_);
  // A running round keeps its arrivals (withdrawn only from a round not yet running).
  if (!round_running_ || arrived_.count(local_rank) == 0) return;
  const uint64_t running = round_id_;
  auto ended = [this, running]()
                   ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return finished_round_id_ >= running; };
  mu_.AwaitWithTimeout(absl::Condition(&ended), wait);
}

uint64_t Job::Attaches(uint32_t local_rank) const {
  absl::MutexLock lock(&attaches_mu_);
  auto it = attaches_.find(local_rank);
  return it == attaches_.end() ? 0 : it->second;
}

uint64_t Job::WorkerAttached(uint32_t local_rank) {
  uint64_t attach;
  {
    absl::MutexLock lock(&attaches_mu_);
    attach = ++attaches_[local_rank];
  }
  absl::MutexLock lock(&mu_);
  detached_.erase(local_rank);
  return attach;
}

void Job::EraseWorker(uint32_t local_rank) {
  auto w = workers_.find(local_rank);
  if (w == workers_.end()) return;
  w->second->removed.store(true);
  workers_.erase(w);
}

}  // namespace gstab
