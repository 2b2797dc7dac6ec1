#include "server/state_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/folders.h"
#include "glog/logging.h"
#include "server/state_codec.h"

namespace gstab {
namespace {
// In the names of what Save writes before its rename (job names have no ':').
constexpr char kTmpInfix[] = ".jobstate:tmp:";
// Init's check that the folder is writable.
constexpr char kProbePrefix[] = ".write-probe:";

// fsync of a folder: 0, or its errno. A file system that cannot sync folders at all (EINVAL) has
// nothing to fail.
int SyncFolder(int fd) { return fsync(fd) != 0 && errno != EINVAL ? errno : 0; }

absl::Status SyncFolderOf(int fd, const std::string& dir) {
  if (const int failed = SyncFolder(fd); failed != 0) {
    return absl::InternalError(
        absl::StrCat("cannot sync state directory '", dir, "': ", strerror(failed)));
  }
  return absl::OkStatus();
}

// A descriptor closed at the end of its scope.
struct OwnedFd {
  explicit OwnedFd(int f) : fd(f) {}
  OwnedFd(const OwnedFd&) = delete;
  OwnedFd& operator=(const OwnedFd&) = delete;
  ~OwnedFd() {
    if (fd >= 0) close(fd);
  }
  const int fd;
};

}  // namespace

StateStore::~StateStore() {
  absl::MutexLock lock(&folder_mu_);
  if (lock_fd_ >= 0) close(lock_fd_);
}

absl::Status StateStore::SyncDir() const {
  absl::MutexLock lock(&folder_mu_);
  const int fd = lock_fd_ >= 0 ? lock_fd_ : open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat("cannot open state directory '", dir_, "' to sync it: ", strerror(errno)));
  }
  absl::Status synced = SyncFolderOf(fd, dir_);
  if (fd != lock_fd_) close(fd);
  return synced;
}

absl::StatusOr<int> StateStore::OpenCheckedFolder() {
  if (absl::Status s = CheckFolder(); !s.ok()) return s;
  absl::MutexLock lock(&folder_mu_);
  const int fd = lock_fd_ >= 0 ? fcntl(lock_fd_, F_DUPFD_CLOEXEC, 0)
                               : open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot open state directory '", dir_, "': ", strerror(errno)));
  }
  return fd;
}

namespace {

// The folders of `path` that do not exist yet, `path` first.
std::vector<std::filesystem::path> Missing(const std::string& path) {
  std::vector<std::filesystem::path> missing;
  std::error_code unknown;
  for (std::filesystem::path p(path); !p.empty() && !std::filesystem::exists(p, unknown);
       p = p.parent_path()) {
    missing.push_back(p);
    if (p == p.parent_path()) break;
  }
  return missing;
}

// Makes the entries of the folders just made durable in their parents, where the file system
// allows (each new folder's own entries are synced when written).
void SyncParents(const std::vector<std::filesystem::path>& made, const std::string& path) {
  for (const std::filesystem::path& folder : made) {
    const std::string parent = folder.parent_path().string();
    const int fd = open(parent.empty() ? "." : parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) continue;  // a parent gstabd may not open (search permission only)
    if (const int err = SyncFolder(fd); err != 0) {
      LOG(WARNING) << "cannot sync '" << parent << "', a folder above state directory '" << path
                   << "': should the machine lose power, the state directory may be lost: "
                   << strerror(err);
    }
    close(fd);
  }
}

}  // namespace

