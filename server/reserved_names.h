// Names gstabd gives meaning to, which clients may not use for their own.
#pragma once

namespace gstab {

// The group label of the metrics aggregate of a job's groups beyond --metrics_max_groups; a
// registration may not name a group so.
inline constexpr char kOtherGroup[] = "_other";

}  // namespace gstab
