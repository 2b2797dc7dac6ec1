#include "tools/ctl_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/fd_read.h"

namespace gstab::ctl {
namespace {

absl::Mutex partial_mu;
std::string partial_file ABSL_GUARDED_BY(partial_mu);

}  // namespace

int OpenPartialFile(const std::string& path, int flags, mode_t mode) {
  absl::MutexLock lock(&partial_mu);
  partial_file = path;
  return ::open(path.c_str(), flags, mode);
}

void NoPartialFile() {
  absl::MutexLock lock(&partial_mu);
  partial_file.clear();
}

// Held to the process's end, so that no other file is made meanwhile.
void RemovePartialFileForGood() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  partial_mu.Lock();
  if (!partial_file.empty()) ::unlink(partial_file.c_str());
}
namespace {

absl::Status CannotWrite(const std::string& path, int error) {
  return absl::InternalError(absl::StrCat("cannot write '", path, "': ", std::strerror(error)));
}

// All of `bytes` to `fd`; errno's value on failure, else 0.
int WriteAll(int fd, const std::string& bytes) {
  for (size_t done = 0; done < bytes.size();) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return n < 0 ? errno : EIO;
    done += static_cast<size_t>(n);
  }
  return 0;
}

}  // namespace

absl::StatusOr<Output> ResolveOutput(const std::string& path) {
  Output out;
  out.path = path;
  // An open descriptor named as a file: written as it is (`>> log` appends; opening its name
  // anew would start at the file's beginning, and a rename would replace the file).
  int fd = -1;
  if (path == "-" || path == "/dev/stdout") {
    fd = STDOUT_FILENO;
  } else if (path == "/dev/stderr") {
    fd = STDERR_FILENO;
  } else {
    for (const char* prefix : {"/dev/fd/", "/proc/self/fd/"}) {
      if (absl::StartsWith(path, prefix) && absl::SimpleAtoi(path.substr(strlen(prefix)), &fd)) {
        break;
      }
      fd = -1;
    }
  }
  if (fd >= 0) {
    // Open for writing now: one that is not would be taken, by the write, for whatever gstabctl
    // opens under its number meanwhile (a connection's).
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || (flags & O_ACCMODE) == O_RDONLY) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot write '", path, "': descriptor ", fd, " is not open for writing"));
    }
    out.kind = Output::kDescriptor;
    out.fd = fd;
    return out;
  }
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {  // through symbolic links
    if (S_ISDIR(st.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", path, "' is a folder: --out names a file"));
    }
    if (!S_ISREG(st.st_mode)) {  // a device, a FIFO: written as it is
      out.kind = Output::kInPlace;
      return out;
    }
    // A symbolic link stays: the file it names is replaced, as this user could write it.
    char real[PATH_MAX];
    if (::realpath(path.c_str(), real) == nullptr) return CannotWrite(path, errno);
    if (::access(real, W_OK) != 0) return CannotWrite(path, errno);
    out.target = real;
    out.existing = st;
  } else if (errno != ENOENT) {
    return CannotWrite(path, errno);
  } else {
    // A symbolic link to nothing: followed by hand, it would make a file wherever the link's
    // maker chose, past the kernel's checks of links in shared folders; replaced, it would be
    // lost. Neither: refused.
    if (struct stat link; ::lstat(path.c_str(), &link) == 0 && S_ISLNK(link.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", path,
                       "' is a symbolic link to nothing: --out names the file (or a "
                       "link to one that exists)"));
    }
    out.target = path;
  }
  const size_t slash = out.target.rfind('/');
  out.folder = slash == std::string::npos ? "./" : out.target.substr(0, slash + 1);
  if (::access(out.folder.c_str(), W_OK | X_OK) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot write '", path, "': its folder '",
                                                   out.folder, "' cannot be written (",
                                                   std::strerror(errno), ")"));
  }
  out.kind = Output::kReplace;
  return out;
}

