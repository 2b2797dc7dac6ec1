// Job's CPU backend: the round of one step, which every local worker joins with Step and the last
// to arrive runs (RunRound, job_run.cc), a round given up at its deadline, and how a stopping
// gstabd answers the rounds that can no longer complete.
#include <algorithm>
#include <chrono>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/monotonic_clock.h"
#include "server/cross_node.h"
#include "server/grpc_status.h"
#include "server/job.h"

namespace gstab {

absl::Status Job::Step(uint32_t local_rank, uint64_t step, absl::Duration timeout,
                       v1::StepResponse* response, uint32_t ready_value, uint64_t session,
                       absl::Time call_deadline) {
  // Its session's last registration was refused (DropRegistration): why.
  auto registration_refused = [this, local_rank]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto again = register_again_.find(local_rank);
    if (again == register_again_.end()) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat("local rank ", local_rank, " of job '", name_, "': ", again->second));
  };
  bool gpu;
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = CheckSession(local_rank, session); !s.ok()) return s;
    gpu = gpus_.Has(local_rank);
    if (absl::Status s = registration_refused(); !gpu && !s.ok()) return s;
  }
  if (gpu) return StepGpu(local_rank, step, ready_value, session, call_deadline, response);
  WorkerMap snapshot;
  absl::Time given_up = absl::InfiniteFuture();  // the arrivals' earliest call deadline
  size_t num_groups = 0;
  uint64_t my_round = 0;
  {
    absl::MutexLock lock(&mu_);
    // An import waiting for the step in progress goes before the next one opens (for a bounded
    // time); a worker of the open one joins it.
    auto may_go = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return importing_ == 0 || round_open_;
    };
    mu_.Await(absl::Condition(&may_go));
    if (absl::Status s = CheckSession(local_rank, session); !s.ok()) return s;
    // Refused while the import was waited for.
    if (absl::Status s = registration_refused(); !s.ok()) return s;
    // Its own registration: a new session of a restarted worker may step before the old one's
    // removal reaches the job, which takes the registration out of a round the step is in.
    if (workers_.count(local_rank) == 0 || !RegisteredBy(local_rank, session)) {
      return NoBuffers(local_rank);
    }
    if (shutting_down_) return ShuttingDown(step);
    // Refused at once, on every node: across nodes, a node's retried step must not take the
    // round of the step the others wait in the check for, which its worker sends next. At a
    // rendezvous's first step node 0 alone knows the job's last step (the others follow its
    // numbers): it refuses in the step's check, which every node then leaves at once.
    const bool in_check = collective_ != nullptr && !generation_stepped_;
    if (have_step_ && step <= last_step_ && !in_check) {
      return StepNotAfterLast(name_, step, last_step_, false);
    }
    if (abandoned_step_.has_value() && step <= *abandoned_step_) {
      return absl::FailedPreconditionError(
          absl::StrCat("step ", step, " of job '", name_, "' was given up on this node at step ",
                       *abandoned_step_,
                       " (a local worker had detached, or did not step it in time), and "
                       "the job's other nodes skipped it: go on "
                       "from step ",
                       *abandoned_step_ + 1));
    }
    if (round_open_ && round_step_ != step) {
      return absl::FailedPreconditionError(
          absl::StrCat("local rank ", local_rank, " is at step ", step, " but job '", name_,
                       "''s other local workers are at step ", round_step_));
    }
    if (!round_open_) {
      round_open_ = true;
      round_step_ = step;
      round_opened_ = MonotonicNow();
      arrived_.clear();
      ++round_id_;
    }
    if (!arrived_.emplace(local_rank, Arrival{session, call_deadline}).second) {
      return absl::FailedPreconditionError(
          absl::StrCat("local rank ", local_rank, " already called Step(", step, ")"));
    }
    my_round = round_id_;
    if (arrived_.size() < local_world_size_) {
      // A round given up at its deadline is announced on the communicator it began under only
      // (not on a new rendezvous's, installed meanwhile by a restarted job).
      const std::shared_ptr<Collective> began_under = collective_;
      auto finished = [this, my_round]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return finished_round_id_ >= my_round;
      };
      auto everyone_here = [this, my_round]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return finished_round_id_ >= my_round ||
               (round_id_ == my_round && arrived_.size() >= local_world_size_);
      };
      // The deadline is for the other local workers to arrive; once they have, the round's
      // runner is bounded by its own deadlines (the cross-node stage), so wait for it. gstabd
      // shutting down refuses the others' Steps, and a session that has ended (its worker
      // detached, its lease expired, or another attach took its rank) has no answer coming:
      // then waiting on is pointless.
      // Nor is waiting for a local rank whose worker detached (it ended its session: a worker
      // leaving, not one restarting).
      auto detached_missing = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        std::vector<uint32_t> ranks;
        for (const auto& [r, expired] : detached_) {
          if (r < local_world_size_ && arrived_.count(r) == 0) ranks.push_back(r);
        }
        return ranks;
      };
      // This Step was taken back from the round (its session's next registration was refused:
      // DropRegistration), not by the round's end or abandonment.
      auto withdrawn = [this, my_round, local_rank, session]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        if (finished_round_id_ >= my_round || abandoning_round_ == my_round) return false;
        auto mine = arrived_.find(local_rank);
        return round_id_ != my_round || mine == arrived_.end() || mine->second.session != session;
      };
      auto here_or_shutdown = [this, &everyone_here, &detached_missing, &withdrawn, local_rank,
                               session]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return everyone_here() || shutting_down_ || SessionEnded(local_rank, session) ||
               !detached_missing().empty() || withdrawn();
      };
      // A job across nodes waits half as long: its nodes' steps wait for each other as long as
      // the whole timeout, and a node whose workers did not all come tells the others in time.
      const absl::Duration arrival = collective_ != nullptr ? timeout / 2 : timeout;
      mu_.AwaitWithTimeout(absl::Condition(&here_or_shutdown), arrival);
      const bool arrived = everyone_here();
      if (arrived) mu_.Await(absl::Condition(&finished));
      if (!arrived) {
        std::vector<uint32_t> missing;
        for (uint32_t r = 0; r < local_world_size_; ++r) {
          if (arrived_.count(r) == 0) missing.push_back(r);
        }
        const std::vector<uint32_t> detached = detached_missing();
        bool expired = false, left = false;  // of the ranks missing, how they went
        for (uint32_t r : detached) (detached_.at(r) ? expired : left) = true;
        const char* how = !expired ? "detached"
                          : !left  ? "stopped without detaching (their sessions' leases expired: "
                                     "crashed, killed, or frozen)"
                                   : "detached, or stopped without detaching (their sessions' "
                                     "leases expired)";
        // Taken back by its own session's refused registration: answered now, naming why, and
        // across nodes its round is given up as one that ran out would be.
        const bool taken_back = withdrawn();
        const absl::Status refused = registration_refused();
        const std::string late =
            taken_back ? absl::StrCat("step ", step, " of job '", name_, "': local rank ",
                                      local_rank, "'s Step was taken back while it waited (",
                                      refused.ok() ? "its registration went; register it again"
                                                   : refused.message(),
                                      ")")
            : detached.empty()
                ? absl::StrCat("step ", step, " of job '", name_, "': local ranks [",
                               absl::StrJoin(missing, ", "), "] did not call Step within ",
                               absl::FormatDuration(arrival))
                : absl::StrCat("step ", step, " of job '", name_, "' waits for local ranks [",
                               absl::StrJoin(detached, ", "), "], whose workers ", how);
        // This call's arrival goes, unless its worker was removed (the round abandoned) since.
        auto leave = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          auto mine = arrived_.find(local_rank);
          if (round_id_ == my_round && mine != arrived_.end() && mine->second.session == session) {
            arrived_.erase(mine);
            if (arrived_.empty()) round_open_ = false;
          }
        };
        if (absl::Status s = CheckSession(local_rank, session); !s.ok()) {
          leave();
          return s;
        }
        if (shutting_down_) {
          leave();
          return ShuttingDown(step);
        }
        const absl::StatusCode code = taken_back || !detached.empty()
                                          ? absl::StatusCode::kFailedPrecondition
                                          : absl::StatusCode::kDeadlineExceeded;
        if (collective_ == nullptr || collective_ != began_under) {
          // One node (or a new rendezvous since): this worker may come again to the same step.
          leave();
          if (taken_back) return absl::FailedPreconditionError(late);
          if (!detached.empty()) {
            return absl::FailedPreconditionError(absl::StrCat(
                late, ": it is not taken until every local rank attaches, registers and steps it"));
          }
          return absl::DeadlineExceededError(late);
        }
        if (abandoning_round_ == my_round) {  // another waiter of it is telling the nodes
          mu_.Await(absl::Condition(&finished));
          return round_status_;
        }
        if (round_id_ != my_round || round_running_) return absl::Status(code, late);
        // The other nodes' steps wait up to `timeout` from their arrivals, about this round's
        // first: what is left of it, to hear the refusal. No less than half of it, as when the
        // arrival wait ran out; more when a detached rank cut that wait short.
        const absl::Duration telling =
            std::max(timeout - (MonotonicNow() - round_opened_), timeout - arrival);
        return AbandonRound(step, my_round, late, telling, code);
      }
      // A worker removed while the round ran on it has no answer to wait for: its session has
      // ended.
      if (absl::Status s = CheckSession(local_rank, session); !s.ok()) return s;
      *response = round_result_;
      return RoundAnswer(local_rank, step, round_status_, round_unscaled_);
    }
    for (const auto& [r, arrival] : arrived_) {
      auto it = workers_.find(r);
      if (it != workers_.end()) snapshot.emplace(r, it->second);
      given_up = std::min(given_up, arrival.call_deadline);
    }
    num_groups = group_names_.size();
    round_running_ = true;
    // A given-up round's notice goes to the other nodes before this round's check does.
    auto quiet = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return announcing_ == 0; };
    mu_.Await(absl::Condition(&quiet));
  }

  // By a monotonic clock: the wall clock, stepped by NTP mid-round, would report a negative or
  // huge duration.
  const auto start = std::chrono::steady_clock::now();
  v1::StepResponse result;
  bool counted = false;
  absl::Status status;
  std::set<uint32_t> unscaled;
  {
    absl::MutexLock using_collective(&collective_use_);  // after a given-up round's notice
    status = RunRound(step, snapshot, num_groups, timeout, given_up, &result, &counted, &unscaled);
  }
  const absl::Duration duration = absl::FromChrono(std::chrono::steady_clock::now() - start);
  {
    absl::MutexLock lock(&mu_);
    round_result_ = result;
    round_status_ = status;
    round_unscaled_ = unscaled;
    finished_round_id_ = my_round;
    round_open_ = false;
    round_running_ = false;
  }
  // A step the statistics took is reported (metrics, events) also when scaling it failed after.
  if (counted && on_step_) on_step_(result, duration);
  *response = std::move(result);
  return RoundAnswer(local_rank, step, status, unscaled);
}

