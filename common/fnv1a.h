// FNV-1a, 64 bits: a fast hash of bytes for checks against accidents (a layout or configuration
// compared across nodes, a file cut short), not against an adversary.
#pragma once

#include <cstdint>

#include "absl/strings/string_view.h"

namespace gstab {

inline constexpr uint64_t kFnv1aOffset = 14695981039346656037ull;

// The hash of `bytes`, continuing from `h` (kFnv1aOffset for a fresh one).
inline uint64_t Fnv1a(absl::string_view bytes, uint64_t h = kFnv1aOffset) {
  for (const char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace gstab
