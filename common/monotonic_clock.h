// A clock for measuring time spans (leases, idle times, intervals) that the wall clock's steps
// (NTP, a VM resumed) do not move: a wall clock stepped forward by more than a lease would
// expire every session at once.
#pragma once

#include <chrono>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace gstab {

// An absl::Time for differences and comparisons with other MonotonicNow values only: it is no
// date (its epoch is the machine's boot, roughly).
inline absl::Time MonotonicNow() {
  return absl::UnixEpoch() + absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
}

}  // namespace gstab
