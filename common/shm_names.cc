#include "common/shm_names.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace gstab {

namespace {

// This process's pid namespace (0 where /proc does not say).
uint64_t PidNamespace() {
  struct stat st;
  return stat("/proc/self/ns/pid", &st) == 0 ? static_cast<uint64_t>(st.st_ino) : 0;
}

}  // namespace

std::string ShmNamePrefix(int pid) { return absl::StrFormat("gstab-%d-%d-", PidNamespace(), pid); }

std::string NewShmName() {
  std::random_device rd;
  return absl::StrFormat("/%s%08x%08x", ShmNamePrefix(getpid()), rd(), rd());
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

// Where /proc does not say (namespace 0), every such process names its objects alike: whose they
// are, and whether their creator lives, is not known, so none is taken for this namespace's.
bool CreatedInThisPidNamespace(const std::string& name) {
  const uint64_t ns = PidNamespace();
  return ns != 0 && name.rfind(absl::StrFormat("/gstab-%d-", ns), 0) == 0;
}

int RemoveStaleShmObjects() {
  int removed = 0;
  const uint64_t ns = PidNamespace();
  if (ns == 0) return 0;  // a pid here may be a live process of another namespace
  const std::string ours = absl::StrFormat("gstab-%d-", ns);
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm", ec)) {
    const std::string file = entry.path().filename().string();
    if (file.rfind(ours, 0) != 0) continue;  // another namespace's (or not gstab's)
    const size_t dash = file.find('-', ours.size());
    int pid = 0;
    if (dash == std::string::npos ||
        !absl::SimpleAtoi(file.substr(ours.size(), dash - ours.size()), &pid) || pid <= 0) {
      continue;
    }
    if (kill(pid, 0) != 0 && errno == ESRCH && shm_unlink(("/" + file).c_str()) == 0) ++removed;
  }
  return removed;
}

}  // namespace gstab
