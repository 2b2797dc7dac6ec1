// Settings read from the process's environment.
#pragma once

#include <cstdlib>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace gstab {

// The positive integer environment variable `name` holds; nullopt when it is unset, not a
// number, or not positive (the caller's default stands then).
inline std::optional<int> PositiveFromEnvironment(const char* name) {
  int value = 0;
  const char* text = std::getenv(name);
  if (text == nullptr || !absl::SimpleAtoi(text, &value) || value <= 0) return std::nullopt;
  return value;
}

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

}  // namespace gstab
