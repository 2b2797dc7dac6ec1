// Daemon: the cap on the tensors one owner's registrations hold, over all its jobs
// (DaemonOptions::max_tensors_per_owner).
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/daemon.h"  // the class whose members these are

namespace gstab {

absl::StatusOr<std::shared_ptr<void>> Daemon::ReserveTensors(const Session& session,
                                                             uint64_t tensors) {
  const std::optional<Principal> owner = session.job->owner();
  const std::string key = owner.has_value() ? owner->ToString() : "";
  // Reserved before the registered tensors are counted: a registration that ends meanwhile is
  // then counted twice (in the sum and in its reservation, read below) rather than not at all,
  // and of two under way at once, the later to reserve counts the other's.
  uint64_t in_flight = 0;
  {
    absl::MutexLock lock(&budget_mu_);
    in_flight = tensors_in_flight_[key] += tensors;
  }
  std::shared_ptr<void> reservation(nullptr, [this, key, tensors](void*) {
    absl::MutexLock lock(&budget_mu_);
    if ((tensors_in_flight_[key] -= tensors) == 0) tensors_in_flight_.erase(key);
  });
  std::vector<std::shared_ptr<Job>> owned;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, job] : jobs_) {
      if (job != nullptr && job->owner() == owner) owned.push_back(job);
    }
  }
  // Each job's count under its own lock, under neither of the daemon's.
  uint64_t registered = 0;
  for (const std::shared_ptr<Job>& job : owned) {
    registered +=
        job == session.job ? job->RegisteredTensors(session.local_rank) : job->RegisteredTensors();
  }
  const uint64_t cap = options_.max_tensors_per_owner;
  if (registered + in_flight <= cap) return reservation;
  return absl::ResourceExhaustedError(absl::StrCat(
      "this registration's ", tensors, " tensors would pass the ", cap, " that ",
      owner.has_value() ? owner->ToString() : std::string("jobs without an owner"),
      " may hold registered at once over all jobs (--max_tensors_per_owner): its jobs' workers "
      "hold ",
      registered, " (this rank's earlier registration aside), and ", in_flight - tensors,
      " more are being registered; detach workers that no longer step, or register fewer, "
      "larger tensors"));
}

}  // namespace gstab
