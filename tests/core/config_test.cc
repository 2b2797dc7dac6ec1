#include "core/config.h"

#include <cmath>
#include <string>

#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "google/protobuf/text_format.h"
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

TEST(ConfigTest, PresetBetasAreTheV4AndStableSpamOnesOnly) {
  v1::PolicyConfig c;
  EXPECT_TRUE(HasPresetBetas(*ResolveConfig(c)));
  c.mutable_stabilize()->set_preset(v1::STABILIZE_PRESET_STABLE_SPAM);
  EXPECT_TRUE(HasPresetBetas(*ResolveConfig(c)));
  c.mutable_stabilize()->set_beta2(0.95);  // tuned
  EXPECT_FALSE(HasPresetBetas(*ResolveConfig(c)));
  c.mutable_stabilize()->set_beta1(0.6);  // one of each preset's is neither's
  c.mutable_stabilize()->set_beta2(0.9);
  EXPECT_FALSE(HasPresetBetas(*ResolveConfig(c)));
}

TEST(ConfigTest, OutOfRangeValuesNameTheField) {
  struct Case {
    void (*mutate)(v1::PolicyConfig*);
    const char* field;
  } cases[] = {
      {[](v1::PolicyConfig* c) { c->mutable_stabilize()->set_beta1(1.0); }, "stabilize.beta1"},
      {[](v1::PolicyConfig* c) { c->mutable_stabilize()->set_beta2(-0.1); }, "stabilize.beta2"},
      // The stabilized norm is bounded whatever the spike only while beta1 <= sqrt(beta2).
      {[](v1::PolicyConfig* c) {
         c->mutable_stabilize()->set_beta1(0.9);
         c->mutable_stabilize()->set_beta2(0.5);
       },
       "stabilize.beta1 = 0.9 must be at most sqrt(stabilize.beta2) = 0.7071067811865476"},
      // Values as given, not rounded to six digits (which would read as in range).
      {[](v1::PolicyConfig* c) {
         c->mutable_stabilize()->set_beta2(0.9);
         c->mutable_stabilize()->set_beta1(0.94868331);
       },
       "stabilize.beta1 = 0.94868331 must be at most sqrt(stabilize.beta2) = 0.9486832980505138"},
      {[](v1::PolicyConfig* c) { c->mutable_stabilize()->set_beta2(1.0000001); },
       "stabilize.beta2 = 1.0000001 is out of range"},
      {[](v1::PolicyConfig* c) { c->mutable_stabilize()->set_eps(0.0); }, "stabilize.eps"},
      {[](v1::PolicyConfig* c) { c->mutable_clip()->set_max_norm(-1.0); }, "clip.max_norm"},
      // torch's max_norm=inf (measure only) is the monitor policy here, and the message says so.
      {[](v1::PolicyConfig* c) { c->mutable_clip()->set_max_norm(INFINITY); },
       "clip.max_norm = inf is out of range: must be finite and > 0 (policy monitor"},
      {[](v1::PolicyConfig* c) { c->mutable_zclip()->set_alpha(1.0); }, "zclip.alpha"},
      {[](v1::PolicyConfig* c) { c->mutable_spike()->set_z_threshold(NAN); }, "spike.z_threshold"},
      {[](v1::PolicyConfig* c) { c->mutable_divergence()->set_growth_ratio(0.5); },
       "divergence.growth_ratio"},
      // A detector of one sample has no spread; a state that ends at once flaps every step.
      {[](v1::PolicyConfig* c) { c->mutable_spike()->set_beta(0.0); }, "spike.beta"},
      {[](v1::PolicyConfig* c) { c->mutable_divergence()->set_recovery_steps(0); },
       "divergence.recovery_steps"},
      // The growth test would compare a long horizon with a shorter one.
      {[](v1::PolicyConfig* c) { c->mutable_divergence()->set_short_beta(0.999); },
       "divergence.short_beta = 0.999 must be below divergence.long_beta"},
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

// -0 is 0: two workers asking for either ask for the same configuration.
TEST(ConfigTest, NegativeZeroIsZero) {
  v1::PolicyConfig zero, negative_zero;
  zero.mutable_zclip()->set_max_norm(0.0);
  zero.mutable_stabilize()->set_beta1(0.0);
  negative_zero.mutable_zclip()->set_max_norm(-0.0);
  negative_zero.mutable_stabilize()->set_beta1(-0.0);
  absl::StatusOr<RuleParams> a = ResolveConfig(zero), b = ResolveConfig(negative_zero);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(SameEffectiveConfig(*a, *b));
  EXPECT_FALSE(std::signbit(b->zclip_max_norm));
}

TEST(ConfigTest, MergeKeepsUnsetFields) {
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
}

// Every leaf field of `a` holds another value than in `b`.
void ExpectEveryLeafDiffers(const google::protobuf::Message& a, const google::protobuf::Message& b,
                            const std::string& path) {
  const google::protobuf::Descriptor* d = a.GetDescriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* f = d->field(i);
    const std::string name = path + f->name();
    if (f->type() == google::protobuf::FieldDescriptor::TYPE_MESSAGE) {
      ExpectEveryLeafDiffers(a.GetReflection()->GetMessage(a, f),
                             b.GetReflection()->GetMessage(b, f), name + ".");
      continue;
    }
    if (name == "stabilize.preset") continue;  // a way to give the betas (unset: they are)
    std::string in_a, in_b;
    google::protobuf::TextFormat::PrintFieldValueToString(a, f, -1, &in_a);
    google::protobuf::TextFormat::PrintFieldValueToString(b, f, -1, &in_b);
    EXPECT_NE(in_a, in_b) << name << " is at its default: set it away from it";
  }
}

// Checkpoints, the cross-node configuration check and restored jobs carry a job's configuration
// as EffectiveConfig: every field must come back as it was, each one away from its default.
TEST(ConfigTest, EffectiveConfigCarriesEveryFieldBack) {
  RuleParams p;
  p.policy = PolicyKind::kZClip;
  p.beta1 = 0.5;
  p.beta2 = 0.75;
  p.eps = 1e-9;
  p.bias_correction = false;
  p.clip_max_norm = 0.125;
  p.zclip_alpha = 0.875;
  p.zclip_warmup_steps = 7;
  p.zclip_z_threshold = 3.5;
  p.zclip_max_norm = 9.0;
  p.spike_z_threshold = 4.5;
  p.spike_warmup_steps = 11;
  p.spike_beta = 0.9375;
  p.spike_ratio = 12.0;
  p.diverge_consecutive_spikes = 5;
  p.diverge_consecutive_non_finite = 6;
  p.diverge_growth_ratio = 2.5;
  p.diverge_short_beta = 0.8;
  p.diverge_long_beta = 0.96875;
  p.diverge_recovery_steps = 13;
  p.zero_non_finite = false;
  // Every field of the echoed configuration is away from its default above: none is left out.
  ExpectEveryLeafDiffers(EffectiveConfig(p), EffectiveConfig(RuleParams{}), "");
  absl::StatusOr<RuleParams> back = ResolveConfig(EffectiveConfig(p));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->policy, p.policy);
  EXPECT_EQ(back->beta1, p.beta1);
  EXPECT_EQ(back->beta2, p.beta2);
  EXPECT_EQ(back->eps, p.eps);
  EXPECT_EQ(back->bias_correction, p.bias_correction);
  EXPECT_EQ(back->clip_max_norm, p.clip_max_norm);
  EXPECT_EQ(back->zclip_alpha, p.zclip_alpha);
  EXPECT_EQ(back->zclip_warmup_steps, p.zclip_warmup_steps);
  EXPECT_EQ(back->zclip_z_threshold, p.zclip_z_threshold);
  EXPECT_EQ(back->zclip_max_norm, p.zclip_max_norm);
  EXPECT_EQ(back->spike_z_threshold, p.spike_z_threshold);
  EXPECT_EQ(back->spike_warmup_steps, p.spike_warmup_steps);
  EXPECT_EQ(back->spike_beta, p.spike_beta);
  EXPECT_EQ(back->spike_ratio, p.spike_ratio);
  EXPECT_EQ(back->diverge_consecutive_spikes, p.diverge_consecutive_spikes);
  EXPECT_EQ(back->diverge_consecutive_non_finite, p.diverge_consecutive_non_finite);
  EXPECT_EQ(back->diverge_growth_ratio, p.diverge_growth_ratio);
  EXPECT_EQ(back->diverge_short_beta, p.diverge_short_beta);
  EXPECT_EQ(back->diverge_long_beta, p.diverge_long_beta);
  EXPECT_EQ(back->diverge_recovery_steps, p.diverge_recovery_steps);
  EXPECT_EQ(back->zero_non_finite, p.zero_non_finite);
}

// The echoed configuration sets every field of every message, so a reader never has to know
// the defaults: a field EffectiveConfig leaves unset would be taken as "the default" by whoever
// reads it, not as what the job runs with.
void ExpectEveryFieldSet(const google::protobuf::Message& m, const std::string& path) {
  const google::protobuf::Descriptor* d = m.GetDescriptor();
  const google::protobuf::Reflection* r = m.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* f = d->field(i);
    const std::string name = path + f->name();
    if (f->has_presence()) {
      EXPECT_TRUE(r->HasField(m, f)) << name << " is not set";
    }
    if (f->type() == google::protobuf::FieldDescriptor::TYPE_MESSAGE) {
      ExpectEveryFieldSet(r->GetMessage(m, f), name + ".");
    } else if (f->type() == google::protobuf::FieldDescriptor::TYPE_ENUM &&
               name != "stabilize.preset") {  // a way to give the betas, which are set
      EXPECT_NE(r->GetEnumValue(m, f), 0) << name << " is left UNSPECIFIED";
    }
  }
}

TEST(ConfigTest, EffectiveConfigSetsEveryField) {
  ExpectEveryFieldSet(EffectiveConfig(RuleParams{}), "");
}

}  // namespace
}  // namespace gstab
