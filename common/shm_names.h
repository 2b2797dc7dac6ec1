// Names of gstab's host shared-memory objects, shared by the client (which creates them) and
// gstabd (which maps them): "/gstab-<creator pid>-<random>". The pid lets either side remove
// objects whose creator has died. Thread-safe.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace gstab {

// A fresh name for an object created by this process.
std::string NewShmName();

// Accepts "/gstab-" followed by [A-Za-z0-9._-], at most 200 bytes in all. The prefix keeps
// gstabd from being pointed at other programs' shared memory.
absl::Status ValidateShmName(const std::string& name);

// Unlinks every gstab object whose creator process no longer exists; returns how many.
// Mappings that are still open stay valid.
int RemoveStaleShmObjects();

}  // namespace gstab
