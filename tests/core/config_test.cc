#include "core/config.h"

#include "gtest/gtest.h"

namespace gstab {
namespace {

TEST(ConfigTest, EmptyConfigResolvesToTheV4Stabilizer) {
  absl::StatusOr<RuleParams> p = ResolveConfig(v1::PolicyConfig());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->policy, PolicyKind::kStabilize);
  EXPECT_EQ(p->beta1, 0.6);
  EXPECT_EQ(p->beta2, 0.999);
  EXPECT_EQ(p->eps, 1e-12);
  EXPECT_TRUE(p->bias_correction);
  EXPECT_TRUE(p->zero_non_finite);
  EXPECT_EQ(p->clip_max_norm, 1.0);
  EXPECT_EQ(p->zclip_alpha, 0.97);
  EXPECT_EQ(p->zclip_warmup_steps, 25u);
  EXPECT_EQ(p->zclip_z_threshold, 2.5);
  EXPECT_EQ(p->spike_z_threshold, 6.0);
}

TEST(ConfigTest, StableSpamPresetAndExplicitFieldsWin) {
  v1::PolicyConfig c;
  c.mutable_stabilize()->set_preset(v1::STABILIZE_PRESET_STABLE_SPAM);
  absl::StatusOr<RuleParams> p = ResolveConfig(c);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->beta1, 0.7);
  EXPECT_EQ(p->beta2, 0.9);
  c.mutable_stabilize()->set_beta2(0.95);
  EXPECT_EQ(ResolveConfig(c)->beta2, 0.95);
}

TEST(ConfigTest, OutOfRangeValuesNameTheField) {
  struct Case {
    void (*mutate)(v1::PolicyConfig*);
    const char* field;
  } cases[] = {
      {[](v1::PolicyConfig* c) { c->mutable_stabilize()->set_beta1(1.0); }, "stabilize.beta1"},
      {[](v1::PolicyConfig* c) { c->mutable_stabilize()->set_beta2(-0.1); }, "stabilize.beta2"},
      {[](v1::PolicyConfig* c) { c->mutable_stabilize()->set_eps(0.0); }, "stabilize.eps"},
      {[](v1::PolicyConfig* c) { c->mutable_clip()->set_max_norm(-1.0); }, "clip.max_norm"},
      {[](v1::PolicyConfig* c) { c->mutable_zclip()->set_alpha(1.0); }, "zclip.alpha"},
      {[](v1::PolicyConfig* c) { c->mutable_spike()->set_z_threshold(NAN); }, "spike.z_threshold"},
      {[](v1::PolicyConfig* c) { c->mutable_divergence()->set_growth_ratio(0.5); },
       "divergence.growth_ratio"},
      // A detector of one sample has no spread; a state that ends at once flaps every step.
      {[](v1::PolicyConfig* c) { c->mutable_spike()->set_beta(0.0); }, "spike.beta"},
      {[](v1::PolicyConfig* c) { c->mutable_divergence()->set_recovery_steps(0); },
       "divergence.recovery_steps"},
      {[](v1::PolicyConfig* c) { c->set_policy(static_cast<v1::Policy>(42)); }, "unknown policy"},
  };
  for (const Case& k : cases) {
    v1::PolicyConfig c;
    k.mutate(&c);
    absl::StatusOr<RuleParams> p = ResolveConfig(c);
    ASSERT_FALSE(p.ok()) << k.field;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(p.status().message().find(k.field), std::string::npos) << p.status();
  }
}

TEST(ConfigTest, MergeKeepsUnsetFieldsAndEffectiveConfigRoundTrips) {
  v1::PolicyConfig first;
  first.set_policy(v1::POLICY_CLIP);
  first.mutable_clip()->set_max_norm(0.25);
  RuleParams base = *ResolveConfig(first);

  v1::PolicyConfig update;
  update.mutable_spike()->set_z_threshold(4.0);
  absl::StatusOr<RuleParams> merged = MergeConfig(base, update);
  ASSERT_TRUE(merged.ok());
  EXPECT_EQ(merged->policy, PolicyKind::kClip);
  EXPECT_EQ(merged->clip_max_norm, 0.25);
  EXPECT_EQ(merged->spike_z_threshold, 4.0);

  absl::StatusOr<RuleParams> again = ResolveConfig(EffectiveConfig(*merged));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(EffectiveConfig(*again).SerializeAsString(),
            EffectiveConfig(*merged).SerializeAsString());
}

}  // namespace
}  // namespace gstab
