// An exclusive lock on a file beside a path gstabd takes over (its socket), held while gstabd
// uses the path: two gstabds started at once on one --socket (with different --state_dir, whose
// own lock does not stop them) would both find no live socket there, and the later one's
// replacement of the "leftover" would cut the earlier one's workers off from it.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace gstab {

class PathLock {
 public:
  // Locks `lock_path` (flock(2), created with mode 0600 when absent) without waiting.
  // ALREADY_EXISTS when another process holds it; FAILED_PRECONDITION, with the reason, when it
  // cannot be opened. A file a dead process left is taken over: the kernel let go of its lock.
  static absl::StatusOr<PathLock> Take(const std::string& lock_path);
  PathLock(PathLock&& other) noexcept;
  PathLock& operator=(PathLock&&) = delete;
  PathLock(const PathLock&) = delete;
  ~PathLock();  // removes the file (when it is still this one), then lets go of the lock
  // Whether the locked file is still the one at the path (not removed, or replaced, since); a
  // look at the path that fails otherwise than by its absence counts as held.
  bool Held() const;

 private:
  PathLock(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_;
};

}  // namespace gstab