absl::Status StateStore::CheckFolder() {
  absl::MutexLock lock(&folder_mu_);
  if (lock_fd_ < 0) return absl::OkStatus();
  struct stat now, locked;
  if (stat(dir_.c_str(), &now) != 0) {
    const int err = errno;
    if (err != ENOENT && err != ENOTDIR) {  // EACCES, EIO: may pass
      return absl::UnavailableError(
          absl::StrCat("cannot look at state directory '", dir_, "' now (", strerror(err), ")"));
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "state directory '", dir_, "' is gone (", strerror(err),
        "): it was removed since gstabd locked it; checkpoints are written again once it is "
        "back"));
  }
  if (fstat(lock_fd_, &locked) == 0 && now.st_dev == locked.st_dev && now.st_ino == locked.st_ino) {
    return absl::OkStatus();
  }
  // Another folder under the name since (removed and made again): written only once it is this
  // gstabd's alone, as at Init. Another gstabd started meanwhile may hold it.
  const int fd = open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    if (fd >= 0) close(fd);
    // Another gstabd's is final; out of descriptors, say, may pass.
    return absl::Status(
        err == EWOULDBLOCK ? absl::StatusCode::kFailedPrecondition : absl::StatusCode::kUnavailable,
        absl::StrCat(
            "state directory '", dir_, "' was replaced since gstabd locked it, and the new one ",
            err == EWOULDBLOCK ? "is locked by another process (another gstabd, most likely)"
                               : absl::StrCat("cannot be locked (", strerror(err), ")"),
            ": this gstabd writes no checkpoint there"));
  }
  close(lock_fd_);
  lock_fd_ = fd;
  LOG(WARNING) << "state directory '" << dir_
               << "' was replaced since gstabd locked it: the new one is locked and written now";
  return absl::OkStatus();
}

namespace {

// Takes group and other access away from the file at `path` when it is a regular file of this
// process's user with no other name (opened without following a link, and not a hard link to a
// file elsewhere, which another user of a folder open to others could make: so no file
// elsewhere is changed); whether it did.
bool MakeOwnersAlone(const std::string& path) {
  struct stat named;  // not opened otherwise: a FIFO or a device is set aside unread (LoadAll)
  if (lstat(path.c_str(), &named) != 0 || !S_ISREG(named.st_mode) || (named.st_mode & 077) == 0) {
    return false;
  }
  const int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st;
  const bool changed = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_ino == named.st_ino &&
                       st.st_nlink == 1 && st.st_uid == geteuid() &&
                       fchmod(fd, st.st_mode & 07700) == 0;
  close(fd);
  return changed;
}

}  // namespace

absl::Status StateStore::Init() {
  if (dir_.empty()) return absl::OkStatus();
  // Checkpoints are gstabd's user's alone (0600, in a folder of 0700 when gstabd makes it): its
  // group is often the training users' (the socket's), and each job's statistics, configuration
  // and owner are its owner's to export.
  const std::vector<std::filesystem::path> made = Missing(dir_);
  if (absl::Status s = CreateFolders(dir_, 0700); !s.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create state directory '", dir_, "': ", s.message()));
  }
  SyncParents(made, dir_);
  // A folder gstabd cannot write (a read-only mount, another owner) would lose every job's
  // statistics at the first checkpoint, long after start: refuse it now.
  std::string probe = absl::StrCat(dir_, "/", kProbePrefix, "XXXXXX");
  const int fd = mkstemp(probe.data());
  if (fd < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "state directory '", dir_, "' is not writable (", strerror(errno),
        "): job statistics could not be checkpointed; give --state_dir a writable folder"));
  }
  close(fd);
  unlink(probe.c_str());
  // One gstabd a folder: two would write over each other's checkpoints, and sweep each other's
  // temporary files below. (An Init again keeps the lock it has.)
  absl::MutexLock lock(&folder_mu_);
  if (lock_fd_ < 0) {
    const int dir_fd = open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot open state directory '", dir_, "': ", strerror(errno)));
    }
    if (flock(dir_fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      close(dir_fd);
      if (err != EWOULDBLOCK) {
        return absl::FailedPreconditionError(
            absl::StrCat("cannot lock state directory '", dir_, "' (", strerror(err),
                         "): gstabd locks it so that no other gstabd writes there; give "
                         "--state_dir a folder on a file system with locks"));
      }
      return absl::FailedPreconditionError(
          absl::StrCat("state directory '", dir_,
                       "' is in use by another process (another gstabd, most likely): give "
                       "each gstabd its own --state_dir"));
    }
    lock_fd_ = dir_fd;
  }
  // Temporary files of saves (and probes) a crash interrupted (a listing that fails part way
  // leaves the rest: they are never read).
  std::error_code ec;
  uint32_t tightened = 0;
  bool only_checkpoints = true;
  for (std::filesystem::directory_iterator it(dir_, ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.find(kTmpInfix) != std::string::npos || name.rfind(kProbePrefix, 0) == 0) {
      std::error_code ignored;
      std::filesystem::remove(it->path(), ignored);
    } else if (absl::EndsWith(name, kSuffix) ||
               absl::StrContains(name, absl::StrCat(kSuffix, kSetAsideInfix)) ||
               absl::StrContains(name, absl::StrCat(kSuffix, kNewerInfix))) {
      tightened += MakeOwnersAlone(it->path().string());
      // Another user's file there says others wrote the folder: it keeps its mode (and its
      // warning), by which Foreign finds the folder open to others.
      if (struct stat st; lstat(it->path().c_str(), &st) == 0 && st.st_uid != geteuid()) {
        only_checkpoints = false;
      }
    } else {
      only_checkpoints = false;
    }
  }
  // The folder too, when it holds gstabd's files alone (a Kubernetes hostPath folder is made
  // 0755): not a folder shared with others (--state_dir=/tmp, a home folder).
  if (struct stat st; fstat(lock_fd_, &st) == 0 && (st.st_mode & 077) != 0) {
    if (!ec && only_checkpoints && st.st_uid == geteuid()) {
      tightened += fchmod(lock_fd_, st.st_mode & 07700) == 0;
    } else {
      LOG(WARNING) << "state directory '" << dir_ << "' is open to others (mode "
                   << absl::StrFormat("%04o", st.st_mode & 07777)
                   << "): its checkpoints are not, but their job names are listed there; give "
                   << "gstabd a folder of its own, mode 0700";
    }
  }
  if (tightened > 0) {
    LOG(INFO) << "state directory '" << dir_ << "': took group and other access away from "
              << tightened << " of its entries (the folder, checkpoints of earlier releases): "
              << "they are gstabd's user's alone";
  }
  return absl::OkStatus();
}

