// The files `gstabctl export` writes and `gstabctl import` reads.
#pragma once

#include <sys/stat.h>

#include <cstddef>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gstab::ctl {

// Where `gstabctl export --out=PATH` writes, worked out (and checked) before the export.
struct Output {
  enum Kind {
    kDescriptor,  // "-" (stdout), /dev/stdout, /dev/stderr, /dev/fd/N: that descriptor
    kInPlace,     // a device, a FIFO: opened and written as it is, never replaced by a file
    kReplace,     // a regular file, or a new one: written beside it, then renamed over it
  };
  Kind kind = kReplace;
  std::string path;  // as given
  int fd = -1;       // kDescriptor
  // kReplace: the file replaced (through symbolic links, whether or not it exists yet), its
  // folder (ending in '/'), and what it was when it exists (its mode, owner and group stay
  // where this user may keep them).
  std::string target;
  std::string folder;
  std::optional<struct stat> existing;
};

// INVALID_ARGUMENT for a folder, or a file whose folder this user cannot write; INTERNAL for
// a file it cannot write (read-only: replacing it would get around that).
absl::StatusOr<Output> ResolveOutput(const std::string& path);

// Writes `bytes` where `out` says.
absl::Status WriteWhole(const Output& out, const std::string& bytes);

// The temporary file of a write under way, which the signal thread removes before gstabctl
// dies of a signal (RemovePartialFileForGood). A signal's removal and the creation do not
// interleave.
// Creates `path` (open's flags and mode) as that file; NoPartialFile once it is renamed or
// removed.
int OpenPartialFile(const std::string& path, int flags, mode_t mode);
void NoPartialFile();
// Removes the file of a write under way, if any, and keeps any other from being made: for a
// process about to die.
void RemovePartialFileForGood();

// All of `path` ("-": stdin), refused past `max_bytes` (no state is larger than gstabd takes).
absl::StatusOr<std::string> ReadWhole(const std::string& path, size_t max_bytes);

}  // namespace gstab::ctl