absl::Status WriteWhole(const Output& out, const std::string& bytes) {
  if (out.kind == Output::kDescriptor) {
    if (int e = WriteAll(out.fd, bytes); e != 0) {
      return CannotWrite(out.fd == STDOUT_FILENO ? "stdout" : out.path, e);
    }
    return absl::OkStatus();
  }
  if (out.kind == Output::kInPlace) {
    const int fd = ::open(out.path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return CannotWrite(out.path, errno);
    // A regular file put there since it was looked at would be written over from its start,
    // its end left: it is replaced whole or not at all.
    if (struct stat now; ::fstat(fd, &now) == 0 && S_ISREG(now.st_mode)) {
      ::close(fd);
      return absl::FailedPreconditionError(absl::StrCat(
          "'", out.path, "' became a regular file while the state was exported: export again"));
    }
    const int e = WriteAll(fd, bytes);
    const int closed = ::close(fd) == 0 ? 0 : errno;
    if (e != 0 || closed != 0) return CannotWrite(out.path, e != 0 ? e : closed);
    return absl::OkStatus();
  }
  const bool exists = out.existing.has_value();
  // A new one is this user's alone (0600, as gstabd's checkpoints): it holds the job's name,
  // configuration and statistics, and a folder's other users are often the training users.
  const mode_t mode = exists ? (out.existing->st_mode & 07777) : 0600;
  // Beside the target, under a name of its own: a name of the target's own length plus a suffix
  // could pass the folder's name limit, and a fixed one could meet a killed run's leftover.
  std::string partial;
  int fd = -1;
  for (int attempt = 0; attempt < 16 && fd < 0; ++attempt) {
    partial = absl::StrCat(out.folder, ".gstabctl-", ::getpid(), "-",
                           absl::Hex(std::random_device()(), absl::kZeroPad8), ".partial");
    fd = OpenPartialFile(partial, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) {
    const int err = errno;
    NoPartialFile();
    return absl::InternalError(absl::StrCat("cannot write '", out.path, "': cannot make '", partial,
                                            "' beside it: ", std::strerror(err)));
  }
  int e = WriteAll(fd, bytes);
  // The file's owner and group stay where this user may keep them: both as root, the group
  // where this user is among it (a group-shared folder); else they become this user's. Before
  // the mode, which a change of owner may cut (its set-id bits), as the umask may have.
  if (e == 0 && exists) {
    struct stat made;
    if (::fstat(fd, &made) == 0 &&
        (made.st_uid != out.existing->st_uid || made.st_gid != out.existing->st_gid) &&
        ::fchown(fd, out.existing->st_uid, out.existing->st_gid) != 0) {
      (void)::fchown(fd, static_cast<uid_t>(-1), out.existing->st_gid);
    }
  }
  if (e == 0 && exists && ::fchmod(fd, mode) != 0) e = errno;
  if (e == 0 && ::fsync(fd) != 0) e = errno;
  if (::close(fd) != 0 && e == 0) e = errno;
  if (e == 0 && ::rename(partial.c_str(), out.target.c_str()) != 0) e = errno;
  if (e != 0) ::unlink(partial.c_str());
  NoPartialFile();
  if (e != 0) return CannotWrite(out.path, e);
  // The rename made durable: without the folder's sync, a crash could leave the previous file
  // (or none) under the name after "exported". A file system without it (EINVAL) has nothing to
  // lose, and a folder this user may write but not read (a drop folder) cannot be synced.
  const int dir = ::open(out.folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0 && (errno == EACCES || errno == EPERM)) return absl::OkStatus();
  if (dir < 0 || (::fsync(dir) != 0 && errno != EINVAL)) {
    const int err = errno;
    if (dir >= 0) ::close(dir);
    return absl::InternalError(absl::StrCat("wrote '", out.path, "', but cannot sync its folder '",
                                            out.folder, "': ", std::strerror(err),
                                            " (a crash now could lose it)"));
  }
  ::close(dir);
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadWhole(const std::string& path, size_t max_bytes) {
  const int fd = path == "-" ? ::dup(STDIN_FILENO) : ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("cannot read '", path, "': ", std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat("'", path, "' is a folder: --in names a file `gstabctl export` wrote"));
  }
  std::string bytes;
  const int e = ReadToEnd(fd, max_bytes, &bytes);
  ::close(fd);
  if (e == EFBIG) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", path, "' holds more than ", max_bytes,
                     " bytes, more than any state gstabd takes: --in names a file "
                     "`gstabctl export` wrote"));
  }
  if (e != 0) {
    return absl::InternalError(absl::StrCat("cannot read '", path, "': ", std::strerror(e)));
  }
  if (bytes.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", path, "' is empty: --in names a file `gstabctl export` wrote"));
  }
  return bytes;
}

}  // namespace gstab::ctl
