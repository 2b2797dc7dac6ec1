// Conversion between the wire configuration (gstab.v1.PolicyConfig) and the resolved
// RuleParams the rule runs on. Thread-safe (pure functions).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "core/rule_types.h"
#include "gstab/v1/config.pb.h"

namespace gstab {

// Fills every unset field with its default and validates ranges. Returns INVALID_ARGUMENT
// naming the offending field and the accepted range.
absl::StatusOr<RuleParams> ResolveConfig(const v1::PolicyConfig& config);

// Applies `update` on top of `base`: fields set in `update` win, everything else is kept.
// A policy of POLICY_UNSPECIFIED in `update` keeps the base policy.
absl::StatusOr<RuleParams> MergeConfig(const RuleParams& base, const v1::PolicyConfig& update);

// The fully explicit configuration that `params` corresponds to (every field set).
v1::PolicyConfig EffectiveConfig(const RuleParams& params);
// Whether `a` and `b` are the same configuration (their effective configs are equal).
bool SameEffectiveConfig(const RuleParams& a, const RuleParams& b);
// Where `asked` differs from `held`, for messages: "clip.max_norm 1 (asked: 0.5), ..." with
// `label` "asked".
std::string ConfigDifference(const RuleParams& held, const RuleParams& asked,
                             const std::string& label = "asked");

// Whether `params`' beta1 and beta2 are those of a stabilize preset (v4, stable-spam), rather
// than tuned to others.
bool HasPresetBetas(const RuleParams& params);

const char* PolicyName(PolicyKind policy);

}  // namespace gstab
