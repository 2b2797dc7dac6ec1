// Settings read from the process's environment.
#pragma once

#include <cstdlib>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace gstab {

// The whole number, at least `min`, environment variable `name` holds (`what` says what it
// counts, for the message); nullopt when unset or empty. INVALID_ARGUMENT, naming it, when it
// holds anything else: a setting mistyped would otherwise leave the default in force unseen.
inline absl::StatusOr<std::optional<int>> CheckedFromEnvironment(const char* name, int min,
                                                                 const char* what) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return std::nullopt;
  int value = 0;
  if (!absl::SimpleAtoi(text, &value) || value < min) {
    return absl::InvalidArgumentError(absl::StrCat(name, "='", text, "': expected ", what,
                                                   ", a whole number of at least ", min,
                                                   " (unset: the default)"));
  }
  return value;
}

// GSTAB_CALL_TIMEOUT_S: how long a client's call waits for gstabd's answer, in seconds.
inline absl::StatusOr<std::optional<int>> CallTimeoutFromEnvironment() {
  return CheckedFromEnvironment("GSTAB_CALL_TIMEOUT_S", 1,
                                "how long (seconds) a call waits for gstabd's answer");
}

}  // namespace gstab
