#include "server/cross_node.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "absl/base/casts.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "common/fnv1a.h"
#include "core/config.h"
#include "glog/logging.h"
#include "gstab/v1/stabilizer.pb.h"
#include "kernels/cross_node_mode.h"
#include "server/exchanged_fields.h"
#include "server/grpc_status.h"
#include "server/registration.h"
#include "server/rendezvous_store.h"

namespace gstab {
namespace {

// Time the survivors give each other to report after a failure, to name who is missing.
constexpr absl::Duration kDiagnoseTimeout = absl::Seconds(1);

}  // namespace

absl::Status NameFailure(Collective* c, const std::string& job, uint64_t step,
                         const absl::Status& failure) {
  if (absl::IsFailedPrecondition(failure)) {
    // Broken at an earlier step, which named who was missing: no new diagnosis (a second each).
    return absl::FailedPreconditionError(
        absl::StrCat("step ", step, " of job '", job, "' on node ", c->rank(), ": ",
                     failure.message()));
  }
  // A gstabd's stop, this one's (not counted as a failing step) or another node's (its store's).
  if (c->Stopping() || absl::StrContains(failure.message(), kThisGstabdStopping) ||
      absl::StrContains(failure.message(), kStoreStopping)) {
    return AsStopping(
        *c, absl::UnavailableError(absl::StrCat(
                "step ", step, " of job '", job, "' on node ", c->rank(), ": ", failure.message(),
                "; attach every worker again with a new rendezvous once it is back")));
  }
  if (absl::StrContains(failure.message(), kUnknownToken) ||
      absl::StrContains(failure.message(), kStoreRefused)) {
    // The store answered, and said why (the rendezvous unknown or expired, its caps): no node
    // is to blame, and no retry with this blob can succeed (Gloo's failure is UNAVAILABLE
    // whatever the store said).
    absl::Status expired = absl::FailedPreconditionError(absl::StrCat(
        "step ", step, " of job '", job, "' on node ", c->rank(), ": ", failure.message()));
    LOG(WARNING) << expired;
    return expired;
  }
  if (absl::StrContains(failure.message(), kStoreUnreachable)) {
    // Nothing to ask the store about the other nodes: say what is wrong.
    absl::Status unreachable(
        failure.code(),
        absl::StrCat("step ", step, " of job '", job, "' on node ", c->rank(), ": ",
                     failure.message(),
                     ": its gstabd (node 0's) stopped, or the nodes' peer certificates do not "
                     "pass each other's checks (each gstabd's log says which; docs/multinode.md, "
                     "Certificates); attach every worker again with a new rendezvous"));
    LOG(WARNING) << unreachable;
    return unreachable;
  }
  absl::StatusOr<std::vector<uint32_t>> missing = c->MissingNodes(step, kDiagnoseTimeout);
  // A peer whose connection closed has stopped or died, or gave up on a stalled node first and
  // closed its own connections (each node's timeout closes them, and its neighbours then see
  // them close): a closed connection does not tell which.
  const bool closed = absl::StrContains(failure.message(), "losed by peer") ||
                      absl::StrContains(failure.message(), "reset by peer") ||
                      absl::StrContains(failure.message(), "Broken pipe");
  std::string who;
  if (!missing.ok()) {
    who = absl::StrCat(
        "a node failed or stalled, and node 0's rendezvous store could not say "
        "which (",
        missing.status().message(), ")");
  } else if (missing->empty() && absl::StrContains(failure.message(), kCannotConnect) &&
             !absl::StrContains(failure.message(), kStoreKeyNotSet)) {
    // (A connect that ended waiting for a node's key tried no connection: that node came late.)
    who =
        "every node came to connect (none is missing from the rendezvous store), and the "
        "connections between them failed: the ports gstabd's Gloo listens on cannot be reached "
        "from the other nodes (a firewall; docs/multinode.md), or a node stopped as it connected";
  } else if (missing->empty()) {
    who =
        "no node is missing from the rendezvous store, so a node stalled (this one among them, "
        "if its gstabd or machine was paused, or it came past the others' deadline)";
  } else {
    who = absl::StrCat("node(s) ", absl::StrJoin(*missing, ", "),
                       missing->size() == Collective::kMaxMissingNamed
                           ? " (and maybe more: the first ones "
                             "asked about)"
                           : "",
                       " of ", c->size(),
                       closed ? " did not answer (a connection closed: a node stopped or went, or "
                                "another gave up on a stalled one first)"
                              : " did not respond");
  }
  absl::Status named(
      failure.code(),
      absl::StrCat("step ", step, " of job '", job, "' on node ", c->rank(), ": ", who, " (",
                   failure.message(),
                   "); nodes whose exchange ended before the failure may have applied this step, "
                   "which this node did not (their workers' results say): attach every worker "
                   "again with a new rendezvous"));
  LOG(WARNING) << named;  // the node's own log says so too, not only its workers'
  return AsStopping(*c, named);  // this gstabd's stop began while the store was asked
}

bool ReplicaSumsDiffer(double a, double b) {
  return std::isfinite(a) && std::isfinite(b) &&
         std::abs(a - b) > 1e-5 * std::max(std::abs(a), std::abs(b));
}

uint8_t CrossNodeMode(int reduction, uint32_t node_rank) {
  if (reduction < 0) return kUnregistered;  // Job's mark of a group no worker registers
  if (reduction == v1::REDUCTION_REPLICATED) return kKeepOwn;
  if (reduction == v1::REDUCTION_NODE_SHARDED && node_rank != 0) return kTakeOnly;
  return kAddAndTake;
}

namespace {

// The start of the layout and configuration hashes (as released: nodes compare them).
constexpr uint64_t kHashStart = 1469598103934665603ull;

}  // namespace

uint64_t LayoutHash(absl::Span<const std::string> groups, absl::Span<const int> reduction) {
  uint64_t h = kHashStart;
  for (size_t g = 0; g < groups.size(); ++g) {
    const char end[2] = {0, static_cast<char>(reduction[g])};  // the name's end, its reduction
    h = Fnv1a(absl::string_view(end, 2), Fnv1a(groups[g], h));
  }
  return h;
}

uint64_t ConfigHash(const RuleParams& params) {
  return Fnv1a(EffectiveConfig(params).SerializeAsString(), kHashStart);
}

namespace {

// The record every node contributes to a step's all-gather, in 64-bit words: the step, the
// layout's and the configuration's fingerprints, the group count, the flags and node 0's first
// step (StepCheck::first_step), then, for a job
// of at most kGatheredGroups groups, what the node adds to each group's sum of squares and its
// non-finite flags, as doubles. A larger job sums those in a second collective.
constexpr size_t kGatheredGroups = 32;
enum RecordWord : size_t { kStep, kLayout, kConfig, kGroups, kFlags, kFirstStep, kSums };
constexpr size_t kNonFinite = kSums + kGatheredGroups;
constexpr size_t kRecordWords = kNonFinite + kGatheredGroups;
// A group's flag word in a record.
constexpr uint64_t kPresent = 1;          // the node's workers registered the group
constexpr uint64_t kNonFiniteFlag = 2;    // and its gradients were not finite
constexpr uint64_t kWantsStatistics = 1;  // kFlags: the node is to take node 0's statistics
constexpr uint64_t kRefuses = 2;          // kFlags: the node refuses the step

// The nodes' records, as every node received them (the same words on every node).
class Records {
 public:
  explicit Records(uint32_t nodes) : words_(nodes * kRecordWords) {}
  absl::Span<char> bytes() {
    return absl::MakeSpan(reinterpret_cast<char*>(words_.data()), words_.size() * sizeof(uint64_t));
  }
  uint32_t nodes() const { return static_cast<uint32_t>(words_.size() / kRecordWords); }
  uint64_t at(uint32_t node, size_t word) const { return words_[node * kRecordWords + word]; }
  double value(uint32_t node, size_t word) const { return absl::bit_cast<double>(at(node, word)); }
  bool any(uint64_t flag) const {
    for (uint32_t r = 0; r < nodes(); ++r) {
      if ((at(r, kFlags) & flag) != 0) return true;
    }
    return false;
  }
  // Whether some node's `word` differs from node 0's.
  bool differ(size_t word) const {
    for (uint32_t r = 1; r < nodes(); ++r) {
      if (at(r, word) != at(0, word)) return true;
    }
    return false;
  }
  uint64_t min(size_t word) const { return Extreme(word, true); }
  uint64_t max(size_t word) const { return Extreme(word, false); }

