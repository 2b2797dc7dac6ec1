#include "server/memory_claims.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace gstab {

absl::StatusOr<std::shared_ptr<void>> MemoryClaims::Claim(
    const std::string& job, const std::vector<Extent>& extents,
    const std::function<std::string(size_t)>& what) {
  std::vector<size_t> order(extents.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return extents[a].begin < extents[b].begin; });
  State& s = *state_;
  absl::MutexLock lock(&s.mu);
  // One sweep over both, in order of their beginnings: an extent overlaps one of the other side
  // that began before it exactly when the furthest end of those reaches past its beginning.
  const Held* held_reach = nullptr;  // another job's held extent that reaches furthest so far
  size_t new_reach = order.size();   // the new extent that reaches furthest so far
  auto held = s.held.begin();
  for (size_t next = 0; next < order.size() || held != s.held.end();) {
    const bool take_new =
        next < order.size() && (held == s.held.end() || extents[order[next]].begin <= held->first);
    if (take_new) {
      const size_t i = order[next++];
      if (held_reach != nullptr && held_reach->end > extents[i].begin) {
        return Refusal(job, held_reach->job, what(i));
      }
      if (new_reach == order.size() || extents[i].end > extents[new_reach].end) new_reach = i;
    } else {
      const Held& h = held->second;
      if (h.job != job) {
        if (new_reach != order.size() && extents[new_reach].end > held->first) {
          return Refusal(job, h.job, what(new_reach));
        }
        if (held_reach == nullptr || h.end > held_reach->end) held_reach = &h;
      }
      ++held;
    }
  }
  const uint64_t claim = ++s.claims;
  for (const Extent& e : extents) s.held.emplace(e.begin, Held{e.end, job, claim});
  return std::shared_ptr<void>(
      nullptr, [state = state_, claim, extents](void*) { Release(state.get(), claim, extents); });
}

absl::Status MemoryClaims::Refusal(const std::string& job, const std::string& holder,
                                   const std::string& what) {
  return absl::FailedPreconditionError(absl::StrCat(
      what, " is memory job '", holder,
      "' registered: a job's gradients are its own (both jobs would scale them); give job '", job,
      "' memory of its own"));
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
