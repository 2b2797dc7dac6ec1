#include "tools/ctl_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/fd_read.h"
#include "tools/ctl_common.h"

namespace gstab::ctl {
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

absl::Status WriteWhole(const std::string& path, const std::string& bytes) {
  if (path == "-") {
    if (int e = WriteAll(STDOUT_FILENO, bytes); e != 0) return CannotWrite("stdout", e);
    return absl::OkStatus();
  }
  struct stat st;
  const bool exists = ::stat(path.c_str(), &st) == 0;  // through symbolic links
  if (exists && S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is a folder: --out names a file"));
  }
  if (exists && !S_ISREG(st.st_mode)) {  // a device, a FIFO: written as it is
    const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return CannotWrite(path, errno);
    const int e = WriteAll(fd, bytes);
    const int closed = ::close(fd) == 0 ? 0 : errno;
    if (e != 0 || closed != 0) return CannotWrite(path, e != 0 ? e : closed);
    return absl::OkStatus();
  }
  std::string target = path;
  if (exists) {  // a symbolic link stays: the file it names is replaced
    char real[PATH_MAX];
    if (::realpath(path.c_str(), real) == nullptr) return CannotWrite(path, errno);
    target = real;
  }
  const std::string partial = absl::StrCat(target, ".partial.", ::getpid());
  const mode_t mode = exists ? (st.st_mode & 07777) : 0666;  // a new file: as the umask says
  const int fd = OpenPartialFile(partial, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) {
    const int err = errno;
    NoPartialFile();
    return CannotWrite(path, err);
  }
  int e = WriteAll(fd, bytes);
  if (e == 0 && exists && ::fchmod(fd, mode) != 0) e = errno;  // the umask may have cut it
  if (e == 0 && ::fsync(fd) != 0) e = errno;
  if (::close(fd) != 0 && e == 0) e = errno;
  if (e == 0 && ::rename(partial.c_str(), target.c_str()) != 0) e = errno;
  if (e != 0) ::unlink(partial.c_str());
  NoPartialFile();
  if (e != 0) return CannotWrite(path, e);
  // The rename made durable: without the folder's sync, a crash could leave the previous file
  // (or none) under the name after "exported". A file system without it (EINVAL) has nothing to
  // lose, and a folder this user may write but not read (a drop folder) cannot be synced.
  const size_t slash = target.rfind('/');
  const std::string folder = slash == std::string::npos ? "." : target.substr(0, slash + 1);
  const int dir = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0 && (errno == EACCES || errno == EPERM)) return absl::OkStatus();
  if (dir < 0 || (::fsync(dir) != 0 && errno != EINVAL)) {
    const int err = errno;
    if (dir >= 0) ::close(dir);
    return absl::InternalError(absl::StrCat("wrote '", path, "', but cannot sync its folder '",
                                            folder, "': ", std::strerror(err),
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
