// Job names: 1 to 128 characters of [A-Za-z0-9._-]. They name checkpoint files and metrics'
// series, so gstabd refuses others, and gstabctl refuses them before asking.
#pragma once

#include <algorithm>
#include <cstddef>

#include "absl/strings/ascii.h"
#include "absl/strings/string_view.h"

namespace gstab {

inline constexpr size_t kMaxJobNameLength = 128;

inline bool IsJobName(absl::string_view job) {
  return !job.empty() && job.size() <= kMaxJobNameLength &&
         std::all_of(job.begin(), job.end(), [](char c) {
           return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' ||
                  c == '-';
         });
}

}  // namespace gstab
