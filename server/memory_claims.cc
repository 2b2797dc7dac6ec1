#include "server/memory_claims.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace gstab {

absl::StatusOr<std::shared_ptr<void>> MemoryClaims::Claim(
    const std::string& job, const std::vector<Extent>& extents,
    const std::function<std::string(size_t)>& what) {
  State& s = *state_;
  absl::MutexLock lock(&s.mu);
  for (size_t i = 0; i < extents.size(); ++i) {
    const Extent& e = extents[i];
    // Every held extent that could reach e begins within the longest one's length before it.
    const uintptr_t from = e.begin > s.longest ? e.begin - s.longest : 0;
    for (auto it = s.held.lower_bound(from); it != s.held.end() && it->first < e.end; ++it) {
      if (it->second.end > e.begin && it->second.job != job) {
        return absl::FailedPreconditionError(absl::StrCat(
            what(i), " is memory job '", it->second.job,
            "' registered: a job's gradients are its own (both jobs would scale them); give "
            "job '",
            job, "' memory of its own"));
      }
    }
  }
  const uint64_t claim = ++s.claims;
  for (const Extent& e : extents) {
    s.held.emplace(e.begin, Held{e.end, job, claim});
    s.longest = std::max(s.longest, e.end - e.begin);
  }
  return std::shared_ptr<void>(
      nullptr, [state = state_, claim, extents](void*) { Release(state.get(), claim, extents); });
}

void MemoryClaims::Release(State* state, uint64_t claim, const std::vector<Extent>& extents) {
  absl::MutexLock lock(&state->mu);
  for (const Extent& e : extents) {
    auto [first, last] = state->held.equal_range(e.begin);
    for (auto it = first; it != last; ++it) {
      if (it->second.claim == claim && it->second.end == e.end) {
        state->held.erase(it);
        break;
      }
    }
  }
}

}  // namespace gstab
