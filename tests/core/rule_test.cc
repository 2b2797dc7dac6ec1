#include "core/rule.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace gstab {
namespace {

RuleParams Stabilize(double beta1 = 0.6, double beta2 = 0.999) {
  RuleParams p;
  p.beta1 = beta1;
  p.beta2 = beta2;
  return p;
}

StepOutcome StepNorm(const RuleParams& p, GroupStats* s, double n) {
  return ApplyRule(p, s, n * n, false);
}

RuleParams ZClip(uint32_t warmup_steps) {
  RuleParams p;
  p.policy = PolicyKind::kZClip;
  p.zclip_warmup_steps = warmup_steps;
  return p;
}

// `steps` norms alternating 9 and 11 (mean 10, population variance 1 over an even count).
void StepNormsOf9And11(const RuleParams& p, GroupStats* s, int steps) {
  for (int i = 0; i < steps; ++i) StepNorm(p, s, i % 2 == 0 ? 9.0 : 11.0);
}

// The statistics a step may change, without the counters that every step advances.
bool SameStatistics(GroupStats a, GroupStats b) {
  a.steps = b.steps = 0;
  a.non_finite_steps = b.non_finite_steps = 0;
  a.zero_norm_steps = b.zero_norm_steps = 0;
  a.consecutive_non_finite = b.consecutive_non_finite = 0;
  a.consecutive_spikes = b.consecutive_spikes = 0;
  a.calm_steps = b.calm_steps = 0;
  return std::memcmp(&a, &b, sizeof a) == 0;
}

TEST(RuleTest, StabilizeMatchesHandComputedSteps) {
  const RuleParams p = Stabilize();
  GroupStats s;
  // Step 1, n = 3: m = 1.2, v = 0.009, m_hat = 3, v_hat = 9, target = 3 / (3 + 1e-12).
  StepOutcome a = StepNorm(p, &s, 3.0);
  EXPECT_DOUBLE_EQ(s.m, 1.2);
  EXPECT_NEAR(s.v, 0.009, 1e-17);
  EXPECT_EQ(s.t, 1u);
  EXPECT_NEAR(a.stabilized_norm, 1.0, 1e-12);
  EXPECT_NEAR(a.scale, 1.0 / 3.0, 1e-12);
  // Step 2, n = 5: m = 2.72, v = 0.033991, m_hat = 4.25, v_hat = 0.033991 / 0.001999.
  StepOutcome b = StepNorm(p, &s, 5.0);
  EXPECT_DOUBLE_EQ(s.m, 2.72);
  EXPECT_NEAR(s.v, 0.033991, 1e-15);
  EXPECT_NEAR(b.stabilized_norm, 1.0306550993448187, 1e-12);
  EXPECT_NEAR(b.scale, 1.0306550993448187 / 5.0, 1e-12);
  EXPECT_EQ(b.flags & kFlagAccepted, kFlagAccepted);
}

// A straightforward long-double transcription of docs/method.md.
struct Reference {
  long double m = 0, v = 0;
  long long t = 0;
  long double Step(long double g1, long double g2, long double eps, long double n) {
    t += 1;
    m = g1 * m + (1 - g1) * n;
    v = g2 * v + (1 - g2) * n * n;
    long double mh = m / (1 - std::pow(g1, static_cast<long double>(t)));
    long double vh = v / (1 - std::pow(g2, static_cast<long double>(t)));
    long double target = mh / (std::sqrt(vh) + eps);
    return target / std::max(n, eps);
  }
};

TEST(RuleTest, StabilizeMatchesLongDoubleReferenceOverLongRandomSequences) {
  for (const auto& [g1, g2] : {std::pair{0.6, 0.999}, std::pair{0.7, 0.9}}) {
    const RuleParams p = Stabilize(g1, g2);
    GroupStats s;
    Reference ref;
    std::mt19937_64 rng(42);
    std::lognormal_distribution<double> norm(0.0, 1.5);
    std::uniform_int_distribution<int> rare(0, 199);
    for (int step = 0; step < 20000; ++step) {
      double n = norm(rng);
      if (rare(rng) == 0) n *= 1e4;  // occasional spikes
      if (rare(rng) == 1) {          // occasional non-finite steps change nothing
        StepOutcome skipped = ApplyRule(p, &s, NAN, true);
        ASSERT_TRUE(skipped.flags & kFlagSkipped);
        continue;
      }
      StepOutcome out = StepNorm(p, &s, n);
      long double expected = ref.Step(g1, g2, 1e-12L, n);
      ASSERT_NEAR(out.scale / static_cast<double>(expected), 1.0, 1e-11)
          << "step " << step << " beta " << g1 << "/" << g2;
    }
    EXPECT_EQ(s.t, static_cast<uint64_t>(ref.t));
  }
}

TEST(RuleTest, SpikeOfAnySizeIsBoundedAndDoesNotGrowWithTheSpike) {
  for (const auto& [g1, g2, large_t_bound] :
       {std::tuple{0.6, 0.999, 12.65}, std::tuple{0.7, 0.9, 0.95}}) {
    const RuleParams p = Stabilize(g1, g2);
    std::mt19937_64 rng(7);
    std::lognormal_distribution<double> norm(0.0, 0.2);
    GroupStats warm;
    for (int i = 0; i < 20000; ++i) StepNorm(p, &warm, norm(rng));
    const double bound = StabilizedSpikeBound(p, warm.t + 1);
    EXPECT_NEAR(bound, large_t_bound, 0.01 * large_t_bound);

    double previous = 0.0;
    for (double factor : {1e3, 1e6, 1e30}) {
      GroupStats s = warm;
      StepOutcome out = StepNorm(p, &s, factor);
      // The bound is the limit for an infinite spike; a finite spike G may exceed it by the
      // history's share of m_hat, g1 * m / (sqrt(w) G), about g1 / (1 - g1) / factor relative.
      const double slack = 1.0 + 1.5 * g1 / (1.0 - g1) / factor + 1e-12;
      EXPECT_LE(out.stabilized_norm, bound * slack) << "spike x" << factor;
      EXPECT_GT(out.stabilized_norm, 0.5 * bound) << "spike x" << factor;
      if (previous > 0.0) {
        EXPECT_LE(out.stabilized_norm, previous * (1 + 1e-9));
      }
      previous = out.stabilized_norm;
    }
  }
}

TEST(RuleTest, BiasCorrectionMakesEarlyStepsUnbiased) {
  RuleParams p = Stabilize();
  GroupStats corrected;
  for (int i = 0; i < 5; ++i) {
    EXPECT_NEAR(StepNorm(p, &corrected, 2.5).stabilized_norm, 1.0, 1e-9) << "step " << i;
  }
  p.bias_correction = false;
  GroupStats raw;
  // Without correction the first step's target is (1 - g1) n / (sqrt(1 - g2) n).
  EXPECT_NEAR(StepNorm(p, &raw, 2.5).stabilized_norm, 0.4 / std::sqrt(0.001), 1e-9);
}

TEST(RuleTest, BiasCorrectionPowersAreAccurateForEveryStepCount) {
  for (const double beta : {0.0, 0.5, 0.9, 0.99, 0.999, 0.9999}) {
    for (const uint64_t t : {0ull, 1ull, 2ull, 3ull, 7ull, 100ull, 1000ull, 12345ull, 1000000ull}) {
      const long double want = std::pow(static_cast<long double>(beta), t);
      const long double got = rule_internal::PowSteps(beta, t);
      if (want < 1e-300L) {  // underflows, as pow does
        EXPECT_LT(got, 1e-300L) << beta << "^" << t;
      } else {  // t multiplications of half an ulp each at most
        EXPECT_LE(std::abs(got - want), static_cast<long double>(t + 1) * 0x1p-53L * want)
            << beta << "^" << t;
      }
    }
    EXPECT_EQ(rule_internal::PowSteps(beta, uint64_t{1} << 62), 0.0) << beta << "^2^62";
  }
  EXPECT_EQ(rule_internal::PowSteps(0.999, 1), 0.999);
}

TEST(RuleTest, CorruptStatisticsSkipTheStepInsteadOfScalingByNaN) {
  for (const double m : {NAN, INFINITY}) {
    GroupStats s;
    s.t = 10;
    s.m = m;
    s.v = 1.0;
    const StepOutcome out = ApplyRule(Stabilize(), &s, 4.0, false);
    EXPECT_EQ(out.scale, 1.0) << "m " << m;
    EXPECT_TRUE(out.flags & kFlagSkipped) << "m " << m;
  }
  // A scale beyond a float's range (the kernels apply it as one): the target is bounded
  // (rule_bound_test), so only an eps and a norm below any float sums' (1e-45) give one.
  GroupStats huge;
  huge.t = 10;
  huge.m = 1e20;
  RuleParams tiny_eps = Stabilize();
  tiny_eps.eps = 1e-60;
  const StepOutcome out = ApplyRule(tiny_eps, &huge, 1e-90, false);
  EXPECT_EQ(out.scale, 1.0);
  EXPECT_TRUE(out.flags & kFlagSkipped);
}

// The kernels take a scale as a float, whose 0 zeroes the gradients: a positive scale below a
// float's range is applied as the smallest positive float, not as 0.
TEST(RuleTest, APositiveScaleNeverReachesTheKernelsAsZero) {
  EXPECT_EQ(KernelScale(0.0), 0.0f);
  EXPECT_EQ(KernelScale(0.5), 0.5f);
  EXPECT_EQ(KernelScale(1e-50), std::numeric_limits<float>::denorm_min());
  EXPECT_GT(KernelScale(7e-46), 0.0f);
  // As clip makes one: max_norm 1e-6 of gradients whose norm is near fp32's range, summed.
  GroupStats s;
  RuleParams clip;
  clip.policy = PolicyKind::kClip;
  clip.clip_max_norm = 1e-6;
  const StepOutcome out = ApplyRule(clip, &s, 2e80, false);  // 1,700 elements at FLT_MAX
  EXPECT_GT(out.scale, 0.0);
  EXPECT_EQ(static_cast<float>(out.scale), 0.0f);
  EXPECT_GT(KernelScale(out.scale), 0.0f);
}

TEST(RuleTest, NonFiniteAndZeroNormsLeaveStatisticsUntouched) {
  const RuleParams p = Stabilize();
  GroupStats s;
  for (int i = 0; i < 50; ++i) StepNorm(p, &s, 1.0 + 0.01 * i);
  const GroupStats before = s;

  StepOutcome nan_step = ApplyRule(p, &s, NAN, true);
  EXPECT_TRUE(nan_step.flags & kFlagSkipped);
  EXPECT_FALSE(nan_step.flags & kFlagAccepted);
  EXPECT_EQ(nan_step.scale, 0.0);                            // default action: zero the gradients
  StepOutcome inf_step = ApplyRule(p, &s, INFINITY, false);  // overflowed sum of squares
  EXPECT_TRUE(inf_step.flags & kFlagSkipped);
  StepOutcome zero_step = ApplyRule(p, &s, 0.0, false);
  EXPECT_TRUE(zero_step.flags & kFlagZeroNorm);
  EXPECT_EQ(zero_step.scale, 1.0);

  EXPECT_TRUE(SameStatistics(before, s));
  EXPECT_EQ(s.t, before.t);
  EXPECT_EQ(s.non_finite_steps, 2u);
  EXPECT_EQ(s.zero_norm_steps, 1u);

  RuleParams keep = p;
  keep.zero_non_finite = false;
  EXPECT_EQ(ApplyRule(keep, &s, NAN, true).scale, 1.0);
  RuleParams monitor = p;
  monitor.policy = PolicyKind::kMonitor;
  EXPECT_EQ(ApplyRule(monitor, &s, NAN, true).scale, 1.0);
}

// A step with a non-finite group is skipped whole: a finite group's statistics stay as they
// were too, and its gradients are zeroed (or kept) as the non-finite group's.
TEST(RuleTest, AFiniteGroupOnANonFiniteStepIsSkippedWithIt) {
  const RuleParams p = Stabilize();
  GroupStats s;
  for (int i = 0; i < 50; ++i) StepNorm(p, &s, 1.0 + 0.01 * i);
  s.diverging = true;  // a state it keeps and reports
  const GroupStats before = s;
  const StepOutcome out = ApplyRuleInStep(p, &s, 1e8, /*any_non_finite=*/false,
                                          /*step_non_finite=*/true);
  EXPECT_EQ(out.flags, kFlagSkipped | kFlagWithStep | kFlagDiverging);
  EXPECT_EQ(out.norm, 1e4);  // measured: finite
  EXPECT_EQ(out.scale, 0.0);
  EXPECT_EQ(out.stabilized_norm, 0.0);
  EXPECT_TRUE(SameStatistics(before, s));
  EXPECT_EQ(s.t, before.t);
  EXPECT_EQ(s.steps, before.steps + 1);
  EXPECT_EQ(s.non_finite_steps, before.non_finite_steps);  // not its own
  RuleParams monitor = p;
  monitor.policy = PolicyKind::kMonitor;
  EXPECT_EQ(ApplyRuleInStep(monitor, &s, 4.0, false, true).scale, 1.0);
  // Its own non-finite norm, or a step without one, as ApplyRule.
  GroupStats a = before, b = before;
  EXPECT_EQ(ApplyRuleInStep(p, &a, 4.0, false, false).flags, ApplyRule(p, &b, 4.0, false).flags);
  EXPECT_EQ(std::memcmp(&a, &b, sizeof a), 0);
  EXPECT_EQ(ApplyRuleInStep(p, &a, NAN, true, true).flags, ApplyRule(p, &b, NAN, true).flags);
  EXPECT_EQ(std::memcmp(&a, &b, sizeof a), 0);
}

TEST(RuleTest, ClipEqualsTorchClipGradNorm) {
  RuleParams p;
  p.policy = PolicyKind::kClip;
  p.clip_max_norm = 1.0;
  GroupStats s;
  for (double n : {1e-3, 0.5, 0.999999, 1.0, 1.5, 37.0, 1e8}) {
    StepOutcome out = StepNorm(p, &s, n);
    const double torch = std::min(1.0, 1.0 / (n + 1e-6));
    EXPECT_DOUBLE_EQ(out.scale, torch) << n;
    EXPECT_EQ((out.flags & kFlagClipped) != 0, torch < 1.0) << n;
  }
}

TEST(RuleTest, ZClipWarmsUpThenClipsReciprocally) {
  RuleParams p;
  p.policy = PolicyKind::kZClip;
  GroupStats s;
  std::mt19937_64 rng(3);
  std::normal_distribution<double> norm(10.0, 1.0);
  double sum = 0, sumsq = 0;
  for (uint32_t i = 0; i < p.zclip_warmup_steps; ++i) {
    const double n = norm(rng);
    sum += n;
    sumsq += n * n;
    EXPECT_EQ(StepNorm(p, &s, n).scale, 1.0) << "warm-up step " << i;
  }
  const double k = p.zclip_warmup_steps;
  EXPECT_NEAR(s.zclip_mean, sum / k, 1e-12);
  EXPECT_NEAR(s.zclip_var, sumsq / k - (sum / k) * (sum / k), 1e-9);

  // A normal step passes unchanged; a spike is clipped to mu + z_thr^2 * sigma / z.
  EXPECT_EQ(StepNorm(p, &s, s.zclip_mean).scale, 1.0);
  const double mu = s.zclip_mean, sigma = std::sqrt(s.zclip_var);
  const double spike = mu + 20 * sigma;
  const double z = (spike - mu) / (sigma + 1e-6);
  StepOutcome out = StepNorm(p, &s, spike);
  EXPECT_NEAR(out.stabilized_norm, mu + 2.5 * 2.5 * sigma / z, 1e-9);
  EXPECT_TRUE(out.flags & kFlagClipped);

  RuleParams capped = p;
  capped.zclip_max_norm = 5.0;
  EXPECT_NEAR(StepNorm(capped, &s, mu).stabilized_norm, 5.0, 1e-12);
}

// The warm-up may be changed at any step (UpdateConfig, an import keeping the job's
// configuration): shortened past the steps taken, the EMA is set up at the next step from the
// running statistics of every step so far (it stayed 0 and zeroed every later step); lengthened
// after its end, it is not entered again (clipping would stop for the new warm-up's length).
TEST(RuleTest, ZClipWarmUpChangedMidwayKeepsClippingFromTheStepsTaken) {
  RuleParams p = ZClip(100);
  GroupStats s;
  StepNormsOf9And11(p, &s, 50);
  EXPECT_EQ(s.zclip_mean, 0.0);  // not set up yet
  p.zclip_warmup_steps = 25;
  StepOutcome out = StepNorm(p, &s, 10.0);
  EXPECT_EQ(out.scale, 1.0);
  EXPECT_NEAR(s.zclip_mean, 10.0, 0.05);  // 25 nines, 25 elevens and a ten
  EXPECT_NEAR(s.zclip_var, 1.0, 0.05);
  out = StepNorm(p, &s, 1000.0);  // a spike is clipped, not zeroed
  EXPECT_TRUE(out.flags & kFlagClipped);
  EXPECT_GT(out.stabilized_norm, 10.0);
  EXPECT_LT(out.stabilized_norm, 20.0);

  // A state whose warm-up sums stopped short (an earlier release's, stuck at a mean of 0): set up
  // from the detector's statistics, not the sums over every step's count.
  GroupStats stuck = s;
  stuck.zclip_mean = stuck.zclip_var = 0.0;
  stuck.zclip_warm_sum = 10.0;  // one step's, of 53
  stuck.zclip_warm_sumsq = 100.0;
  StepNorm(p, &stuck, 10.0);
  EXPECT_GT(stuck.zclip_mean, 9.0);
  EXPECT_LT(stuck.zclip_mean, 30.0);  // the detector folds a spike in at most at mean + 6 sigma

  p.zclip_warmup_steps = 1000;
  const double mean = s.zclip_mean;
  out = StepNorm(p, &s, 1000.0);
  EXPECT_TRUE(out.flags & kFlagClipped) << "a lengthened warm-up was entered again";
  EXPECT_LT(out.stabilized_norm, 2 * mean);
}

TEST(RuleTest, SpikeDetectionFiresOnAPlantedSpikeOnlyAndNotOnNoise) {
  RuleParams p = Stabilize();
  GroupStats s;
  std::mt19937_64 rng(11);
  std::lognormal_distribution<double> noise(0.0, 0.1);
  int spikes = 0, spike_step = -1;
  for (int step = 0; step < 5000; ++step) {
    double n = noise(rng);
    if (step == 2500) n *= 20;
    StepOutcome out = StepNorm(p, &s, n);
    if (out.flags & kFlagSpike) {
      ++spikes;
      spike_step = step;
      EXPECT_GT(out.z, p.spike_z_threshold);
    }
  }
  EXPECT_EQ(spikes, 1);
  EXPECT_EQ(spike_step, 2500);
  EXPECT_EQ(s.spikes, 1u);
}

// Exactly constant norms leave the detectors no spread: noise far below any spike afterwards
// must neither count as spikes nor lock the statistics (a spike is folded in at most at the
// mean plus the threshold's spread, which was 0).
// The ratio test compares the norm with spike_ratio times the stabilizer's mean before this
// step (bias corrected for the steps before it): after 30 steps of 1, m_hat is 1, so 10.5 is a
// ratio spike. The mean updated with 10.5 (about 1.99 with beta1 0.9) would not flag it.
TEST(RuleTest, TheRatioSpikeTestUsesTheMeanBeforeTheStep) {
  RuleParams p = Stabilize(0.9, 0.999);
  p.spike_z_threshold = 1e6;  // the z-score test out of the way
  GroupStats s;
  for (int i = 0; i < 30; ++i) ASSERT_EQ(StepNorm(p, &s, 1.0).flags & kFlagSpikeRatio, 0u) << i;
  const StepOutcome out = StepNorm(p, &s, 10.5);
  EXPECT_TRUE(out.flags & kFlagSpikeRatio);
  EXPECT_FALSE(out.flags & kFlagSpike);
  GroupStats below;
  for (int i = 0; i < 30; ++i) StepNorm(p, &below, 1.0);
  EXPECT_FALSE(StepNorm(p, &below, 9.5).flags & kFlagSpikeRatio);
}

// The z-score by hand: within the detector's first 50 steps its statistics are the plain mean
// and population variance. 26 norms alternating 1 and 3 give mean 2 and variance 1, so a 9
// scores (9 - 2) / 1 = 7, past the threshold of 6.
TEST(RuleTest, TheSpikeZScoreIsTheNormsDistanceInSigmas) {
  const RuleParams p = Stabilize();
  GroupStats s;
  for (int i = 0; i < 26; ++i) StepNorm(p, &s, i % 2 == 0 ? 1.0 : 3.0);
  EXPECT_NEAR(s.spike_mean, 2.0, 1e-12);
  EXPECT_NEAR(s.spike_var, 1.0, 1e-12);
  const StepOutcome out = StepNorm(p, &s, 9.0);
  EXPECT_NEAR(out.z, 7.0, 1e-9);
  EXPECT_TRUE(out.flags & kFlagSpike);
}

// ZClip's EMA after its warm-up, by hand: it follows the clipped norm, and its variance the
// distance from the updated mean. Warm-up of 24 norms alternating 9 and 11 (mean 10, variance
// 1); then 10 (mean 10, variance 0.97); then 20, z = 10 / (sqrt(0.97) + 1e-6), clipped to
// 10 + 2.5^2 sqrt(0.97) / z.
TEST(RuleTest, ZClipsEmaFollowsTheClippedNormAndTheUpdatedMean) {
  const RuleParams p = ZClip(24);
  GroupStats s;
  StepNormsOf9And11(p, &s, 24);
  EXPECT_NEAR(s.zclip_mean, 10.0, 1e-12);
  EXPECT_NEAR(s.zclip_var, 1.0, 1e-9);
  StepNorm(p, &s, 10.0);
  EXPECT_NEAR(s.zclip_mean, 10.0, 1e-12);
  EXPECT_NEAR(s.zclip_var, 0.97, 1e-9);
  const double sigma = std::sqrt(0.97);
  const double z = 10.0 / (sigma + 1e-6);
  const double clipped = 10.0 + 2.5 * 2.5 * sigma / z;
  const StepOutcome out = StepNorm(p, &s, 20.0);
  EXPECT_NEAR(out.stabilized_norm, clipped, 1e-9);
  const double mean = 0.97 * 10.0 + 0.03 * clipped;  // 10.018188...
  EXPECT_NEAR(s.zclip_mean, mean, 1e-9);
  EXPECT_NEAR(s.zclip_var, 0.97 * 0.97 + 0.03 * (clipped - mean) * (clipped - mean), 1e-9);
  EXPECT_NEAR(s.zclip_mean, 10.018188, 1e-6);  // not 10.3, the raw norm's
}

TEST(RuleTest, ConstantNormsThenTinyNoiseRaiseNoSpikes) {
  for (PolicyKind policy : {PolicyKind::kStabilize, PolicyKind::kZClip}) {
    RuleParams p = Stabilize();
    p.policy = policy;
    GroupStats s;
    for (int i = 0; i < 30; ++i) StepNorm(p, &s, 1.0);
    int spikes = 0;
    double smallest_scale = 1.0;
    for (int i = 0; i < 200; ++i) {
      const StepOutcome out = StepNorm(p, &s, 1.0 + 1e-5 * (i % 3));
      spikes += (out.flags & (kFlagSpike | kFlagSpikeRatio)) != 0;
      if (policy == PolicyKind::kZClip) smallest_scale = std::min(smallest_scale, out.scale);
    }
    EXPECT_EQ(spikes, 0);
    EXPECT_FALSE(s.diverging);
    EXPECT_EQ(smallest_scale, 1.0) << "ZClip clipped noise of 1e-5";
  }
}

// ZClip's cap bounds what it returns, not what its statistics learn: with the cap lifted, the
// next steps are not clipped to the old cap.
TEST(RuleTest, AZClipCapDoesNotBecomeItsMean) {
  RuleParams p;
  p.policy = PolicyKind::kZClip;
  p.zclip_max_norm = 5.0;
  GroupStats s;
  for (int i = 0; i < 300; ++i) {
    EXPECT_LE(StepNorm(p, &s, 10.0 + 0.5 * ((i * 7) % 5 - 2)).stabilized_norm, 5.0 + 1e-9);
  }
  p.zclip_max_norm = 0.0;
  EXPECT_NEAR(StepNorm(p, &s, 10.0).scale, 1.0, 1e-12);
}

// Betas changed mid-run (a preset switched with UpdateConfig): the EMAs re-expressed for the new
// betas keep the target norm where it was, as if the history had been averaged with them.
TEST(RuleTest, RescaledEmasKeepTheTargetNormAcrossABetaChange) {
  const RuleParams before = Stabilize(0.9, 0.99);
  const RuleParams after = Stabilize(0.6, 0.999);
  GroupStats s;
  for (int i = 0; i < 5; ++i) StepNorm(before, &s, 1.0);
  GroupStats unscaled = s;
  RescaleStabilizerEmas(before, after, &s);
  EXPECT_NEAR(StepNorm(after, &s, 1.0).stabilized_norm, 1.0, 1e-9);
  EXPECT_LT(StepNorm(after, &unscaled, 1.0).stabilized_norm, 0.5) << "the hazard this avoids";
  GroupStats fresh;  // nothing to re-express before the first accepted step
  RescaleStabilizerEmas(before, after, &fresh);
  EXPECT_EQ(fresh.m, 0.0);
}

TEST(RuleTest, NoSpikesDuringWarmUp) {
  const RuleParams p = Stabilize();
  GroupStats s;
  for (uint32_t i = 0; i < p.spike_warmup_steps; ++i) {
    EXPECT_FALSE(StepNorm(p, &s, i % 2 ? 1.0 : 1e6).flags & (kFlagSpike | kFlagSpikeRatio));
  }
}

TEST(RuleTest, ConsecutiveNonFiniteStepsStartDivergenceAndCalmStepsEndIt) {
  const RuleParams p = Stabilize();
  GroupStats s;
  for (int i = 0; i < 100; ++i) StepNorm(p, &s, 1.0 + 0.001 * (i % 7));
  EXPECT_FALSE(ApplyRule(p, &s, NAN, true).flags & kFlagDiverging);
  EXPECT_FALSE(ApplyRule(p, &s, NAN, true).flags & kFlagDiverging);
  StepOutcome third = ApplyRule(p, &s, NAN, true);
  EXPECT_TRUE(third.flags & kFlagDivergenceBegan);
  EXPECT_TRUE(third.flags & kFlagDiverging);
  int ended_after = -1;
  for (int i = 0; i < 200 && ended_after < 0; ++i) {
    // An all-zero step in between counts neither way (docs/method.md).
    if (i == 10) {
      EXPECT_TRUE(ApplyRule(p, &s, 0.0, false).flags & kFlagDiverging);
    }
    StepOutcome out = StepNorm(p, &s, 1.0 + 0.001 * (i % 7));
    if (out.flags & kFlagDivergenceEnded) ended_after = i + 1;
    EXPECT_FALSE(out.flags & kFlagDivergenceBegan);
  }
  EXPECT_EQ(ended_after, static_cast<int>(p.diverge_recovery_steps));
}

// Spikes and non-finite steps taking turns are as alarming as either kind in a row; a calm
// accepted step clears the count.
TEST(RuleTest, SpikesAndNonFiniteStepsTakingTurnsStartDivergence) {
  const RuleParams p = Stabilize();
  GroupStats s;
  for (int i = 0; i < 100; ++i) StepNorm(p, &s, 1.0 + 0.001 * (i % 7));
  EXPECT_FALSE(StepNorm(p, &s, 1e4).flags & kFlagDiverging);  // a spike
  EXPECT_FALSE(ApplyRule(p, &s, NAN, true).flags & kFlagDiverging);
  StepNorm(p, &s, 1.0);  // calm: the count starts again
  EXPECT_FALSE(StepNorm(p, &s, 1e4).flags & kFlagDiverging);
  EXPECT_FALSE(ApplyRule(p, &s, NAN, true).flags & kFlagDiverging);
  EXPECT_TRUE(StepNorm(p, &s, 1e5).flags & kFlagDivergenceBegan);
}

TEST(RuleTest, SteadilyGrowingNormIsDiverging) {
  const RuleParams p = Stabilize();
  GroupStats s;
  double n = 1.0;
  int began = -1;
  for (int i = 0; i < 1000 && began < 0; ++i) {
    n *= i < 300 ? 1.0 : 1.02;
    if (StepNorm(p, &s, n).flags & kFlagDivergenceBegan) began = i;
  }
  EXPECT_GT(began, 300);  // not while flat
  EXPECT_LT(began, 1000);
}

}  // namespace
}  // namespace gstab