void StateStore::Touch(const std::string& job, int dir_fd, const std::string& name,
                       const std::string& path) {
  absl::MutexLock lock(&written_mu_);
  auto w = written_.find(job);
  if (w == written_.end()) return;  // removed meanwhile
  struct stat st;
  // Not followed, as Unchanged found it; the file as written stays known by its new time.
  if (utimensat(dir_fd, name.c_str(), nullptr, AT_SYMLINK_NOFOLLOW) != 0 ||
      fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    PLOG(WARNING) << "cannot set the time of checkpoint '" << path << "' (a restart's retention "
                  << "counts from it)";
    return;
  }
  w->second.modified = st.st_mtim;
}

bool StateStore::Unchanged(const std::string& job, int dir_fd, const std::string& name,
                           const std::string& bytes) {
  absl::MutexLock lock(&written_mu_);
  auto w = written_.find(job);
  struct stat st;
  // By name, not followed: the file as this store left it (not removed, replaced or grown).
  return w != written_.end() && w->second.checksum == bytes.substr(0, kEncodedChecksumBytes) &&
         fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
         st.st_dev == w->second.device && st.st_ino == w->second.inode &&
         st.st_size == w->second.size && st.st_mtim.tv_sec == w->second.modified.tv_sec &&
         st.st_mtim.tv_nsec == w->second.modified.tv_nsec &&
         static_cast<size_t>(st.st_size) == bytes.size();
}

