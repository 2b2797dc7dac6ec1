#include "core/config.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/text_format.h"

namespace gstab {
namespace {

// `x` in as few digits as read back as `x`: StrCat's six would print a refused 1.0000001 as 1,
// and a beta1 past sqrt(beta2) as its bound.
std::string Exact(double x) {
  char text[32];
  for (int digits = 6; digits < 17; ++digits) {
    std::snprintf(text, sizeof text, "%.*g", digits, x);
    if (std::strtod(text, nullptr) == x) return text;
  }
  std::snprintf(text, sizeof text, "%.17g", x);
  return text;
}

absl::Status OutOfRange(const char* field, double value, const char* range) {
  return absl::InvalidArgumentError(absl::StrCat("config field ", field, " = ", Exact(value),
                                                 " is out of range: must be ", range));
}

// Checks the invariants the rule relies on; every message names the field.
absl::Status Validate(const RuleParams& p) {
  auto unit = [](double x) { return std::isfinite(x) && x >= 0.0 && x < 1.0; };
  auto positive = [](double x) { return std::isfinite(x) && x > 0.0; };
  if (!unit(p.beta1)) return OutOfRange("stabilize.beta1", p.beta1, "in [0, 1)");
  if (!unit(p.beta2)) return OutOfRange("stabilize.beta2", p.beta2, "in [0, 1)");
  // A norm's EMA that outlasts the squared norm's (beta1 > sqrt(beta2)) would let a spike's
  // weight in m outgrow its weight in sqrt(v) in the steps after it: the stabilized norm there
  // grows with the spike, where the method bounds it.
  if (p.beta1 > std::sqrt(p.beta2)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config field stabilize.beta1 = ", Exact(p.beta1),
                     " must be at most sqrt(stabilize.beta2) = ", Exact(std::sqrt(p.beta2)),
                     ": a larger beta1 remembers a spike longer than beta2 does, and the "
                     "stabilized norms after a spike grow with it"));
  }
  if (!positive(p.eps)) return OutOfRange("stabilize.eps", p.eps, "finite and > 0");
  if (!positive(p.clip_max_norm)) {
    return OutOfRange("clip.max_norm", p.clip_max_norm,
                      "finite and > 0 (policy monitor measures norms without clipping)");
  }
  if (!(p.zclip_alpha > 0.0 && p.zclip_alpha < 1.0)) {
    return OutOfRange("zclip.alpha", p.zclip_alpha, "in (0, 1)");
  }
  if (!positive(p.zclip_z_threshold)) {
    return OutOfRange("zclip.z_threshold", p.zclip_z_threshold, "finite and > 0");
  }
  if (!(std::isfinite(p.zclip_max_norm) && p.zclip_max_norm >= 0.0)) {
    return OutOfRange("zclip.max_norm", p.zclip_max_norm, ">= 0 (0 disables the cap)");
  }
  if (!positive(p.spike_z_threshold)) {
    return OutOfRange("spike.z_threshold", p.spike_z_threshold, "finite and > 0");
  }
  if (!(p.spike_beta > 0.0 && p.spike_beta < 1.0)) {
    return OutOfRange("spike.beta", p.spike_beta, "in (0, 1)");
  }
  if (!positive(p.spike_ratio)) {
    return OutOfRange("spike.ratio", p.spike_ratio, "finite and > 0");
  }
  if (!(std::isfinite(p.diverge_growth_ratio) && p.diverge_growth_ratio > 1.0)) {
    return OutOfRange("divergence.growth_ratio", p.diverge_growth_ratio, "> 1");
  }
  if (!unit(p.diverge_short_beta)) {
    return OutOfRange("divergence.short_beta", p.diverge_short_beta, "in [0, 1)");
  }
  if (!unit(p.diverge_long_beta)) {
    return OutOfRange("divergence.long_beta", p.diverge_long_beta, "in [0, 1)");
  }
  if (p.diverge_short_beta >= p.diverge_long_beta) {
    return absl::InvalidArgumentError(
        absl::StrCat("config field divergence.short_beta = ", Exact(p.diverge_short_beta),
                     " must be below divergence.long_beta = ", Exact(p.diverge_long_beta),
                     ": the growth test compares a short horizon's norm with a long one's"));
  }
  if (p.diverge_consecutive_spikes == 0 || p.diverge_consecutive_non_finite == 0 ||
      p.diverge_recovery_steps == 0) {
    return absl::InvalidArgumentError(
        "config fields divergence.consecutive_spikes, divergence.consecutive_non_finite and "
        "divergence.recovery_steps must be >= 1");
  }
  return absl::OkStatus();
}

