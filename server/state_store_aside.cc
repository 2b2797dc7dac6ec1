// StateStore: checkpoints its jobs could not take, set aside for a look (SetAside), and their
// deletion with their job (RemoveSetAside).
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "glog/logging.h"
#include "server/state_store.h"  // the class whose members these are

namespace gstab {

void StateStore::SetAsideCheckpoint(const std::string& job, const std::string& why) {
  if (dir_.empty()) return;
  {
    absl::MutexLock lock(&written_mu_);
    written_.erase(job);
  }
  const std::string path = absl::StrCat(dir_, "/", job, kSuffix);
  if (absl::Status s = CheckFolder(); !s.ok()) {  // not another gstabd's file
    LOG(WARNING) << "'" << path << "' " << why << ", and is not set aside: " << s;
    return;
  }
  if (access(path.c_str(), F_OK) == 0) SetAside(path, why);
}

void StateStore::SetAside(const std::string& path, const std::string& why, const char* infix) {
  // A name of its own: another set aside in the same second must not replace this one.
  const std::string base = absl::StrCat(path, infix != nullptr ? infix : kSetAsideInfix,
                                        absl::ToUnixSeconds(absl::Now()));
  std::string aside = base;
  for (int n = 1; n < 1000 && access(aside.c_str(), F_OK) == 0; ++n) {
    aside = absl::StrCat(base, ".", n);
  }
  if (rename(path.c_str(), aside.c_str()) != 0) {
    PLOG(ERROR) << path << " " << why << ", and cannot be set aside as " << aside;
    return;
  }
  if (absl::Status s = SyncDir(); !s.ok()) LOG(WARNING) << s;
  LOG(ERROR) << path << " " << why << ": set aside as " << aside << "; its job starts afresh";
}

uint32_t StateStore::RemoveSetAside(const std::string& job) {
  if (dir_.empty()) return 0;
  if (absl::Status s = CheckFolder(); !s.ok()) {
    LOG(WARNING) << "cannot delete the set-aside files of job '" << job << "': " << s;
    return 0;
  }
  // <job>.jobstate.corrupt-<seconds>, or .corrupt-<seconds>.<n> (SetAside): another job's
  // name never takes that form, its own file ending in .jobstate.
  const std::string prefix = absl::StrCat(job, kSuffix, kSetAsideInfix);
  auto set_aside = [&](const std::string& name) {
    if (!absl::StartsWith(name, prefix)) return false;
    const std::string rest = name.substr(prefix.size());
    const size_t dot = rest.find('.');
    auto digits = [](absl::string_view d) {
      return !d.empty() && std::all_of(d.begin(), d.end(), absl::ascii_isdigit);
    };
    return digits(absl::string_view(rest).substr(0, dot)) &&
           (dot == std::string::npos || digits(absl::string_view(rest).substr(dot + 1)));
  };
  uint32_t removed = 0;
  std::error_code ec;
  std::filesystem::directory_iterator it(dir_, ec);
  for (; !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    if (!set_aside(it->path().filename().string())) continue;
    if (unlink(it->path().c_str()) == 0) {
      ++removed;
    } else if (errno == EISDIR) {
      // A folder found under the job's file name and set aside: not gstabd's to empty.
      LOG(INFO) << "'" << it->path().string() << "' is a folder set aside, not deleted: "
                << "remove it by hand";
    } else if (errno != ENOENT) {
      PLOG(WARNING) << "cannot delete '" << it->path().string() << "'";
    }
  }
  if (ec) LOG(WARNING) << "cannot list '" << dir_ << "': " << ec.message();
  if (removed > 0) {
    if (absl::Status s = SyncDir(); !s.ok()) LOG(WARNING) << s;
  }
  return removed;
}

}  // namespace gstab
