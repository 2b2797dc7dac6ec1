// The files `gstabctl export` writes and `gstabctl import` reads.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gstab::ctl {

// Writes `bytes` to `path`. "-" is stdout. A regular file, or a new one, is replaced whole
// (written beside it, then renamed over it, keeping an existing file's mode; through a symbolic
// link, the file it names). Anything else that exists there (/dev/null, /dev/stdout, a FIFO) is
// written in place: never replaced by a file.
absl::Status WriteWhole(const std::string& path, const std::string& bytes);

// All of `path` ("-": stdin), refused past `max_bytes` (no state is larger than gstabd takes).
absl::StatusOr<std::string> ReadWhole(const std::string& path, size_t max_bytes);

}  // namespace gstab::ctl