absl::Status StateStore::Save(const v1::JobState& state, bool touch) {
  if (dir_.empty()) return absl::OkStatus();
  const std::string name = absl::StrCat(state.job(), kSuffix);
  const std::string path = absl::StrCat(dir_, "/", name);
  // Written through the folder locked, not by its path: a folder made under the name after the
  // check below is not written.
  absl::StatusOr<int> folder = OpenCheckedFolder();
  if (!folder.ok()) {
    return absl::InternalError(
        absl::StrCat("cannot write checkpoint '", path, "': ", folder.status().message()));
  }
  const OwnedFd dir(*folder);
  const std::string bytes = EncodeJobState(state);
  if (Unchanged(state.job(), dir.fd, name, bytes)) {
    if (touch) Touch(state.job(), dir.fd, name, path);
    return absl::OkStatus();
  }
  {
    absl::MutexLock lock(&written_mu_);  // until written whole again
    written_.erase(state.job());
  }
  // A temporary file of this call's own, so that saves never write into each other's file.
  static std::atomic<uint64_t> saves{0};
  const std::string tmp = absl::StrCat(name, kTmpInfix, getpid(), ".", saves.fetch_add(1));
  // The reason, from the call that failed (ENOSPC, EIO, EROFS...).
  const char* failed = nullptr;
  int err = 0;
  const int fd = openat(dir.fd, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("cannot write checkpoint '", path, "' (open ", tmp,
                                            ": ", strerror(errno),
                                            "); the previous one, if any, is kept"));
  }
  for (size_t done = 0; done < bytes.size() && failed == nullptr;) {
    const ssize_t n = write(fd, bytes.data() + done, bytes.size() - done);
    if (n > 0) {
      done += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      failed = "write";
      err = n < 0 ? errno : ENOSPC;  // no progress: the disk is full
    }
  }
  if (failed == nullptr && fsync(fd) != 0) {
    failed = "fsync";
    err = errno;
  }
  Written written;
  if (struct stat st; failed == nullptr && fstat(fd, &st) == 0) {
    written = Written{st.st_dev, st.st_ino, st.st_size, st.st_mtim,
                      bytes.substr(0, kEncodedChecksumBytes)};
  }
  if (close(fd) != 0 && failed == nullptr) {  // a network file system's late write error
    failed = "close";
    err = errno;
  }
  if (failed == nullptr && renameat(dir.fd, tmp.c_str(), dir.fd, name.c_str()) != 0) {
    failed = "rename";
    err = errno;
  }
  if (failed != nullptr) {
    unlinkat(dir.fd, tmp.c_str(), 0);
    return absl::InternalError(absl::StrCat("cannot write checkpoint '", path, "' (", failed, ": ",
                                            strerror(err), "); the previous one, if any, is kept"));
  }
  // In place, but a crash could still bring the previous one back: the save failed.
  if (absl::Status s = SyncFolderOf(dir.fd, dir_); !s.ok()) {
    return absl::InternalError(absl::StrCat("checkpoint '", path, "' is written but ", s.message(),
                                            ": a crash could bring the previous one back"));
  }
  if (!written.checksum.empty()) {
    absl::MutexLock lock(&written_mu_);
    written_[state.job()] = std::move(written);
  }
  return absl::OkStatus();
}

absl::Status StateStore::Remove(const std::string& job, bool* deleted) {
  if (deleted != nullptr) *deleted = false;
  if (dir_.empty()) return absl::OkStatus();
  {
    absl::MutexLock lock(&written_mu_);
    written_.erase(job);
  }
  const std::string name = absl::StrCat(job, kSuffix);
  const std::string path = absl::StrCat(dir_, "/", name);
  absl::StatusOr<int> folder = OpenCheckedFolder();  // the folder locked, as Save
  // Gone, or another gstabd's since: no file of this gstabd's is there to delete (a job
  // forgotten, or past its retention, goes from memory all the same).
  if (absl::IsFailedPrecondition(folder.status())) {
    LOG(WARNING) << "checkpoint '" << path << "' not deleted: " << folder.status().message();
    return absl::OkStatus();
  }
  if (!folder.ok()) {
    return absl::InternalError(
        absl::StrCat("cannot delete checkpoint '", path, "': ", folder.status().message()));
  }
  const OwnedFd dir(*folder);
  if (unlinkat(dir.fd, name.c_str(), 0) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return absl::InternalError(
        absl::StrCat("cannot delete checkpoint '", path, "': ", strerror(errno)));
  }
  if (deleted != nullptr) *deleted = true;
  // Deleted: the caller forgets the job with it (failing here would keep a job whose statistics
  // are gone). Only a crash before the folder's next sync could bring the file back.
  if (absl::Status s = SyncFolderOf(dir.fd, dir_); !s.ok()) {
    LOG(WARNING) << "deleted '" << path << "', but " << s
                 << ": a crash before the folder's next sync could bring it back";
  }
  return absl::OkStatus();
}

}  // namespace gstab
