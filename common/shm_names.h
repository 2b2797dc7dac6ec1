// Names of gstab's host shared-memory objects, shared by the client (which creates them) and
// gstabd (which maps them): "/gstab-<creator's pid namespace>-<creator pid>-<random>". The pid
// lets a process of the same pid namespace remove objects whose creator has died; the
// namespace (the inode of /proc/self/ns/pid) keeps processes of other namespaces (containers
// that share /dev/shm, for example pods with hostIPC) from taking a live creator for a dead one.
// Thread-safe.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace gstab {

// A fresh name for an object created by this process.
std::string NewShmName();
// How the names of objects created by process `pid` (of this process's pid namespace) begin,
// without the leading '/': "gstab-<namespace>-<pid>-".
std::string ShmNamePrefix(int pid);
// Whether object `name` ("/gstab-...") was created by a process of this pid namespace (false
// where /proc does not tell this process's namespace).
bool CreatedInThisPidNamespace(const std::string& name);

// Accepts "/gstab-" followed by [A-Za-z0-9._-], at most 200 bytes in all. The prefix keeps
// gstabd from being pointed at other programs' shared memory.
absl::Status ValidateShmName(const std::string& name);

// Unlinks every gstab object created in this process's pid namespace whose creator no longer
// exists; returns how many. Mappings that are still open stay valid. None where /proc does not
// tell this process's namespace.
int RemoveStaleShmObjects();

}  // namespace gstab
