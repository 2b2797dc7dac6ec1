#include "server/path_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"

namespace gstab {
namespace {

// Whether `fd` is the file at `path` now (not one removed since, and made again by another);
// nothing when a look fails otherwise than by the name's absence (out of memory, a folder's
// permission), which tells neither way.
std::optional<bool> IsFileAt(int fd, const std::string& path) {
  struct stat open_file, named;
  if (fstat(fd, &open_file) != 0) return std::nullopt;
  if (stat(path.c_str(), &named) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return false;
    return std::nullopt;
  }
  return open_file.st_dev == named.st_dev && open_file.st_ino == named.st_ino;
}

}  // namespace

absl::StatusOr<PathLock> PathLock::Take(const std::string& lock_path) {
  // The holder removes the file when it lets go: a process that opened it before then locks a
  // file nobody else will, so it looks again once locked (a few tries: each needs a holder to
  // come and go in between).
  for (int attempt = 0; attempt < 8; ++attempt) {
    // Not through a symbolic link (a shared folder's user could point it anywhere), and not
    // waiting on a FIFO put in its place.
    const int fd =
        open(lock_path.c_str(), O_RDONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600);
    if (fd < 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot open the lock file '", lock_path, "': ", strerror(errno)));
    }
    if (struct stat st; fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      close(fd);
      return absl::FailedPreconditionError(
          absl::StrCat("'", lock_path, "' is not a plain file: remove it, or give another path"));
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      close(fd);
      if (err == EWOULDBLOCK) {
        return absl::AlreadyExistsError(
            absl::StrCat("another process holds the lock file '", lock_path, "'"));
      }
      return absl::FailedPreconditionError(
          absl::StrCat("cannot lock '", lock_path, "': ", strerror(err)));
    }
    const std::optional<bool> at = IsFileAt(fd, lock_path);
    if (at.value_or(false)) return PathLock(lock_path, fd);
    const int err = errno;
    close(fd);
    if (!at.has_value()) {  // not a race: a look that fails now would fail every try
      return absl::FailedPreconditionError(
          absl::StrCat("cannot tell whether the lock file '", lock_path,
                       "' is still the one gstabd locked: ", strerror(err)));
    }
  }
  return absl::AlreadyExistsError(
      absl::StrCat("the lock file '", lock_path, "' changed hands as gstabd took it, 8 times"));
}

PathLock::PathLock(PathLock&& other) noexcept
    : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)) {}

// Not held only when the name is known to lead elsewhere, or nowhere: taking the lock again
// after a look that told nothing would conflict with this one.
bool PathLock::Held() const { return fd_ >= 0 && IsFileAt(fd_, path_).value_or(true); }

PathLock::~PathLock() {
  if (fd_ < 0) return;
  // Removed while still locked: a process that opened it before then and locks it next finds
  // it gone from its name, and tries again.
  if (IsFileAt(fd_, path_).value_or(false)) unlink(path_.c_str());
  close(fd_);
}

}  // namespace gstab
