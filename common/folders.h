// Creating the folders gstabd works in, with modes that do not depend on the umask it was
// started with.
#pragma once

#include <sys/types.h>

#include <string>

#include "absl/status/status.h"

namespace gstab {

// Creates `path` with exactly `mode`, and any missing folders above it with 0755, whatever the
// umask (under umask 077 a socket's folder would shut out the group it is shared with, under
// umask 000 anyone could delete a checkpoint). Folders that exist are left as they are.
// FAILED_PRECONDITION, naming the folder and the reason, when one cannot be made.
absl::Status CreateFolders(const std::string& path, mode_t mode);

}  // namespace gstab
