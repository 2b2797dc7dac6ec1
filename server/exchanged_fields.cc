#include "server/exchanged_fields.h"

#include <cstddef>
#include <iterator>

#include "absl/strings/string_view.h"
#include "common/fnv1a.h"
#include "core/rule_types.h"

namespace gstab {
namespace {

// A field of a structure nodes exchange as raw bytes (node 0's rule and statistics).
struct Field {
  size_t offset;
  size_t size;
};
#define GSTAB_FIELD(T, f) \
  Field { offsetof(T, f), sizeof(decltype(T::f)) }
constexpr Field kRuleFields[] = {
    GSTAB_FIELD(RuleParams, policy),
    GSTAB_FIELD(RuleParams, beta1),
    GSTAB_FIELD(RuleParams, beta2),
    GSTAB_FIELD(RuleParams, eps),
    GSTAB_FIELD(RuleParams, bias_correction),
    GSTAB_FIELD(RuleParams, clip_max_norm),
    GSTAB_FIELD(RuleParams, zclip_alpha),
    GSTAB_FIELD(RuleParams, zclip_warmup_steps),
    GSTAB_FIELD(RuleParams, zclip_z_threshold),
    GSTAB_FIELD(RuleParams, zclip_max_norm),
    GSTAB_FIELD(RuleParams, spike_z_threshold),
    GSTAB_FIELD(RuleParams, spike_warmup_steps),
    GSTAB_FIELD(RuleParams, spike_beta),
    GSTAB_FIELD(RuleParams, spike_ratio),
    GSTAB_FIELD(RuleParams, diverge_consecutive_spikes),
    GSTAB_FIELD(RuleParams, diverge_consecutive_non_finite),
    GSTAB_FIELD(RuleParams, diverge_growth_ratio),
    GSTAB_FIELD(RuleParams, diverge_short_beta),
    GSTAB_FIELD(RuleParams, diverge_long_beta),
    GSTAB_FIELD(RuleParams, diverge_recovery_steps),
    GSTAB_FIELD(RuleParams, zero_non_finite),
};
constexpr Field kStatsFields[] = {
    GSTAB_FIELD(GroupStats, t),
    GSTAB_FIELD(GroupStats, m),
    GSTAB_FIELD(GroupStats, v),
    GSTAB_FIELD(GroupStats, zclip_mean),
    GSTAB_FIELD(GroupStats, zclip_var),
    GSTAB_FIELD(GroupStats, zclip_warm_sum),
    GSTAB_FIELD(GroupStats, zclip_warm_sumsq),
    GSTAB_FIELD(GroupStats, spike_mean),
    GSTAB_FIELD(GroupStats, spike_var),
    GSTAB_FIELD(GroupStats, short_ema),
    GSTAB_FIELD(GroupStats, long_ema),
    GSTAB_FIELD(GroupStats, consecutive_spikes),
    GSTAB_FIELD(GroupStats, consecutive_non_finite),
    GSTAB_FIELD(GroupStats, calm_steps),
    GSTAB_FIELD(GroupStats, diverging),
    GSTAB_FIELD(GroupStats, steps),
    GSTAB_FIELD(GroupStats, non_finite_steps),
    GSTAB_FIELD(GroupStats, zero_norm_steps),
    GSTAB_FIELD(GroupStats, spikes),
};
#undef GSTAB_FIELD

// The number of fields of the aggregate T (each a scalar): the most initializers T{...} takes.
struct AnyField {
  template <typename U>
  constexpr operator U() const {  // NOLINT(google-explicit-constructor): stands for any field
    return U{};
  }
};
template <typename T, typename... A>
constexpr size_t FieldCount(long) {  // NOLINT(runtime/int): the overload SFINAE falls back to
  return sizeof...(A);
}
// (Each probe leaves the fields after it to their defaults, as it means to.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
template <typename T, typename... A>
constexpr auto FieldCount(int) -> decltype(T{A{}..., AnyField{}}, size_t{}) {
  return FieldCount<T, A..., AnyField>(0);
}
#pragma GCC diagnostic pop
// Every field is listed above, in order: a new one (in padding too, which the offsets would not
// show) fails the build until it is listed, and so changes the layout the blob carries.
static_assert(FieldCount<RuleParams>(0) == std::size(kRuleFields),
              "list every RuleParams field in kRuleFields");
static_assert(FieldCount<GroupStats>(0) == std::size(kStatsFields),
              "list every GroupStats field in kStatsFields");

}  // namespace

uint64_t ExchangedFieldsHash() {
  uint64_t h = kFnv1aOffset;
  auto add = [&h](const Field& f) {
    for (const uint64_t v : {uint64_t{f.offset}, uint64_t{f.size}}) {
      h = Fnv1a(absl::string_view(reinterpret_cast<const char*>(&v), sizeof v), h);
    }
  };
  for (const Field& f : kRuleFields) add(f);
  for (const Field& f : kStatsFields) add(f);
  return h;
}

}  // namespace gstab
