// Job names: 1 to 128 characters of [A-Za-z0-9._-]. They name checkpoint files and metrics'
// series, so gstabd refuses others, and gstabctl refuses them before asking. Tensor and group
// names, which the client library checks before gstabd does.
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

// Tensor and group names: 1 to 256 characters of [A-Za-z0-9._/:-].
inline constexpr size_t kMaxTensorNameLength = 256;

inline bool IsTensorName(absl::string_view name) {
  return !name.empty() && name.size() <= kMaxTensorNameLength &&
         std::all_of(name.begin(), name.end(), [](char c) {
           return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' ||
                  c == '-' || c == '/' || c == ':';
         });
}

}  // namespace gstab
