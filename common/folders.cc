#include "common/folders.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"

namespace gstab {

absl::Status CreateFolders(const std::string& path, mode_t mode) {
  // The missing folders, outermost first.
  std::vector<std::filesystem::path> missing;
  struct stat st;
  for (std::filesystem::path p = std::filesystem::path(path).lexically_normal();
       !p.empty() && ::stat(p.c_str(), &st) != 0; p = p.parent_path()) {
    missing.insert(missing.begin(), p);
    if (p == p.parent_path()) break;
  }
  for (const std::filesystem::path& p : missing) {
    // chmod after mkdir, whose mode the umask reduces; one made meanwhile by another is theirs.
    const bool made = ::mkdir(p.c_str(), mode) == 0;
    if ((!made && errno != EEXIST) || (made && ::chmod(p.c_str(), mode) != 0)) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot create the folder '", p.string(), "': ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

}  // namespace gstab
