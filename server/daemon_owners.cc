// Daemon: whom jobs belong to (DaemonOptions::jobs_by_uid), and who may act on them.
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "server/daemon.h"  // the class whose members these are

namespace gstab {

bool Daemon::IsOperator(const Principal& caller) const {
  if (caller.is_certificate()) return options_.tls_operators.count(caller.certificate) == 1;
  return caller.uid == 0 || caller.uid == ::geteuid();
}

bool Daemon::ActsOnEveryJob(const Principal& caller) const {
  return !options_.jobs_by_uid || IsOperator(caller);
}

v1::CallerScope Daemon::ScopeOf(const Principal& caller) const {
  if (ActsOnEveryJob(caller)) return v1::CALLER_SCOPE_EVERY_JOB;
  return caller.nameless() ? v1::CALLER_SCOPE_NO_JOB : v1::CALLER_SCOPE_OWN_JOBS;
}

std::optional<Principal> Daemon::OwnerOf(const std::string& name) const {
  if (auto held = jobs_.find(name); held != jobs_.end()) return held->second->owner();
  if (auto saved = checkpoints_.find(name); saved != checkpoints_.end()) {
    return OwnerIn(saved->second.state);
  }
  return std::nullopt;
}

absl::Status Daemon::OwnerRefusal(const std::string& name, const std::optional<Principal>& owner,
                                  const std::optional<Principal>& caller,
                                  const char* action) const {
  if (!options_.jobs_by_uid || !caller.has_value()) return absl::OkStatus();
  if (caller->nameless()) {
    return absl::PermissionDeniedError(
        "this client's certificate has no name: no SPIFFE ID (the only URI in subjectAltName, a "
        "spiffe:// one), subject common name (CN), DNS name or email address (subjectAltName), "
        "or a common name that starts spiffe:, which names nothing; gstabd keeps the jobs of "
        "TCP clients apart by their certificates' names (--jobs_by_uid), so use a certificate "
        "with one");
  }
  if (!owner.has_value() || *owner == *caller || ActsOnEveryJob(*caller)) {
    return absl::OkStatus();
  }
  const uid_t self = ::geteuid();
  const std::string who = absl::StrCat(
      "job '", name, "' belongs to ", owner->ToString(),
      " (whoever made or first claimed it), and ",
      caller->is_certificate() ? "this client's certificate is named '" + caller->certificate + "'"
                               : absl::StrCat("this process runs as uid ", caller->uid));
  return absl::PermissionDeniedError(absl::StrCat(
      who, ": ", action, owner->is_certificate() ? " with " : " as ", owner->ToString(),
      ", as root or gstabd's own uid ", self,
      " through its socket, or with a certificate that gstabd's --tls_operators names; or use "
      "another job name (with gstabd --jobs_by_uid=false, every client gstabd admits may use "
      "every job)"));
}

}  // namespace gstab
