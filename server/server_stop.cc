// Server's background threads (sessions' leases, idle jobs, checkpoints) and its stop: the drain,
// gRPC's shutdown, and the last checkpoint.
#include <malloc.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/monotonic_clock.h"
#include "glog/logging.h"
#include "server/local_work.h"
#include "server/server.h"
#include "server/stderr_log.h"
#include "server/stop_limit.h"

namespace gstab {
namespace {

// How long gRPC's shutdown lets calls finish before it cancels them: enough for the answers of
// calls already ended (a drained step's "shutting down") to reach their clients on a loaded
// machine, where 100 ms was seen to cut one off.
constexpr absl::Duration kAnswerGrace = absl::Seconds(1);
// How long a stop waits for gRPC's calls to end before it shuts their connections down.
constexpr absl::Duration kStuckCallsGrace = absl::Seconds(2);
// And then for calls still running (a step in Gloo's exchange with other nodes, which nothing
// here can end before its step timeout) before it exits without them, once no step is doing
// local work (LocalWork).
constexpr absl::Duration kStuckStepsGrace = absl::Seconds(3);
// How long a stop whose drain ran out waits for the local work under way (a CPU step's rule and
// scaling take milliseconds) before it cancels the calls left.
constexpr absl::Duration kCloseLocalWorkWait = absl::Seconds(2);

}  // namespace

void Server::Housekeeping() {
  const absl::Duration tick = std::min(options_.daemon.lease / 4, absl::Seconds(1));
  while (!stopping_.WaitForNotificationWithTimeout(tick)) {
    daemon_->ExpireSessions(MonotonicNow());
    daemon_->ReportFinishedGpuSteps();
    daemon_->ReportShmMappings();
    service_->EndStalledStreams(MonotonicNow());
  }
}

void Server::StateKeeping() {
  const absl::Duration tick = std::min(options_.daemon.lease / 4, absl::Seconds(1));
  // Spans by the monotonic clock; the checkpoints' ages (kept across restarts) by the wall's.
  absl::Time next_checkpoint = MonotonicNow() + options_.checkpoint_interval;
  while (!stopping_.WaitForNotificationWithTimeout(tick)) {
    daemon_->RetireIdleJobs(MonotonicNow());
    daemon_->DeleteOldCheckpoints(absl::Now());
    if (MonotonicNow() >= next_checkpoint) {
      (void)Checkpoint();
      next_checkpoint = MonotonicNow() + options_.checkpoint_interval;
      // Memory freed since (a burst of large requests, checkpoints' buffers) goes back to the
      // system: the allocator would otherwise keep it, and gstabd's RSS would show its peak.
      malloc_trim(0);
    }
  }
}

absl::Status Server::Stop(absl::Time deadline, std::function<int()> exit_code) {
  if (grpc_server_ == nullptr) return absl::OkStatus();
  LOG(INFO) << "gstabd stopping: draining in-flight steps";
  // Whatever holds it (a GPU step in NCCL's waits, a state disk that no longer answers), the
  // stop ends before the supervisor's kill would, which keeps the node without a gstabd as long.
  const StopLimit limit(options_.stop_limit, [this, exit_code] {
    LOG(ERROR) << "gstabd's stop has run " << absl::FormatDuration(options_.stop_limit)
               << " (--stop_limit_s; a GPU step held in NCCL's waits, or a state disk that does "
                  "not answer, most likely): gstabd exits without finishing it, nor its final "
                  "checkpoint";
    StderrLog::FlushInstalled(absl::Seconds(2));  // _exit runs no destructor
    const int code = exit_code();
    _exit(code != 0 ? code : 1);
  });
  grpc_server_->GetHealthCheckService()->SetServingStatus(false);
  if (unix_listener_ != nullptr) unix_listener_->Stop();  // no new connections; removes the file
  if (health_listener_ != nullptr) health_listener_->Stop();
  daemon_->BeginShutdown();
  if (!daemon_->DrainSteps(deadline)) {
    // A round still waiting for another node can hold its call (and the wait for the server
    // below) past Kubernetes' grace period: the statistics are saved now, and again at the end.
    LOG(WARNING) << "steps still in flight at the deadline; checkpointing now";
    (void)Checkpoint();
    // From now on no step begins its rule or its scaling: a Step the shutdown below cancels has
    // then done all of it or none, as its client reads in its progress word. A GPU step in
    // NCCL may hold local work longer; it is not waited for past this.
    for (const absl::Time until = absl::Now() + kCloseLocalWorkWait;
         !LocalWork::Close() && absl::Now() < until;) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    // Such a round may wait in a rendezvous store, this node's or another's, for nodes that
    // never come (up to the step timeout): those waits end now, and the round with them. This
    // gstabd's calls are marked cancelled first, so that a call its own closed store answers is
    // known as the stop's.
    daemon_->CancelStoreCalls();
    if (peer_server_ != nullptr) daemon_->rendezvous_store()->Close();
  }
  // CUDA steps the GPU has finished since the housekeeping last looked: their metrics and
  // events, before the event streams end (not waited for: one still on the GPU goes unreported).
  daemon_->ReportFinishedGpuSteps();
  events_.Close();  // ends WatchEvents streams, after the drained steps' events
  // The steps have finished (or were ended above); idle connections need no grace period. But
  // an event stream whose reader stopped reading (a suspended `gstabctl events --follow`) holds
  // its handler in a write that no cancellation ends, and the shutdown waits for every handler:
  // past a grace period the socket's connections are shut down under gRPC.
  absl::Notification shut_down;
  std::thread unstick([&] {
    if (shut_down.WaitForNotificationWithTimeout(kStuckCallsGrace)) return;
    int shut = unix_listener_ != nullptr ? unix_listener_->ShutdownConnections() : 0;
    if (health_listener_ != nullptr) shut += health_listener_->ShutdownConnections();
    LOG(WARNING) << "calls still running " << absl::FormatDuration(kStuckCallsGrace)
                 << " after the drain (a step waiting for other nodes, or a client that stopped "
                 << "reading its event stream): "
                 << "the socket's open connections (" << shut << ") are shut down";
    if (shut_down.WaitForNotificationWithTimeout(kStuckStepsGrace)) return;
    // A step in a cross-node exchange holds its handler, and gRPC's wait for it, until the
    // step timeout (a minute by default, past Kubernetes' grace period), with the state folder
    // locked against this gstabd's replacement. Its statistics are saved; the process ends,
    // but not while a step runs its kernels or rule (it would be counted half applied).
    while (!LocalWork::Close()) {
      if (shut_down.WaitForNotificationWithTimeout(absl::Milliseconds(100))) return;
    }
    const absl::Status saved = Checkpoint(/*final=*/true);
    LOG(WARNING) << "calls still running "
                 << absl::FormatDuration(kStuckCallsGrace + kStuckStepsGrace)
                 << " after the drain (a step waiting in an exchange with other nodes until its "
                 << "step timeout, or a client over --listen that stopped reading its event "
                 << "stream): gstabd exits without them" << (saved.ok() ? Checkpointed() : "");
    StderrLog::FlushInstalled(absl::Seconds(2));  // _exit runs no destructor
    const int code = exit_code();
    _exit(code != 0 ? code : saved.ok() ? 0 : 1);
  });
  grpc_server_->Shutdown(absl::ToChronoTime(absl::Now() + kAnswerGrace));
  grpc_server_->Wait();
  shut_down.Notify();
  unstick.join();
  grpc_server_.reset();
  if (peer_server_ != nullptr) {
    daemon_->rendezvous_store()->Close();  // its waits would hold up the shutdown
    peer_server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Milliseconds(100)));
    peer_server_.reset();
  }
  stopping_.Notify();
  if (housekeeping_.joinable()) housekeeping_.join();
  if (state_keeping_.joinable()) state_keeping_.join();
  absl::Status s = Checkpoint(/*final=*/true);
  // After the checkpoint: stopping the metrics server waits for its open connections (each
  // read up to 2 s), which anyone who reaches the port could hold open.
  http_.reset();
  LOG(INFO) << "gstabd stopped" << (s.ok() ? Checkpointed() : "");
  return s;
}

absl::Status Server::Checkpoint(bool final) {
  absl::Status s = daemon_->Checkpoint();
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&checkpoint_log_mu_);
  if (s.ok()) {
    // Without --state_dir nothing was written: the gauge stays 0.
    if (!options_.daemon.state_dir.empty()) {
      checkpoint_succeeded_->Set({}, absl::ToDoubleSeconds(now - absl::UnixEpoch()));
    }
    if (failing_) LOG(INFO) << "checkpoints are written again";
    failing_ = false;
    failures_unlogged_ = 0;
    return s;
  }
  checkpoint_failures_->Add({}, 1);
  if (failing_ && now - failure_logged_ < kFailureLogEvery && !final) {
    ++failures_unlogged_;
    return s;
  }
  LOG(ERROR) << s
             << (failures_unlogged_ > 0
                     ? absl::StrCat(" (", failures_unlogged_,
                                    " more failed since the last line about them)")
                     : "");
  failing_ = true;
  failure_logged_ = now;
  failures_unlogged_ = 0;
  return s;
}

}  // namespace gstab
