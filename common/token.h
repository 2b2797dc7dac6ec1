// Unguessable identifiers (session and rendezvous tokens): 128 random bits in hex.
#pragma once

#include <random>
#include <string>

#include "absl/strings/str_cat.h"

namespace gstab {

inline std::string RandomToken() {
  std::random_device rd;
  std::string token;
  for (int i = 0; i < 4; ++i) absl::StrAppend(&token, absl::Hex(rd(), absl::kZeroPad8));
  return token;
}

}  // namespace gstab
