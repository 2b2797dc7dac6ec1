#include "common/folders.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"

namespace gstab {
namespace {

// Gives the folder gstabd has just made `mode`, by descriptor: its name could be swapped for a
// link between the mkdir and a chmod by path.
bool SetMode(const std::filesystem::path& folder, mode_t mode) {
  const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return false;
  const bool set = ::fchmod(fd, mode) == 0;
  const int saved = errno;
  ::close(fd);
  errno = saved;
  return set;
}

}  // namespace

absl::Status CreateFolders(const std::string& path, mode_t mode) {
  // The missing folders, outermost first, named as given (a ".." after a link goes where the
  // kernel takes it, not where a tidied path would).
  std::filesystem::path target(path);
  while (target.has_relative_path() && target.filename().empty()) target = target.parent_path();
  std::vector<std::filesystem::path> missing;
  struct stat st;
  for (std::filesystem::path p = target; !p.empty() && ::stat(p.c_str(), &st) != 0;
       p = p.parent_path()) {
    missing.insert(missing.begin(), p);
    if (p == p.parent_path()) break;
  }
  for (const std::filesystem::path& p : missing) {
    // The folder asked for gets `mode`; those above it 0755, which shuts no one out of what
    // is below (a socket's folder and a state folder may share them).
    const mode_t want = p == target ? mode : 0755;
    const bool made = ::mkdir(p.c_str(), want) == 0;  // the umask reduces its mode: set below
    if ((!made && errno != EEXIST) || (made && !SetMode(p, want))) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot create the folder '", p.string(), "': ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

}  // namespace gstab