absl::StatusOr<PolicyKind> ToPolicyKind(v1::Policy policy, PolicyKind fallback) {
  switch (policy) {
    case v1::POLICY_UNSPECIFIED:
      return fallback;
    case v1::POLICY_STABILIZE:
      return PolicyKind::kStabilize;
    case v1::POLICY_CLIP:
      return PolicyKind::kClip;
    case v1::POLICY_ZCLIP:
      return PolicyKind::kZClip;
    case v1::POLICY_MONITOR:
      return PolicyKind::kMonitor;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unknown policy ", static_cast<int>(policy),
                       ": expected one of stabilize, clip, zclip, monitor"));
  }
}

struct Betas {
  double beta1;
  double beta2;
};

// The betas a stabilize preset supplies; null for an unknown one.
const Betas* PresetBetas(v1::StabilizePreset preset) {
  static constexpr Betas kV4{0.6, 0.999};
  static constexpr Betas kStableSpam{0.7, 0.9};
  switch (preset) {
    case v1::STABILIZE_PRESET_V4:
      return &kV4;
    case v1::STABILIZE_PRESET_STABLE_SPAM:
      return &kStableSpam;
    default:
      return nullptr;
  }
}

// Copies the fields that are set in `c` over `p`.
absl::Status Overlay(const v1::PolicyConfig& c, RuleParams* p) {
  absl::StatusOr<PolicyKind> policy = ToPolicyKind(c.policy(), p->policy);
  if (!policy.ok()) return policy.status();
  p->policy = *policy;

  const v1::StabilizeConfig& st = c.stabilize();
  if (st.preset() != v1::STABILIZE_PRESET_UNSPECIFIED) {
    const Betas* betas = PresetBetas(st.preset());
    if (betas == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown stabilize.preset ",
                                                     static_cast<int>(st.preset()),
                                                     ": expected V4 or STABLE_SPAM"));
    }
    p->beta1 = betas->beta1;
    p->beta2 = betas->beta2;
  }
  if (st.has_beta1()) p->beta1 = st.beta1();
  if (st.has_beta2()) p->beta2 = st.beta2();
  if (st.has_eps()) p->eps = st.eps();
  if (st.has_bias_correction()) p->bias_correction = st.bias_correction();

  if (c.clip().has_max_norm()) p->clip_max_norm = c.clip().max_norm();

  const v1::ZClipConfig& z = c.zclip();
  if (z.has_alpha()) p->zclip_alpha = z.alpha();
  if (z.has_warmup_steps()) p->zclip_warmup_steps = z.warmup_steps();
  if (z.has_z_threshold()) p->zclip_z_threshold = z.z_threshold();
  if (z.has_max_norm()) p->zclip_max_norm = z.max_norm();

  const v1::SpikeConfig& sp = c.spike();
  if (sp.has_z_threshold()) p->spike_z_threshold = sp.z_threshold();
  if (sp.has_warmup_steps()) p->spike_warmup_steps = sp.warmup_steps();
  if (sp.has_beta()) p->spike_beta = sp.beta();
  if (sp.has_ratio()) p->spike_ratio = sp.ratio();

  const v1::DivergenceConfig& d = c.divergence();
  if (d.has_consecutive_spikes()) p->diverge_consecutive_spikes = d.consecutive_spikes();
  if (d.has_consecutive_nonfinite()) p->diverge_consecutive_non_finite = d.consecutive_nonfinite();
  if (d.has_growth_ratio()) p->diverge_growth_ratio = d.growth_ratio();
  if (d.has_short_beta()) p->diverge_short_beta = d.short_beta();
  if (d.has_long_beta()) p->diverge_long_beta = d.long_beta();
  if (d.has_recovery_steps()) p->diverge_recovery_steps = d.recovery_steps();

  switch (c.non_finite_action()) {
    case v1::NON_FINITE_ACTION_UNSPECIFIED:
      break;
    case v1::NON_FINITE_ACTION_ZERO:
      p->zero_non_finite = true;
      break;
    case v1::NON_FINITE_ACTION_KEEP:
      p->zero_non_finite = false;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown non_finite_action ",
                                                     static_cast<int>(c.non_finite_action()),
                                                     ": expected ZERO or KEEP"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<RuleParams> MergeConfig(const RuleParams& base, const v1::PolicyConfig& update) {
  RuleParams p = base;
  if (absl::Status s = Overlay(update, &p); !s.ok()) return s;
  if (absl::Status s = Validate(p); !s.ok()) return s;
  // -0 as 0 (both pass): a worker asking for one and another for the other ask for the same
  // configuration, which compares by its bytes (SameEffectiveConfig).
  for (double* x : {&p.beta1, &p.beta2, &p.zclip_max_norm, &p.diverge_short_beta}) {
    if (*x == 0.0) *x = 0.0;
  }
  return p;
}

absl::StatusOr<RuleParams> ResolveConfig(const v1::PolicyConfig& config) {
  return MergeConfig(RuleParams{}, config);
}

bool SameEffectiveConfig(const RuleParams& a, const RuleParams& b) {
  return EffectiveConfig(a).SerializeAsString() == EffectiveConfig(b).SerializeAsString();
}

namespace {

// Every set field of `m`, by its dotted key, as text.
void Flatten(const google::protobuf::Message& m, const std::string& prefix,
             std::map<std::string, std::string>* out) {
  const google::protobuf::Reflection* r = m.GetReflection();
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const google::protobuf::FieldDescriptor* f : fields) {
    const std::string key = prefix.empty() ? f->name() : absl::StrCat(prefix, ".", f->name());
    if (f->is_repeated()) continue;  // PolicyConfig has none
    if (f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) {
      Flatten(r->GetMessage(m, f), key, out);
      continue;
    }
    google::protobuf::TextFormat::PrintFieldValueToString(m, f, -1, &(*out)[key]);
  }
}

}  // namespace

