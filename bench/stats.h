// Order statistics for the benchmark programs.
#pragma once

#include <algorithm>
#include <vector>

namespace gstab::bench {

// The value at fraction `p` (0: min, 0.5: median, 1: max) of `v`.
inline double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(p * static_cast<double>(v.size() - 1))];
}

}  // namespace gstab::bench
