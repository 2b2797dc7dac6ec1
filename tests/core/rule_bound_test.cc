// TargetBound: the stabilized norm's bound whatever the norms were, which holds statistics the
// betas could not have built (an import's) to it and never binds on statistics they built.
#include <cmath>
#include <random>
#include <vector>

#include "core/rule.h"
#include "gtest/gtest.h"

namespace gstab {
namespace {

RuleParams Betas(double beta1, double beta2, bool bias_correction = true) {
  RuleParams p;
  p.beta1 = beta1;
  p.beta2 = beta2;
  p.bias_correction = bias_correction;
  return p;
}

// The target of `s` as DESIGN.md writes it, without the bound (computed as the rule does), and
// the bound, after t steps.
double Unbounded(const RuleParams& p, const GroupStats& s) {
  const double mw = p.bias_correction ? 1.0 - rule_internal::PowSteps(p.beta1, s.t) : 1.0;
  const double vw = p.bias_correction ? 1.0 - rule_internal::PowSteps(p.beta2, s.t) : 1.0;
  return (s.m / mw) / (std::sqrt(s.v / vw) + p.eps);
}
double Bound(const RuleParams& p, const GroupStats& s) {
  const double mw = p.bias_correction ? 1.0 - rule_internal::PowSteps(p.beta1, s.t) : 1.0;
  const double vw = p.bias_correction ? 1.0 - rule_internal::PowSteps(p.beta2, s.t) : 1.0;
  return rule_internal::TargetBound(p, s.t, mw, vw);
}

// Over random norms, spikes, and the sequence that comes nearest the bound (norms growing by
// beta2 / beta1 a step, where Cauchy-Schwarz is an equality), for the presets and edge betas:
// the bound is never below the target the statistics give, and the scale is the unbounded
// formula's to the bit, so it changes no result of statistics gstabd built itself; and the
// geometric sequence reaches it past the first step (which meets it whatever the norm), so it
// is no looser than it must be.
TEST(RuleBoundTest, TheBetasOwnStatisticsNeverReachTheBound) {
  std::mt19937_64 rng(7);
  std::lognormal_distribution<double> norms(0.0, 2.0);
  for (const RuleParams& p : {Betas(0.6, 0.999), Betas(0.7, 0.9), Betas(0.6, 0.999, false),
                              Betas(0.0, 0.5), Betas(0.0, 0.0), Betas(0.9, 0.81)}) {
    for (int kind = 0; kind < 3; ++kind) {
      GroupStats s;
      double n = 1.0;
      double nearest = 0.0;  // of target / bound
      for (int step = 1; step <= 400; ++step) {
        if (kind == 0) n = norms(rng);
        if (kind == 1) n = (step % 50 == 0) ? 1e12 : 1.0;
        if (kind == 2 && step > 1) n *= p.beta1 > 0.0 ? std::min(p.beta2 / p.beta1, 4.0) : 1.0;
        if (kind == 2 && (n > 1e100 || n < 1e-6)) break;  // (far from eps)
        const StepOutcome out = ApplyRule(p, &s, n * n, false);
        ASSERT_TRUE(out.flags & kFlagAccepted);
        const double target = Unbounded(p, s), bound = Bound(p, s);
        ASSERT_LE(target, bound * (1.0 + 1e-12))
            << "betas " << p.beta1 << "/" << p.beta2 << " bias " << p.bias_correction << " kind "
            << kind << " step " << step;
        ASSERT_EQ(out.scale, target / std::max(n, p.eps))
            << "the bound changed a result: betas " << p.beta1 << "/" << p.beta2 << " bias "
            << p.bias_correction << " kind " << kind << " step " << step << " n " << n;
        if (step > 1) nearest = std::max(nearest, target / bound);
      }
      if (kind == 2 && p.beta1 > 0.0 && p.beta2 / p.beta1 <= 4.0) {
        EXPECT_GT(nearest, 0.999) << "betas " << p.beta1 << "/" << p.beta2 << ": looser than "
                                  << "the sequence that reaches it";
      }
    }
  }
}

// The first step meets the bound (one norm: Cauchy-Schwarz is an equality there), eps lost in
// rounding for norms past about 1e3: the bound's own rounding must not change its result.
TEST(RuleBoundTest, TheFirstStepMeetsTheBoundWithItsResultUnchanged) {
  for (const RuleParams& p : {Betas(0.6, 0.999), Betas(0.6, 0.999, false), Betas(0.7, 0.9)}) {
    for (double n = 1e3; n < 1e8; n *= 1.0137) {
      GroupStats s;
      const StepOutcome out = ApplyRule(p, &s, n * n, false);
      ASSERT_EQ(out.scale, Unbounded(p, s) / n)
          << "betas " << p.beta1 << "/" << p.beta2 << " bias " << p.bias_correction << " n " << n;
    }
  }
}

// A state no accepted norms of these betas give (imported: a mean of 1e6 with no squared mean,
// or means before the first step) is held to the bound, rather than growing the gradients by
// millions (an fp16 gradient past its range, to infinity).
TEST(RuleBoundTest, StatisticsTheBetasCannotBuildAreHeldToTheBound) {
  const RuleParams p = Betas(0.6, 0.999);
  GroupStats imported;
  imported.t = 1000;
  imported.m = 1e6;
  const StepOutcome out = ApplyRule(p, &imported, 1.0, false);
  EXPECT_TRUE(out.flags & kFlagAccepted);
  EXPECT_FALSE(out.flags & kFlagSkipped);
  // At step 1001 of v4, 12.58 (15.81 after many more steps).
  EXPECT_NEAR(out.stabilized_norm / Bound(p, imported), 1.0, 1e-12);
  EXPECT_NEAR(out.stabilized_norm, 12.58, 0.01);

  GroupStats before_first;  // t 0 with means: the first step's bound is 1
  before_first.m = 100.0;
  before_first.v = 0.0;
  EXPECT_LE(ApplyRule(p, &before_first, 1.0, false).stabilized_norm, 1.0);

  // A beta change re-expresses the means for the new betas (RescaleStabilizerEmas), which may
  // leave them past the new betas' bound: 0.6/0.999 can reach 15.8 where 0.7/0.9 stop at 1.4.
  GroupStats switched;
  for (int step = 0; step < 30; ++step) ApplyRule(p, &switched, (step == 29 ? 1e6 : 1.0), false);
  const RuleParams spam = Betas(0.7, 0.9);
  RescaleStabilizerEmas(p, spam, &switched);
  const StepOutcome after = ApplyRule(spam, &switched, 1.0, false);
  EXPECT_LE(after.stabilized_norm, Bound(spam, switched));
  EXPECT_LT(after.stabilized_norm, 1.5);
}

// The bound's limit after many steps, computed by hand from method.md's closed form
// (K = (1 - b1)^2 / ((1 - b2) (1 - r)), r = b1^2 / b2, the bias weights near 1): 15.81 for the
// v4 defaults (0.6, 0.999), 1.406 for Stable-SPAM (0.7, 0.9).
TEST(RuleBoundTest, TheBoundsLimitIsMethodMdsFigure) {
  GroupStats late;
  late.t = 1000000;
  EXPECT_NEAR(Bound(Betas(0.6, 0.999), late), 15.815, 0.001);
  EXPECT_NEAR(Bound(Betas(0.7, 0.9), late), 1.4056, 0.0001);
  // The first step's bound is 1, whatever the betas.
  GroupStats first;
  first.t = 1;
  EXPECT_NEAR(Bound(Betas(0.6, 0.999), first), 1.0, 1e-12);
  EXPECT_NEAR(Bound(Betas(0.7, 0.9), first), 1.0, 1e-12);
}

}  // namespace
}  // namespace gstab
