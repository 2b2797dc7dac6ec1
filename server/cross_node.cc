#include "server/cross_node.h"

#include <array>
#include <cstring>
#include <type_traits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "core/config.h"
#include "glog/logging.h"
#include "gstab/v1/stabilizer.pb.h"
#include "kernels/cross_node_mode.h"

namespace gstab {
namespace {

// Time the survivors give each other to report after a failure, to name who is missing.
constexpr absl::Duration kDiagnoseTimeout = absl::Seconds(1);

absl::Status NameMissing(Collective* c, const std::string& job, uint64_t step,
                         const absl::Status& failure) {
  if (absl::IsFailedPrecondition(failure)) {
    // Broken at an earlier step, which named who was missing: no new diagnosis (a second each).
    return absl::FailedPreconditionError(
        absl::StrCat("step ", step, " of job '", job, "' on node ", c->rank(), ": ",
                     failure.message()));
  }
  std::vector<uint32_t> missing = c->MissingNodes(step, kDiagnoseTimeout);
  // A peer whose connection closed has stopped or died; one that stays silent, stalled.
  const bool closed = absl::StrContains(failure.message(), "losed by peer") ||
                      absl::StrContains(failure.message(), "reset by peer") ||
                      absl::StrContains(failure.message(), "Broken pipe");
  std::string who = missing.empty()
                        ? "no node is missing from the rendezvous store, so a node stalled"
                        : absl::StrCat("node(s) ", absl::StrJoin(missing, ", "), " of ", c->size(),
                                       closed ? " closed the connection (stopped, or gone)"
                                              : " did not respond");
  absl::Status named(
      failure.code(),
      absl::StrCat("step ", step, " of job '", job, "' on node ", c->rank(), ": ", who, " (",
                   failure.message(), "); attach every worker again with a new rendezvous"));
  LOG(WARNING) << named;  // the node's own log says so too, not only its workers'
  return named;
}

}  // namespace

uint8_t CrossNodeMode(int reduction, uint32_t node_rank) {
  if (reduction == v1::REDUCTION_REPLICATED) return kKeepOwn;
  if (reduction == v1::REDUCTION_NODE_SHARDED && node_rank != 0) return kTakeOnly;
  return kAddAndTake;
}

namespace {

// FNV-1a, continuing from `h`.
constexpr uint64_t kFnvOffset = 1469598103934665603ull;
uint64_t Fnv1a(absl::string_view bytes, uint64_t h = kFnvOffset) {
  for (char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

uint64_t LayoutHash(absl::Span<const std::string> groups, absl::Span<const int> reduction) {
  uint64_t h = kFnvOffset;
  for (size_t g = 0; g < groups.size(); ++g) {
    const char end[2] = {0, static_cast<char>(reduction[g])};  // the name's end, its reduction
    h = Fnv1a(absl::string_view(end, 2), Fnv1a(groups[g], h));
  }
  return h;
}

uint64_t ConfigHash(const RuleParams& params) {
  return Fnv1a(EffectiveConfig(params).SerializeAsString());
}

namespace {

// The step check's doubles: (x, -x) for the step, the layout's and the configuration's halves
// and the group count; a node wants node 0's statistics; a node refuses the step.
constexpr size_t kCheckSize = 14;

}  // namespace

std::string PeerRecordLayout() {
  return absl::StrCat("check ", kCheckSize, ", rule ", sizeof(RuleParams), ", statistics ",
                      sizeof(GroupStats));
}

absl::Status ReduceAcrossNodes(Collective* c, const std::string& job, uint64_t step,
                               const StepCheck& mine, absl::Duration timeout, NodePartials* p,
                               StepAgreement* agreement) {
  const size_t groups = p->sums.size();
  // Check: max of (x, -x) gives every node the same max and min, so all detect a mismatch.
  auto high = [](uint64_t h) { return static_cast<double>(h >> 32); };
  auto low = [](uint64_t h) { return static_cast<double>(h & 0xffffffffu); };
  const double s = static_cast<double>(step);
  const double n = static_cast<double>(groups);
  const double hi = high(mine.layout_hash), lo = low(mine.layout_hash);
  const double chi = high(mine.config_hash), clo = low(mine.config_hash);
  // [0..11]: (x, -x) for the step, the layout's and the configuration's halves and the group
  // count; [12]: a node wants node 0's statistics; [13]: a node refuses the step.
  std::array<double, kCheckSize> check;  // its size is what PeerRecordLayout says
  size_t at = 0;
  for (double x : {s, hi, lo, n, chi, clo}) {
    check[at++] = x;
    check[at++] = -x;
  }
  check[at++] = mine.want_statistics ? 1.0 : 0.0;
  check[at] = mine.refused ? 1.0 : 0.0;
  if (absl::Status st = c->AllReduceMax(absl::MakeSpan(check), timeout); !st.ok()) {
    return NameMissing(c, job, step, st);
  }
  if (check[13] > 0) {
    return absl::AbortedError(
        absl::StrCat("step ", step, " of job '", job, "' was refused on ",
                     mine.refused ? "this node" : "another node (its workers were told why)",
                     "; no node changed anything, and the next step can go on"));
  }
  if (check[0] != -check[1]) {
    return absl::InvalidArgumentError(
        absl::StrCat("step numbers differ across the nodes of job '", job, "': this node (",
                     c->rank(), ") is at step ", step, ", the nodes range from ", -check[1], " to ",
                     check[0], "; nothing was summed"));
  }
  if (check[2] != -check[3] || check[4] != -check[5] || check[6] != -check[7]) {
    return absl::InvalidArgumentError(absl::StrCat(
        "norm-group layouts differ across the nodes of job '", job, "' (this node has ", groups,
        " groups, others between ", -check[7], " and ", check[6],
        " or other names); every node must register the same groups; nothing was summed"));
  }
  agreement->configs_differ = check[8] != -check[9] || check[10] != -check[11];
  // Node 0's statistics go with its configuration (they are expressed for its betas).
  agreement->sync_statistics = check[12] > 0 || agreement->configs_differ;
  std::vector<uint8_t> modes(groups);
  std::vector<double> data(2 * groups, 0.0);
  for (size_t g = 0; g < groups; ++g) {
    modes[g] = CrossNodeMode(p->reduction[g], c->rank());
    if (modes[g] == kAddAndTake) data[g] = p->sums[g];
    data[groups + g] = p->non_finite[g] ? 1.0 : 0.0;
  }
  if (absl::Status st = c->AllReduceSum(absl::MakeSpan(data), timeout); !st.ok()) {
    return NameMissing(c, job, step, st);
  }
  for (size_t g = 0; g < groups; ++g) {
    if (modes[g] != kKeepOwn) p->sums[g] = data[g];
    p->non_finite[g] = data[groups + g] > 0 ? 1 : 0;
  }
  return absl::OkStatus();
}

namespace {

// Replaces `count` values at `values` with node 0's (every node runs the same gstabd build).
template <typename T>
absl::Status BroadcastValues(Collective* c, absl::Duration timeout, T* values, size_t count) {
  static_assert(std::is_trivially_copyable_v<T>);
  std::vector<char> bytes(count * sizeof(T));
  std::memcpy(bytes.data(), values, bytes.size());
  if (absl::Status s = c->Broadcast(absl::MakeSpan(bytes), timeout); !s.ok()) return s;
  std::memcpy(values, bytes.data(), bytes.size());
  return absl::OkStatus();
}

}  // namespace

absl::Status SyncStatistics(Collective* c, absl::Duration timeout, std::vector<GroupStats>* stats) {
  return BroadcastValues(c, timeout, stats->data(), stats->size());
}

absl::Status BroadcastParams(Collective* c, absl::Duration timeout, RuleParams* params) {
  return BroadcastValues(c, timeout, params, 1);
}

}  // namespace gstab
