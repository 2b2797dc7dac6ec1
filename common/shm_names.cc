#include "common/shm_names.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace gstab {

std::string NewShmName() {
  std::random_device rd;
  return absl::StrFormat("/gstab-%d-%08x%08x", getpid(), rd(), rd());
}

absl::Status ValidateShmName(const std::string& name) {
  constexpr char kPrefix[] = "/gstab-";
  if (name.rfind(kPrefix, 0) != 0 || name.size() == sizeof(kPrefix) - 1 || name.size() > 200) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shared memory name '", name, "' must be \"/gstab-\" followed by 1 to 193 characters"));
  }
  for (char c : name.substr(1)) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "shared memory name '", name, "' may only contain letters, digits, '.', '_' and '-'"));
    }
  }
  return absl::OkStatus();
}

int RemoveStaleShmObjects() {
  int removed = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm", ec)) {
    const std::string file = entry.path().filename().string();
    if (file.rfind("gstab-", 0) != 0) continue;
    const size_t dash = file.find('-', 6);
    int pid = 0;
    if (dash == std::string::npos || !absl::SimpleAtoi(file.substr(6, dash - 6), &pid) ||
        pid <= 0) {
      continue;
    }
    if (kill(pid, 0) != 0 && errno == ESRCH && shm_unlink(("/" + file).c_str()) == 0) ++removed;
  }
  return removed;
}

}  // namespace gstab
