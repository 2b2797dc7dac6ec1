// Daemon: a job's statistics and configuration through one of its sessions (a worker's, or an
// observer's such as gstabctl's): GetStats, UpdateConfig, ExportState and ImportState. Those
// that change or export the state hold the job (Use's `hold`): one retired meanwhile would
// checkpoint the state from before a change, which would then be lost.
#include <optional>
#include <string>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "core/config.h"
#include "glog/logging.h"
#include "server/daemon.h"  // the class whose members these are
#include "server/state_codec.h"

namespace gstab {

namespace {

// Brackets a change of a job's configuration that this node makes, for the observer
// (Observer::ConfigChangeComing): from before the job takes it to after it is announced.
class ConfigAnnouncement {
 public:
  ConfigAnnouncement(Observer* observer, std::string job)
      : observer_(observer), job_(std::move(job)) {
    if (observer_ != nullptr) observer_->ConfigChangeComing(job_);
  }
  ~ConfigAnnouncement() {
    if (observer_ != nullptr) observer_->ConfigChangeDone(job_);
  }
  ConfigAnnouncement(const ConfigAnnouncement&) = delete;
  ConfigAnnouncement& operator=(const ConfigAnnouncement&) = delete;

 private:
  Observer* const observer_;
  const std::string job_;
};

}  // namespace

absl::Status Daemon::GetStats(const v1::GetStatsRequest& request, v1::GetStatsResponse* response) {
  absl::StatusOr<Session> session = Use(request.session());
  if (!session.ok()) return session.status();
  session->job->GetStats(response);
  absl::MutexLock lock(&mu_);
  response->set_attached_workers(WorkersOf(session->job));
  return absl::OkStatus();
}

absl::Status Daemon::UpdateConfig(const v1::UpdateConfigRequest& request,
                                  v1::UpdateConfigResponse* response) {
  absl::StatusOr<Session> session = Use(request.session(), /*hold=*/true);
  if (!session.ok()) return session.status();
  absl::Cleanup unhold = [&] { Unhold(*session); };
  const ConfigAnnouncement announced(observer_, session->job->name());
  RuleParams before;
  absl::Status s = session->job->UpdateConfig(request.config(), response, &before);
  if (!s.ok()) return s;
  // An update that changes nothing keeps the version, and is no event.
  absl::StatusOr<RuleParams> after = ResolveConfig(response->effective_config());
  if (observer_ != nullptr && after.ok() && !SameEffectiveConfig(before, *after)) {
    observer_->OnConfigChange(session->job->name(), response->version(), PolicyName(after->policy),
                              ConfigDifference(before, *after, "now"));
  }
  return s;
}

absl::Status Daemon::ExportState(const v1::ExportStateRequest& request,
                                 v1::ExportStateResponse* response) {
  absl::StatusOr<Session> session = Use(request.session(), /*hold=*/true);
  if (!session.ok()) return session.status();
  absl::Cleanup unhold = [&] { Unhold(*session); };
  response->set_state(EncodeJobState(session->job->ExportState()));
  return absl::OkStatus();
}

absl::Status Daemon::ImportState(const v1::ImportStateRequest& request,
                                 v1::ImportStateResponse* response) {
  absl::StatusOr<Session> session = Use(request.session(), /*hold=*/true);
  if (!session.ok()) return session.status();
  absl::Cleanup unhold = [&] { Unhold(*session); };
  if (!session->job->BeginImport()) {
    return absl::AbortedError(absl::StrCat("an import into job '", session->job->name(),
                                           "' is under way: import again once it is done"));
  }
  absl::Cleanup import_done = [&] { session->job->EndImport(); };
  absl::StatusOr<v1::JobState> state = DecodeJobState(request.state(), "the state bytes");
  if (!state.ok()) {
    // Refused as bad input whatever the cause: nothing of the job changed.
    return absl::InvalidArgumentError(state.status().message());
  }
  state->DiscardUnknownFields();  // a newer release's, unused here: not held while it waits
  std::optional<Job::ConfigSwitch> switched;
  const ConfigAnnouncement announced(observer_, session->job->name());
  if (absl::Status s =
          session->job->ImportState(*state, !request.keep_config(), Job::kImportWait, &switched);
      !s.ok()) {
    return s;
  }
  response->set_groups(static_cast<uint32_t>(state->groups_size()));
  const std::vector<std::string> unregistered = session->job->UnregisteredGroups(*state);
  if (!unregistered.empty()) {
    response->set_unregistered_groups(static_cast<uint32_t>(unregistered.size()));
    response->set_first_unregistered(unregistered.front());
    LOG(WARNING) << "job '" << session->job->name() << "' imported statistics of "
                 << unregistered.size() << " groups no worker of it registers (first '"
                 << unregistered.front() << "')";
  }
  if (!state->job().empty() && state->job() != session->job->name()) {
    // Taken (a run resumed under a new name), but said: another job's groups may go unused.
    LOG(WARNING) << "job '" << session->job->name() << "' imported a state exported from job '"
                 << state->job() << "'";
  }
  if (observer_ != nullptr) {  // under report_mu_: not after the series' removal at retirement
    absl::MutexLock job_report(&session->job->gauge_report_mu());
    const bool diverging = session->job->Diverging();
    absl::MutexLock report(&report_mu_);
    observer_->SetImported(session->job->name(), diverging);
  }
  // A configuration the state brings is a change like UpdateConfig's, with its event.
  if (observer_ != nullptr && switched.has_value()) {
    observer_->OnConfigChange(session->job->name(), switched->version,
                              PolicyName(switched->after.policy),
                              ConfigDifference(switched->before, switched->after, "now"));
  }
  return absl::OkStatus();
}

}  // namespace gstab
