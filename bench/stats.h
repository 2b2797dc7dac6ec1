// Order statistics for the benchmark programs.
#pragma once

#include <algorithm>
#include <limits>
#include <vector>

namespace gstab::bench {

// The value at fraction `p` (0: min, 0.5: median, 1: max) of `v`; NaN for no values.
inline double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(p * static_cast<double>(v.size() - 1))];
}

}  // namespace gstab::bench
