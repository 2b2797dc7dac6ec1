// Limits both ends of gstab's gRPC connections agree on.
#pragma once

namespace gstab {

// The largest message gstabd and its clients exchange: a job's exported state and statistics
// grow with its norm groups (up to 65536), past gRPC's default of 4 MiB.
inline constexpr int kMaxMessageBytes = 64 << 20;

}  // namespace gstab
