#include "common/pem_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/fd_read.h"

namespace gstab {

absl::StatusOr<std::string> ReadPemFile(const std::string& named_by, const std::string& path) {
  // Not there, not readable, empty: the machine's (a secret not mounted or not written yet, no
  // permission), which may mend by itself. A file with no PEM block in it: the flag's.
  auto unreadable = [&](const std::string& why) {
    return absl::FailedPreconditionError(
        absl::StrCat(named_by, "=", path, ": not a readable PEM file (", why, ")"));
  };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return unreadable(std::strerror(errno));
  std::string text;
  const int err = ReadToEnd(fd, size_t{1} << 20, &text);  // no certificate chain is this long
  ::close(fd);
  if (err != 0 && err != EFBIG) return unreadable(std::strerror(err));
  if (text.empty()) return unreadable("it is empty");
  if (err == EFBIG || text.find("-----BEGIN") == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(named_by, "=", path, ": not a readable PEM file (no PEM block in it)"));
  }
  return text;
}

}  // namespace gstab