std::string ConfigDifference(const RuleParams& held, const RuleParams& asked,
                             const std::string& label) {
  std::map<std::string, std::string> a, b;
  Flatten(EffectiveConfig(held), "", &a);
  Flatten(EffectiveConfig(asked), "", &b);
  for (const auto& [key, value] : a) b.emplace(key, "unset");
  std::vector<std::string> differences;
  for (const auto& [key, value] : b) {
    auto it = a.find(key);
    const std::string& mine = it == a.end() ? "unset" : it->second;
    if (mine != value) {
      differences.push_back(absl::StrCat(key, " ", mine, " (", label, ": ", value, ")"));
    }
  }
  return absl::StrJoin(differences, ", ");
}

v1::PolicyConfig EffectiveConfig(const RuleParams& p) {
  v1::PolicyConfig c;
  switch (p.policy) {
    case PolicyKind::kStabilize:
      c.set_policy(v1::POLICY_STABILIZE);
      break;
    case PolicyKind::kClip:
      c.set_policy(v1::POLICY_CLIP);
      break;
    case PolicyKind::kZClip:
      c.set_policy(v1::POLICY_ZCLIP);
      break;
    case PolicyKind::kMonitor:
      c.set_policy(v1::POLICY_MONITOR);
      break;
  }
  v1::StabilizeConfig* st = c.mutable_stabilize();
  st->set_beta1(p.beta1);
  st->set_beta2(p.beta2);
  st->set_eps(p.eps);
  st->set_bias_correction(p.bias_correction);
  c.mutable_clip()->set_max_norm(p.clip_max_norm);
  v1::ZClipConfig* z = c.mutable_zclip();
  z->set_alpha(p.zclip_alpha);
  z->set_warmup_steps(p.zclip_warmup_steps);
  z->set_z_threshold(p.zclip_z_threshold);
  z->set_max_norm(p.zclip_max_norm);
  v1::SpikeConfig* sp = c.mutable_spike();
  sp->set_z_threshold(p.spike_z_threshold);
  sp->set_warmup_steps(p.spike_warmup_steps);
  sp->set_beta(p.spike_beta);
  sp->set_ratio(p.spike_ratio);
  v1::DivergenceConfig* d = c.mutable_divergence();
  d->set_consecutive_spikes(p.diverge_consecutive_spikes);
  d->set_consecutive_nonfinite(p.diverge_consecutive_non_finite);
  d->set_growth_ratio(p.diverge_growth_ratio);
  d->set_short_beta(p.diverge_short_beta);
  d->set_long_beta(p.diverge_long_beta);
  d->set_recovery_steps(p.diverge_recovery_steps);
  c.set_non_finite_action(p.zero_non_finite ? v1::NON_FINITE_ACTION_ZERO
                                            : v1::NON_FINITE_ACTION_KEEP);
  return c;
}

bool HasPresetBetas(const RuleParams& params) {
  for (v1::StabilizePreset preset : {v1::STABILIZE_PRESET_V4, v1::STABILIZE_PRESET_STABLE_SPAM}) {
    const Betas* betas = PresetBetas(preset);
    if (params.beta1 == betas->beta1 && params.beta2 == betas->beta2) return true;
  }
  return false;
}

const char* PolicyName(PolicyKind policy) {
  switch (policy) {
    case PolicyKind::kStabilize:
      return "stabilize";
    case PolicyKind::kClip:
      return "clip";
    case PolicyKind::kZClip:
      return "zclip";
    case PolicyKind::kMonitor:
      return "monitor";
  }
  return "unknown";
}

}  // namespace gstab