absl::Status Job::RoundAnswer(uint32_t local_rank, uint64_t step, const absl::Status& status,
                              const std::set<uint32_t>& unscaled) const {
  if (!status.ok() || unscaled.count(local_rank) == 0) return status;
  return absl::FailedPreconditionError(absl::StrCat(
      "step ", step, " of job '", name_, "' counted in the statistics, but local rank ", local_rank,
      "'s gradients were not scaled: its registration went while the step waited "
      "for the other nodes (it detached, or a registration replacing it was refused): register "
      "the gradients again"));
}

absl::Status Job::AbandonRound(uint64_t step, uint64_t round, const std::string& late,
                               absl::Duration budget, absl::StatusCode code) {
  // A late worker's Step of it is refused from now; every waiter of the round hears the same,
  // once the other nodes have been told (or telling them has failed).
  const absl::Status given_up = absl::Status(
      code, absl::StrCat(late, "; the job's other nodes are told to skip it: go on from step ",
                         step + 1));
  round_open_ = false;
  arrived_.clear();
  abandoned_step_ = step;
  abandoning_round_ = round;
  // The other nodes wait in the step's check: told of the refusal there, they leave the step
  // at once with their communicator intact (rather than wait it out and break it). One use of
  // the collective at a time: a next round of this node waits for this.
  std::shared_ptr<Collective> collective = collective_;
  const size_t groups = group_names_.size();
  std::vector<int> reduction(group_reduction_.begin(), group_reduction_.begin() + groups);
  ++announcing_;  // a next round's runner waits for it
  mu_.Unlock();
  absl::Status told;
  {
    absl::MutexLock using_collective(&collective_use_);
    (void)RefuseAcrossNodes(collective, step, StepCheck(), budget, reduction, given_up, &told);
  }
  mu_.Lock();
  --announcing_;
  absl::Status outcome = given_up;
  if (!absl::IsAborted(told)) {  // ABORTED: every node saw the refusal
    constexpr char kAgain[] = "attach every worker again with a new rendezvous";
    outcome = absl::Status(
        code,
        absl::StrCat(late, "; telling the job's other nodes failed too (", told.message(),
                     "), which breaks their communicator",
                     absl::StrContains(told.message(), kAgain) ? "" : absl::StrCat(": ", kAgain)));
  }
  // Notices of two abandoned rounds may end in either order: the newer round's stands.
  if (round >= finished_round_id_) {
    round_status_ = outcome;
    round_result_ = v1::StepResponse();
    finished_round_id_ = round;
  }
  // A later round abandoned while this one's notice went keeps its own mark.
  if (abandoning_round_ == round) abandoning_round_.reset();
  return outcome;
}

void Job::BeginShutdown() {
  absl::MutexLock lock(&mu_);
  shutting_down_ = true;
}

absl::Status Job::ShuttingDown(uint64_t step) const {
  return StoppingError(absl::StrCat("gstabd is shutting down; step ", step, " of job '", name_,
                                    "' was not taken: attach again after it restarts"));
}

}  // namespace gstab
