// Settings read from the process's environment.
#pragma once

#include <cstdlib>
#include <optional>

#include "absl/strings/numbers.h"

namespace gstab {

// The positive integer environment variable `name` holds; nullopt when it is unset, not a
// number, or not positive (the caller's default stands then).
inline std::optional<int> PositiveFromEnvironment(const char* name) {
  int value = 0;
  const char* text = std::getenv(name);
  if (text == nullptr || !absl::SimpleAtoi(text, &value) || value <= 0) return std::nullopt;
  return value;
}

}  // namespace gstab
