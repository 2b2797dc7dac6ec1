// The marks gstabd writes in a worker's progress word (RegisterBuffersRequest.progress) around
// the scaling of a step's gradients, and its client reads after a Step cut off.
#pragma once

#include <cstdint>

namespace gstab {

// Before gstabd writes any of step `step`'s gradients.
inline constexpr uint64_t ScalingMark(uint64_t step) { return step * 4 + 1; }
// Once it has written all of them.
inline constexpr uint64_t ScaledMark(uint64_t step) { return step * 4 + 2; }

}  // namespace gstab