 private:
  uint64_t Extreme(size_t word, bool lowest) const {
    uint64_t x = at(0, word);
    for (uint32_t r = 1; r < nodes(); ++r) {
      x = lowest ? std::min(x, at(r, word)) : std::max(x, at(r, word));
    }
    return x;
  }
  std::vector<uint64_t> words_;
};

}  // namespace

absl::Status StepNotAfterLast(const std::string& job, uint64_t step, uint64_t last_step,
                              bool node_zeros) {
  return absl::InvalidArgumentError(absl::StrCat(
      "step ", step, " of job '", job, "' is not after its last step, ", last_step,
      node_zeros ? " (node 0's: the job's nodes follow node 0's step numbers)" : "",
      ": go on from step ", last_step + 1,
      " (a run resumed from its checkpoint imports the gstab state saved with it, which sets the "
      "step count: Stabilizer(state=...) in gstab.torch, import_state, `gstabctl import`",
      node_zeros ? ", on node 0" : "",
      "; to start the job afresh, stop its workers and run `gstabctl forget --job=", job, "`",
      node_zeros ? " on every node" : "", ")"));
}

std::string PeerRecordLayout() {
  return absl::StrCat("step record ", kRecordWords, " words (", kGatheredGroups,
                      " groups, presence flags), GPU layout ", kGpuLayoutValues, " values, rule ",
                      sizeof(RuleParams), ", statistics ", sizeof(GroupStats), ", fields ",
                      absl::Hex(ExchangedFieldsHash()),
                      ", connections by mesh keys, a non-finite group skipping the whole step, "
                      "replicated sums compared, host-memory nodes in the GPU layout agreement, "
                      "replicated groups taking node 0's sum, compared at any group count");
}

namespace {

// Group `g` as messages name it: 'its name', or #g where the caller gave no names.
std::string GroupLabel(const NodePartials& p, size_t g) {
  return p.group_name ? absl::StrCat("'", p.group_name(g), "'") : absl::StrCat("#", g);
}

// The groups this node's workers registered before and none registers now, for the layout
// refusal.
std::string Unregistered(const NodePartials& p) {
  std::vector<std::string> names;
  for (size_t g = 0; g < p.present.size(); ++g) {
    if (p.present[g]) continue;
    if (names.size() == 5) {
      names.push_back("...");
      break;
    }
    names.push_back(GroupLabel(p, g));
  }
  if (names.empty()) return "";
  return absl::StrCat(
      "; this node has groups that a worker registered before and none registers now (",
      absl::StrJoin(names, ", "),
      "): a group stays with its job, so register it again, or start the job afresh "
      "(gstabctl forget)");
}

// For a layout mismatch: where this node's groups first differ from another node's (node 0's;
// for node 0, the first node that differs), from every node's fingerprint of each group's name
// and reduction, gathered. Every node calls it (they reach the same verdict from the same
// records); the gather's failure when it failed; empty when it cannot tell (the difference
// lies past the groups compared: as many as 64 MiB of fingerprints from every node hold, the
// same number on every node, so that a mismatch of many groups on many nodes costs no node its
// memory).
std::string FirstDifference(Collective* c, const NodePartials& p, uint64_t max_groups,
                            absl::Duration timeout) {
  constexpr uint64_t kMaxCompared = 65536;  // the most groups a job has
  constexpr uint64_t kMaxGatheredBytes = uint64_t{64} << 20;
  if (max_groups == 0 || max_groups > kMaxCompared) return "";
  const size_t n = static_cast<size_t>(
      std::min<uint64_t>(max_groups, kMaxGatheredBytes / (sizeof(uint64_t) * c->size())));
  std::vector<std::string> names(p.reduction.size());
  std::vector<uint64_t> mine(n, 0);  // 0: no group there
  for (size_t g = 0; g < names.size() && g < n; ++g) {
    names[g] = p.group_name ? p.group_name(g) : absl::StrCat("#", g);
    mine[g] =
        LayoutHash(absl::MakeConstSpan(&names[g], 1), absl::MakeConstSpan(&p.reduction[g], 1));
  }
  std::vector<uint64_t> all(n * c->size());
  if (absl::Status s = c->AllGather(
          absl::Span<const char>(reinterpret_cast<const char*>(mine.data()), n * sizeof(uint64_t)),
          absl::Span<char>(reinterpret_cast<char*>(all.data()), all.size() * sizeof(uint64_t)),
          timeout);
      !s.ok()) {
    // The communicator is broken now: the next step would say only that.
    return absl::StrCat("; the exchange that would have named the first difference failed (",
                        s.message(),
                        "), which leaves the job's nodes unable to step: attach every worker "
                        "again, with a new rendezvous, once the layouts agree");
  }
  auto list = [&](uint32_t node) { return absl::MakeConstSpan(&all[node * n], n); };
  uint32_t other = 0;
  for (uint32_t node = 1; c->rank() == 0 && other == 0 && node < c->size(); ++node) {
    if (list(node) != list(0)) other = node;
  }
  if (other == c->rank()) return "";
  const absl::Span<const uint64_t> ours = list(c->rank()), theirs = list(other);
  for (size_t g = 0; g < n; ++g) {
    if (ours[g] == theirs[g]) continue;
    return absl::StrCat(
        "; the first difference from node ", other, " is group #", g, ": here ",
        ours[g] == 0 ? "none"
                     : absl::StrCat("'", names[g], "' (", ReductionName(p.reduction[g]), ")"),
        ", there ",
        theirs[g] == 0 ? "none"
        : ours[g] == 0 ? "a group"
                       : "another name or reduction");
  }
  return "";
}

}  // namespace

absl::Status ReduceAcrossNodes(Collective* c, const std::string& job, uint64_t step,
                               const StepCheck& mine, absl::Duration timeout, NodePartials* p,
                               StepAgreement* agreement) {
  const size_t groups = p->sums.size();
  const bool gathered = groups <= kGatheredGroups;  // the sums travel in the records
  // What this node adds to each group's sum (nothing for a group it only takes), and its
  // non-finite flags.
  // [sums | non-finite flags | presence | replicated groups' own sums, summed to compare them
  // (past kGatheredGroups: the records carry them otherwise)]; in a record, a group's flag word
  // is kPresent plus kNonFiniteFlag, or 0 where the node does not have the group.
  std::vector<uint8_t> modes(groups);
  std::vector<double> data(4 * groups, 0.0);
  for (size_t g = 0; g < groups; ++g) {
    modes[g] = CrossNodeMode(p->reduction[g], c->rank());
    const bool present = g < p->present.size() && p->present[g];
    // A replicated group's sum is node 0's on every node: one scale for every replica, whatever
    // the rounding of each node's own sum (its chunks laid out otherwise).
    if (modes[g] == kAddAndTake || (modes[g] == kKeepOwn && c->rank() == 0)) data[g] = p->sums[g];
    data[groups + g] = p->non_finite[g] ? 1.0 : 0.0;
    data[2 * groups + g] = present ? 1.0 : 0.0;
    if (modes[g] == kKeepOwn) data[3 * groups + g] = p->sums[g];
  }
  std::array<uint64_t, kRecordWords> record{};
  record[kStep] = step;
  record[kLayout] = mine.layout_hash;
  record[kConfig] = mine.config_hash;
  record[kGroups] = groups;
  record[kFlags] = (mine.want_statistics ? kWantsStatistics : 0) | (mine.refused ? kRefuses : 0);
  record[kFirstStep] = mine.first_step;
  for (size_t g = 0; gathered && g < groups; ++g) {
    // A replicated group's own sum goes too, not to be added (below) but compared: replicas'
    // gradients have the same sum on every node.
    record[kSums + g] = absl::bit_cast<uint64_t>(modes[g] == kKeepOwn ? p->sums[g] : data[g]);
    record[kNonFinite + g] =
        data[2 * groups + g] > 0 ? kPresent | (data[groups + g] > 0 ? kNonFiniteFlag : 0) : 0;
  }
  Records all(c->size());
  absl::Span<const char> bytes(reinterpret_cast<const char*>(record.data()), sizeof(record));
  if (absl::Status st = c->AllGather(bytes, all.bytes(), timeout); !st.ok()) {
    return NameFailure(c, job, step, st);
  }
  // Every node reads the same records, so every node comes to the same verdict.
  if (all.any(kRefuses)) {
    return absl::AbortedError(
        absl::StrCat("step ", step, " of job '", job, "' was refused on ",
                     mine.refused ? "this node" : "another node (its workers were told why)",
                     "; no node changed anything: skip it and go on from step ", step + 1));
  }
  if (all.differ(kStep)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "step numbers differ across the nodes of job '", job, "': this node (", c->rank(),
        ") is at step ", step, ", the nodes range from ", all.min(kStep), " to ", all.max(kStep),
        "; nothing was summed. Every node's workers step the same numbers (a node "
        "resumed from another checkpoint than the others?): go on from step ",
        all.max(kStep) + 1, " on every node"));
  }
  // Node 0's step numbers bind every node: after a new rendezvous its last step is the job's.
  if (const uint64_t first = all.at(0, kFirstStep); first > step) {
    return StepNotAfterLast(job, step, first - 1, /*node_zeros=*/c->size() > 1);
  }
  if (all.differ(kLayout) || all.differ(kGroups)) {
    const std::string first = FirstDifference(c, *p, all.max(kGroups), timeout);
    return absl::InvalidArgumentError(absl::StrCat(
        "norm-group layouts differ across the nodes of job '", job, "' (this node has ", groups,
        " groups, the nodes between ", all.min(kGroups), " and ", all.max(kGroups),
        all.differ(kGroups) ? ""
                            : ": the same count, so other names, another order, or "
                              "another reduction (sharded, replicated, node-sharded)",
        "); every node must register the same groups, in the same order, each with the same "
        "reduction",
        first, Unregistered(*p), "; nothing was summed"));
  }
  agreement->configs_differ = all.differ(kConfig);
  // Node 0's statistics go with its configuration (they are expressed for its betas).
  agreement->sync_statistics = all.any(kWantsStatistics) || agreement->configs_differ;
  if (gathered) {
    for (size_t g = 0; g < groups; ++g) {  // in node order: the same bits on every node
      data[g] = 0.0;
      data[groups + g] = 0.0;
      data[2 * groups + g] = 0.0;
      for (uint32_t r = 0; r < all.nodes(); ++r) {
        const uint64_t flags = all.at(r, kNonFinite + g);
        if (modes[g] != kKeepOwn || r == 0) data[g] += all.value(r, kSums + g);
        if ((flags & kNonFiniteFlag) != 0) data[groups + g] = 1.0;
        if ((flags & kPresent) != 0) data[2 * groups + g] += 1.0;
      }
    }
  } else if (absl::Status st = c->AllReduceSum(absl::MakeSpan(data), timeout); !st.ok()) {
    return NameFailure(c, job, step, st);
  }
  for (size_t g = 0; g < groups; ++g) {
    // A count of nodes, summed across them: anything else (a corrupt peer's) is no count.
    const double count = data[2 * groups + g];
    if (!(count >= 0.0 && count <= c->size()) || count != std::floor(count)) {
      return absl::InternalError(
          absl::StrCat("job '", job, "' step ", step, ": the nodes' count of group #", g,
                       " came back as ", count, " of ", c->size(), " nodes; nothing was summed"));
    }
    const auto having = static_cast<uint32_t>(count);
    if (having == 0 || having == c->size()) continue;
    return absl::InvalidArgumentError(absl::StrCat(
        "norm group ", GroupLabel(*p, g), " of job '", job, "' is registered on ", having,
        " of its ", c->size(),
        " nodes (on this node: ", g < p->present.size() && p->present[g] ? "yes" : "no",
        "); every node's workers must register every group (a rank with no part of one "
        "registers an empty placeholder for it, as gstab.torch does); nothing was summed"));
  }
  for (size_t g = 0; !gathered && g < groups && agreement->replicas_differ.empty(); ++g) {
    // This node's own sum against node 0's (before it takes node 0's); and, for node 0 (whose
    // own is node 0's), the nodes' own sums on average: apart beyond rounding, some differ.
    if (modes[g] != kKeepOwn || data[2 * groups + g] == 0.0) continue;
    const double mean = data[3 * groups + g] / data[2 * groups + g];
    if (ReplicaSumsDiffer(data[g], p->sums[g])) {
      agreement->replicas_differ =
          absl::StrCat("replicated group ", GroupLabel(*p, g), "'s sum of squares is ", data[g],
                       " on node 0 and ", p->sums[g], " on this node (", c->rank(), ")");
    } else if (ReplicaSumsDiffer(data[g], mean)) {
      agreement->replicas_differ =
          absl::StrCat("replicated group ", GroupLabel(*p, g), "'s sum of squares is ", data[g],
                       " on node 0 and ", mean, " on average over the ", c->size(), " nodes");
    }
  }
  for (size_t g = 0; g < groups; ++g) {
    p->sums[g] = data[g];
    p->non_finite[g] = data[groups + g] > 0 ? 1 : 0;
  }
  for (size_t g = 0; gathered && g < groups && agreement->replicas_differ.empty(); ++g) {
    if (modes[g] != kKeepOwn || data[2 * groups + g] == 0.0) continue;
    const double first = all.value(0, kSums + g);
    for (uint32_t r = 1; r < all.nodes(); ++r) {
      const double other = all.value(r, kSums + g);
      if (ReplicaSumsDiffer(first, other)) {
        agreement->replicas_differ =
            absl::StrCat("replicated group ", GroupLabel(*p, g), "'s sum of squares is ", first,
                         " on node 0 and ", other, " on node ", r);
        break;
      }
    }
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
  if (absl::Status s = c->Broadcast(absl::MakeSpan(bytes), timeout); !s.ok()) {
    return AsStopping(*c, s);
  }
  std::memcpy(values, bytes.data(), bytes.size());
  return absl::OkStatus();
}

}  // namespace

absl::Status AsStopping(const Collective& collective, absl::Status failure) {
  if (failure.ok() || !collective.Stopping()) return failure;
  return StoppingError(failure.message());
}

absl::Status SyncStatistics(Collective* c, absl::Duration timeout, std::vector<GroupStats>* stats) {
  return BroadcastValues(c, timeout, stats->data(), stats->size());
}

absl::Status BroadcastParams(Collective* c, absl::Duration timeout, RuleParams* params) {
  return BroadcastValues(c, timeout, params, 1);
}

}  // namespace gstab
