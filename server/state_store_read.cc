// StateStore's reading side: a job's checkpoint when it comes back (Load), and every
// checkpoint at start (LoadAll), each checked before it is used, and set aside when it is not
// one.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/fd_read.h"
#include "common/wire_limits.h"
#include "core/config.h"
#include "glog/logging.h"
#include "server/registration.h"
#include "server/state_codec.h"
#include "server/state_store.h"

namespace gstab {
namespace {

// No checkpoint is larger: a job's state, its 65,536 groups at most included, is a few MB, and
// one imported came in a message of at most this.
constexpr off_t kMaxCheckpointBytes = kMaxMessageBytes;

// The whole file at `path`: NOT_FOUND when there is none, UNAVAILABLE when it cannot be opened or
// read (no permission, out of descriptors, an I/O error), DATA_LOSS when it is no checkpoint by
// its kind (a folder, a FIFO, a socket, a symbolic link: never read) or its size (larger than
// any: never read whole). gstabd writes regular files only: a link is not followed, neither to
// another user's file nor to none. `owner` (may be null) receives the entry's owner whenever
// it could be looked at, whatever else fails: another user's, unreadable, is theirs.
absl::StatusOr<std::string> ReadWhole(const std::string& path, uid_t* owner = nullptr) {
  // Its kind first: an entry that is not a file is never opened (a device, a FIFO another user
  // holds, one gstabd may not open, which would read as a failure that may pass).
  struct stat entry;
  if (lstat(path.c_str(), &entry) != 0) {
    const std::string what = absl::StrCat("cannot stat '", path, "': ", strerror(errno));
    return errno == ENOENT ? absl::NotFoundError(what) : absl::UnavailableError(what);
  }
  if (owner != nullptr) *owner = entry.st_uid;
  if (S_ISLNK(entry.st_mode)) return absl::DataLossError("is a symbolic link");
  if (!S_ISREG(entry.st_mode)) return absl::DataLossError("is not a regular file");
  const int fd = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW);  // a FIFO:
  if (fd < 0) {                                                                       // no wait
    const int err = errno;
    if (err == ELOOP) return absl::DataLossError("is a symbolic link");
    if (err == ENXIO || err == ENODEV) return absl::DataLossError("is not a regular file");
    const std::string what = absl::StrCat("cannot open '", path, "': ", strerror(err));
    return err == ENOENT ? absl::NotFoundError(what) : absl::UnavailableError(what);
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const std::string what = absl::StrCat("cannot stat '", path, "': ", strerror(errno));
    close(fd);
    return absl::UnavailableError(what);
  }
  if (owner != nullptr) *owner = st.st_uid;
  if (!S_ISREG(st.st_mode) || st.st_size > kMaxCheckpointBytes) {
    const bool regular = S_ISREG(st.st_mode);
    close(fd);
    return absl::DataLossError(
        regular ? absl::StrCat("is larger than any checkpoint (", st.st_size, " bytes)")
                : std::string("is not a regular file"));
  }
  std::string bytes;
  const int err = ReadToEnd(fd, kMaxCheckpointBytes, &bytes);
  close(fd);
  if (err == EFBIG) return absl::DataLossError("grew larger than any checkpoint while read");
  if (err != 0) {
    return absl::UnavailableError(absl::StrCat("cannot read '", path, "': ", strerror(err)));
  }
  return bytes;
}

// Why a checkpoint of a newer release's format (this gstabd rolled back to) is set aside.
std::string NewerRelease(const v1::JobState& state, absl::string_view suffix) {
  return absl::StrCat("was written by a newer gstabd release (checkpoint format ",
                      state.format_version(), "; this one reads ", kJobStateFormatVersion,
                      "); it is kept for that release (rename it back to ", state.job(), suffix,
                      " while it does not run)");
}

}  // namespace

bool StateStore::Foreign(const std::string& path, uid_t owner) const {
  if (owner == geteuid()) return false;
  // Init keeps the mode of a folder that holds another user's file. A folder of another user
  // (not root's) is that user's to write whatever its mode: a file of theirs there is theirs.
  struct stat st;
  {
    absl::MutexLock lock(&folder_mu_);
    if (lock_fd_ < 0 || fstat(lock_fd_, &st) != 0) return false;
  }
  const bool open_to_others = (st.st_mode & 022) != 0;
  const bool others_folder = st.st_uid != geteuid() && st.st_uid != 0;
  if (!open_to_others && !others_folder) return false;
  LOG(ERROR) << "'" << path << "' belongs to uid " << owner << ", not to gstabd's user, in a "
             << "state directory "
             << (open_to_others ? "others may write"
                                : absl::StrCat("of another user (uid ", st.st_uid, ")"))
             << ": not restored (anyone who may write there could have written it), and its job "
             << "starts afresh. Give gstabd a folder of its own, mode 0700"
             << (others_folder ? absl::StrCat(" (gstabd's user changed? `chown -R ", geteuid(),
                                              "` the folder before gstabd starts, and start it "
                                              "again before any job attaches: each job's next "
                                              "checkpoint replaces its file)")
                               : "");
  return true;
}

absl::StatusOr<v1::JobState> StateStore::Load(const std::string& job) {
  if (dir_.empty()) return absl::NotFoundError("no state directory");
  const std::string path = absl::StrCat(dir_, "/", job, kSuffix);
  // Gone (NOT_FOUND) and not a checkpoint (DATA_LOSS) are final; any other failure (out of
  // descriptors, an I/O error) may pass (UNAVAILABLE).
  // Nor is it read from a folder that is no longer this gstabd's (removed, or replaced by one
  // another gstabd locks, whose job of the same name it would be): its checkpoints went with it.
  if (absl::Status s = CheckFolder(); !s.ok()) {
    // A failure that may pass keeps the checkpoint (its attach tries again).
    return absl::Status(
        absl::IsUnavailable(s) ? absl::StatusCode::kUnavailable : absl::StatusCode::kNotFound,
        absl::StrCat("'", path, "' not read: ", s.message()));
  }
  uid_t owner = geteuid();
  absl::StatusOr<std::string> bytes = ReadWhole(path, &owner);
  // Readable or not, a file or not: left where it is, as at start (LoadAll).
  if (!absl::IsNotFound(bytes.status()) && Foreign(path, owner)) {
    return absl::NotFoundError(absl::StrCat("'", path, "' is not gstabd's user's"));
  }
  if (absl::IsDataLoss(bytes.status())) {
    const std::string why = absl::StrCat(bytes.status().message(), ", so not a checkpoint");
    SetAside(path, why);
    return absl::DataLossError(absl::StrCat("'", path, "' ", why));
  }
  if (!bytes.ok()) return bytes.status();
  absl::StatusOr<v1::JobState> state = DecodeJobState(*bytes, "its bytes");
  if (!state.ok() || state->job() != job) {
    const std::string why = state.ok() ? absl::StrCat("is not a checkpoint of job '", job, "'")
                                       : absl::StrCat("is not a checkpoint of job '", job,
                                                      "': ", state.status().message());
    SetAside(path, why);
    return absl::DataLossError(absl::StrCat("'", path, "' ", why));
  }
  // As LoadAll: one placed there since (a newer release's) is kept for that release.
  if (state->format_version() > kJobStateFormatVersion) {
    const std::string why = NewerRelease(*state, kSuffix);
    SetAside(path, why, kNewerInfix);
    return absl::DataLossError(absl::StrCat("'", path, "' ", why));
  }
  return state;
}

absl::StatusOr<std::vector<StateStore::Stored>> StateStore::LoadAll() {
  std::vector<Stored> out;
  if (dir_.empty()) return out;
  // Listed whole or not at all: a job whose checkpoint a failed listing left out would start
  // afresh over it.
  std::error_code ec;
  std::filesystem::directory_iterator it(dir_, ec);
  for (; !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    const std::filesystem::directory_entry& entry = *it;
    const std::string path = entry.path().string();
    if (entry.path().extension() != kSuffix) continue;
    // Not a regular file (a folder, a link to one: its job's saves would fail for good), or
    // larger than any checkpoint: set aside unread.
    uid_t owner = geteuid();
    absl::StatusOr<std::string> bytes = ReadWhole(path, &owner);
    if (absl::IsNotFound(bytes.status())) continue;  // deleted meanwhile
    // Left where it is, readable or not (it does not stop gstabd either), a file or not.
    if (Foreign(path, owner)) continue;
    if (absl::IsDataLoss(bytes.status())) {
      SetAside(path, absl::StrCat(bytes.status().message(), ", so not a checkpoint"));
      continue;
    }
    if (!bytes.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          bytes.status().message(),
          ". gstabd does not start without a job's checkpoint, whose job would start afresh "
          "over it (its statistics and owner lost): let gstabd's user read the file, or move it "
          "out of --state_dir to start that job afresh"));
    }
    absl::StatusOr<v1::JobState> decoded = DecodeJobState(*bytes, "its bytes");
    if (!decoded.ok() || decoded->job().empty()) {
      SetAside(path, decoded.ok()
                         ? "is not a checkpoint"
                         : absl::StrCat("is not a checkpoint: ", decoded.status().message()));
      continue;
    }
    v1::JobState& state = *decoded;
    // Saved as <job>.jobstate: a file copied or renamed would stand in for another job (or, with
    // a name that is not a job's, reach outside the folder when its job's file is deleted).
    if (entry.path().filename().string() != absl::StrCat(state.job(), kSuffix)) {
      SetAside(path, absl::StrCat("holds job '", state.job(), "', whose file would be ",
                                  state.job(), kSuffix));
      continue;
    }
    // A newer release's (this gstabd rolled back to) is kept for that release, under a name
    // `forget` does not delete: the job, which starts afresh here, would overwrite it.
    if (state.format_version() > kJobStateFormatVersion) {
      SetAside(path, NewerRelease(state, kSuffix), kNewerInfix);
      continue;
    }
    // One its job could not take (damaged, or edited) is kept for a look: the job, which
    // starts afresh, would overwrite it.
    absl::Status s = ValidateJobState(state);
    // A job's name and configuration came through gstabd's checks when it was saved: one that
    // does not pass them now (a hand edit) would be listed, but could not be forgotten by name,
    // or would take its next worker's configuration without a word.
    if (s.ok()) s = ValidateJobName(state.job());
    if (s.ok() && state.has_config()) s = ResolveConfig(state.config()).status();
    if (!s.ok()) {
      SetAside(path, absl::StrCat("cannot be restored (", s.message(), ")"));
      continue;
    }
    struct stat st;
    const absl::Time saved =
        stat(path.c_str(), &st) == 0 ? absl::TimeFromTimespec(st.st_mtim) : absl::Now();
    // Its groups stay on disk until its job comes back: read all at once, wide checkpoints
    // would take gigabytes at start (a job's 65,536 groups take about 18 MB decoded).
    const auto groups = static_cast<uint32_t>(state.groups_size());
    google::protobuf::RepeatedPtrField<v1::GroupState>().Swap(state.mutable_groups());
    out.push_back(Stored{std::move(state), saved, groups});
  }
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot list state directory '", dir_, "' (", ec.message(),
        "): gstabd does not start without its checkpoints, whose jobs would start afresh over "
        "them"));
  }
  return out;
}

}  // namespace gstab
