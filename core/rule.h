// The per-group update rule of docs/method.md, written once for the host and the CUDA
// stats kernel. Pure functions of (params, stats, sum of squares): no I/O, no allocation.
//
//   GroupStats stats{};                      // zero is the initial state
//   StepOutcome out = ApplyRule(params, &stats, sum_of_squares, any_non_finite_element);
//   // multiply the group's gradients by out.scale (0 means write zeros)
//
// Not thread-safe per GroupStats; distinct groups are independent.
#pragma once

#include <math.h>

#include "core/hd.h"
#include "core/rule_types.h"

namespace gstab {
namespace rule_internal {

GSTAB_HD inline bool IsFinite(double x) { return x - x == 0.0; }
GSTAB_HD inline double Max(double a, double b) { return a > b ? a : b; }
GSTAB_HD inline double Min(double a, double b) { return a < b ? a : b; }

// Smallest sigma used in a z-score denominator of the spike detector.
constexpr double kTinySigma = 1e-30;
// The spread the detectors assume at least, relative to their mean: statistics of exactly
// constant norms (a warm-up of identical steps, a beta of a single sample) have a sigma of 0, and
// every later step a hair above the mean would count as a spike (or be clipped to the mean),
// and then be folded in as the mean, keeping sigma at 0 for good.
constexpr double kRelativeSigmaFloor = 1e-3;
// torch.nn.utils.clip_grad_norm_ adds this to the norm; ZClip adds it to sigma.
constexpr double kClipEps = 1e-6;
// The largest scale the kernels can apply (they apply it as a float: FLT_MAX).
constexpr double kMaxFloatScale = 3.4028234663852886e38;

// EMA factor for the k-th sample (k >= 1): a plain running mean until 1/(1-beta) samples have
// been seen, so early estimates are unbiased without a separate correction.
GSTAB_HD inline double WarmBeta(double beta, uint64_t k) {
  const double running = 1.0 - 1.0 / static_cast<double>(k);
  return Min(beta, running);
}

// beta^t by repeated squaring: plain IEEE multiplications, which round alike on the host and in
// the CUDA stats kernel (pow does not: CUDA's double pow is within 2 ulp, glibc's within 1), so
// both backends keep bit-identical statistics from the same sums (their kernels' sums differ in
// the last bits: cpu_kernels.h). Relative error about t/2 ulp, far below what a
// bias correction needs; underflows to 0 for large t, as pow does.
GSTAB_HD inline double PowSteps(double beta, uint64_t t) {
  double result = 1.0;
  for (double b = beta; t != 0; t >>= 1, b *= b) {
    if (t & 1) result *= b;
  }
  return result;
}

// Exponentially weighted mean and variance update (West 1979).
GSTAB_HD inline void EmaMeanVar(double beta, double x, double* mean, double* var) {
  const double delta = x - *mean;
  *mean += (1.0 - beta) * delta;
  *var = beta * (*var + (1.0 - beta) * delta * delta);
}

// The largest target t accepted norms can give, whatever they were. With a_k and c_k the weights
// of the norm k steps back in m_hat and v_hat (bias correction included), Cauchy-Schwarz gives
// m_hat^2 <= v_hat * sum(a_k^2 / c_k), a geometric series in r = beta1^2 / beta2 (at most 1:
// config.h). Statistics the EMAs built with these betas stay at or below it (the first step's
// meet it); others (an imported state, or one built with other betas and re-expressed for these)
// are held to it, where their target could otherwise be any size, and the gradients scaled past
// an fp16's range.
GSTAB_HD inline double TargetBound(const RuleParams& p, uint64_t t, double m_weight,
                                   double v_weight) {
  const double r = p.beta2 > 0.0 ? p.beta1 * p.beta1 / p.beta2 : 0.0;  // beta2 0: beta1 0
  const double series = r < 1.0 ? (1.0 - PowSteps(r, t)) / (1.0 - r) : static_cast<double>(t);
  const double g1 = 1.0 - p.beta1;
  return sqrt(g1 * g1 * v_weight * series / ((1.0 - p.beta2) * m_weight * m_weight));
}

// The GradientStabilizer target norm after folding n into the EMAs (t already advanced), held to
// TargetBound.
GSTAB_HD inline double StabilizeTarget(const RuleParams& p, const GroupStats& s) {
  // What the bias correction divides m and v by (1 without it).
  const double m_weight = p.bias_correction ? 1.0 - PowSteps(p.beta1, s.t) : 1.0;
  const double v_weight = p.bias_correction ? 1.0 - PowSteps(p.beta2, s.t) : 1.0;
  const double target = (s.m / m_weight) / (sqrt(s.v / v_weight) + p.eps);
  // Held only past the bound's rounding: statistics the betas built meet it at most (the first
  // step does, eps lost in rounding), and keep their results to the bit. A NaN or infinite
  // target (statistics corrupt past the import's checks) stays as it is: the rule skips the step
  // for it.
  const double bound = TargetBound(p, s.t, m_weight, v_weight);
  return IsFinite(target) && target > bound * (1.0 + 1e-9) ? bound : target;
}

// ZClip: returns the norm to clip to (n itself when no clipping applies) and updates its EMA.
// The EMA is set up once: at the warm-up's last step from the plain mean and variance of the
// warm-up's norms, or, when the warm-up was shortened below the steps taken (an UpdateConfig, an
// import), at the next step from the spike detector's running statistics of every accepted
// step (this step's included). A set-up mean is positive (accepted norms are), so a mean of 0 is
// one not set up yet, and a warm-up lengthened later is not entered again.
GSTAB_HD inline double ZClipTarget(const RuleParams& p, GroupStats* s, double n) {
  const uint64_t k = s->t;  // this step's index among accepted steps, 1-based
  const uint64_t warmup = p.zclip_warmup_steps > 0 ? p.zclip_warmup_steps : 1;
  if (!(s->zclip_mean > 0.0)) {
    if (k > warmup) {
      // The warm-up sums may cover fewer steps than k (a state of a release that let them stop
      // short): the detector's statistics cover them all. Its mean is positive after an
      // accepted step, unless the state lacks it: then this norm.
      const bool detector = s->spike_mean > 0.0;
      s->zclip_mean = detector ? s->spike_mean : n;
      s->zclip_var = detector ? s->spike_var : 0.0;
    } else {
      s->zclip_warm_sum += n;
      s->zclip_warm_sumsq += n * n;
      if (k == warmup) {
        const double kd = static_cast<double>(k);
        s->zclip_mean = s->zclip_warm_sum / kd;
        s->zclip_var = Max(0.0, s->zclip_warm_sumsq / kd - s->zclip_mean * s->zclip_mean);
      }
    }
    return p.zclip_max_norm > 0.0 ? Min(n, p.zclip_max_norm) : n;
  }
  const double sigma = Max(sqrt(s->zclip_var), kRelativeSigmaFloor * s->zclip_mean);
  const double z = (n - s->zclip_mean) / (sigma + kClipEps);
  double target = n;
  if (z > p.zclip_z_threshold) {
    target = s->zclip_mean + p.zclip_z_threshold * p.zclip_z_threshold * sigma / z;
  }
  // The EMA follows the z-clipped norm, not the cap: a cap below the norms would otherwise
  // become the mean, with a sigma near 0, and clip every later step to it for good.
  const double a = p.zclip_alpha;
  s->zclip_mean = a * s->zclip_mean + (1.0 - a) * target;
  const double d = target - s->zclip_mean;
  s->zclip_var = a * s->zclip_var + (1.0 - a) * d * d;
  return p.zclip_max_norm > 0.0 ? Min(target, p.zclip_max_norm) : target;
}

// Spike detection and the divergence EMAs for an accepted step. Returns the flags it raised
// and writes the z-score. Uses the statistics as they were before this step.
GSTAB_HD inline uint32_t DetectSpike(const RuleParams& p, GroupStats* s, double n, double* z_out) {
  uint32_t flags = 0;
  const uint64_t k = s->t;  // already advanced: this step's 1-based index
  const double sigma = Max(sqrt(s->spike_var), kRelativeSigmaFloor * s->spike_mean);
  const bool warm = k > p.spike_warmup_steps;
  double z = 0.0;
  if (k > 1) z = (n - s->spike_mean) / (sigma + kTinySigma);
  if (warm && z > p.spike_z_threshold) flags |= kFlagSpike;
  if (warm && k > 1) {
    double m_hat = s->m;  // pre-update stabilizer mean, bias corrected for t - 1 steps
    if (p.bias_correction) m_hat /= 1.0 - PowSteps(p.beta1, k - 1);
    if (n > p.spike_ratio * m_hat) flags |= kFlagSpikeRatio;
  }
  *z_out = warm ? z : 0.0;

  // A spike must not blind the detector: fold in at most mean + threshold * sigma.
  double x = n;
  if (flags & (kFlagSpike | kFlagSpikeRatio)) {
    x = Min(n, s->spike_mean + p.spike_z_threshold * sigma);
  }
  EmaMeanVar(WarmBeta(p.spike_beta, k), x, &s->spike_mean, &s->spike_var);
  s->short_ema += (1.0 - WarmBeta(p.diverge_short_beta, k)) * (x - s->short_ema);
  s->long_ema += (1.0 - WarmBeta(p.diverge_long_beta, k)) * (x - s->long_ema);
  return flags;
}

// Advances the divergence state machine by one step. Spikes and non-finite steps are counted
// until a calm accepted step (one kind does not reset the other's count, nor does a zero-norm
// step), so spikes and non-finite steps taking turns raise the alarm too: both kinds together
// count toward the larger of their two thresholds.
GSTAB_HD inline uint32_t UpdateDivergence(const RuleParams& p, GroupStats* s, uint32_t flags) {
  const bool spike = (flags & (kFlagSpike | kFlagSpikeRatio)) != 0;
  const bool non_finite = (flags & kFlagSkipped) != 0;
  const bool growing = s->t > p.spike_warmup_steps && s->long_ema > 0.0 &&
                       s->short_ema > p.diverge_growth_ratio * s->long_ema;
  const bool calm = (flags & kFlagAccepted) && !spike && !non_finite && !growing;
  if (calm) {
    s->consecutive_spikes = 0;
    s->consecutive_non_finite = 0;
  }
  s->consecutive_spikes += spike ? 1 : 0;
  s->consecutive_non_finite += non_finite ? 1 : 0;
  const uint32_t mixed_threshold = p.diverge_consecutive_spikes > p.diverge_consecutive_non_finite
                                       ? p.diverge_consecutive_spikes
                                       : p.diverge_consecutive_non_finite;
  const bool mixed = s->consecutive_spikes > 0 && s->consecutive_non_finite > 0 &&
                     s->consecutive_spikes + s->consecutive_non_finite >= mixed_threshold;
  const bool alarm = s->consecutive_spikes >= p.diverge_consecutive_spikes ||
                     s->consecutive_non_finite >= p.diverge_consecutive_non_finite || mixed ||
                     growing;
  // A zero-norm step counts neither way: the calm steps before and after it add up.
  if (calm) {
    s->calm_steps += 1;
  } else if (!(flags & kFlagZeroNorm)) {
    s->calm_steps = 0;
  }
  uint32_t out = 0;
  if (!s->diverging && alarm) {
    s->diverging = 1;
    out |= kFlagDivergenceBegan;
  } else if (s->diverging && s->calm_steps >= p.diverge_recovery_steps) {
    s->diverging = 0;
    out |= kFlagDivergenceEnded;
  }
  if (s->diverging) out |= kFlagDiverging;
  return out;
}

// What a bias-corrected EMA of `beta` divides by after t samples (1 without the correction).
GSTAB_HD inline double BiasWeight(bool corrected, double beta, uint64_t t) {
  return corrected ? 1.0 - PowSteps(beta, t) : 1.0;
}

// The scale of a skipped step's gradients: zeroed (non_finite_action zero), or kept as they
// are (keep, or the monitor policy, which changes no gradient).
GSTAB_HD inline double SkippedScale(const RuleParams& p) {
  return (p.zero_non_finite && p.policy != PolicyKind::kMonitor) ? 0.0 : 1.0;
}

}  // namespace rule_internal

// Whether the stabilizer's EMAs mean the same under `a` and `b` (beta1, beta2, bias correction).
GSTAB_HD inline bool SameStabilizerEmas(const RuleParams& a, const RuleParams& b) {
  return a.beta1 == b.beta1 && a.beta2 == b.beta2 && a.bias_correction == b.bias_correction;
}

// Re-expresses the stabilizer's EMAs m and v, built with `from`'s betas, as `to`'s would be with
// the same corrected means: the bias correction 1 - beta^t holds only for the betas the EMAs were
// built with, so a change of beta1, beta2 or bias correction mid-run would otherwise move the
// target norm (by 9x for v4 after 5 steps of Stable-SPAM) and let it drift back over hundreds
// of steps.
GSTAB_HD inline void RescaleStabilizerEmas(const RuleParams& from, const RuleParams& to,
                                           GroupStats* s) {
  using rule_internal::BiasWeight;
  if (s->t == 0 || SameStabilizerEmas(from, to)) return;
  s->m *= BiasWeight(to.bias_correction, to.beta1, s->t) /
          BiasWeight(from.bias_correction, from.beta1, s->t);
  s->v *= BiasWeight(to.bias_correction, to.beta2, s->t) /
          BiasWeight(from.bias_correction, from.beta2, s->t);
}

// Applies one step of the active policy to one norm group.
//   sum_of_squares: the group's sum of squared gradient elements (fp64).
//   any_non_finite: whether any element was NaN or Inf.
// Non-finite or zero norms update no statistic and do not advance t.
GSTAB_HD inline StepOutcome ApplyRule(const RuleParams& p, GroupStats* s, double sum_of_squares,
                                      bool any_non_finite) {
  using namespace rule_internal;
  StepOutcome out;
  const double n = sqrt(sum_of_squares);
  out.norm = any_non_finite ? NAN : n;
  s->steps += 1;

  if (any_non_finite || !IsFinite(n)) {
    s->non_finite_steps += 1;
    out.flags = kFlagSkipped;
    out.scale = SkippedScale(p);
    out.stabilized_norm = out.scale == 0.0 ? 0.0 : out.norm;
    out.flags |= UpdateDivergence(p, s, out.flags);
    return out;
  }
  if (n == 0.0) {
    s->zero_norm_steps += 1;
    out.flags = kFlagZeroNorm | UpdateDivergence(p, s, kFlagZeroNorm);
    return out;
  }

  s->t += 1;
  uint32_t flags = kFlagAccepted | DetectSpike(p, s, n, &out.z);
  if (flags & (kFlagSpike | kFlagSpikeRatio)) s->spikes += 1;

  s->m = p.beta1 * s->m + (1.0 - p.beta1) * n;
  s->v = p.beta2 * s->v + (1.0 - p.beta2) * n * n;
  const double stabilized = StabilizeTarget(p, *s);
  const double zclipped = ZClipTarget(p, s, n);

  double scale = 1.0;
  switch (p.policy) {
    case PolicyKind::kStabilize:
      scale = stabilized / Max(n, p.eps);
      break;
    case PolicyKind::kClip:
      scale = Min(1.0, p.clip_max_norm / (n + kClipEps));
      break;
    case PolicyKind::kZClip:
      scale = zclipped / n;
      break;
    case PolicyKind::kMonitor:
      break;
  }
  if (!IsFinite(scale) || scale > kMaxFloatScale || (scale > 1.0 && n * scale > kMaxFloatScale)) {
    // Only statistics gstabd never writes give this (NaN or infinite ones; the target is
    // otherwise bounded, so a finite one only with a norm below any float sums'): leave the
    // gradients as they are and have the step skipped rather than apply a
    // scale that is NaN, infinite once the kernels make it a float, or that would grow the
    // gradients past a float's range. Unlike other skipped steps', the norm is taken: the
    // statistics move toward the job's own norms, where left as they are they would skip every
    // step for good.
    scale = 1.0;
    flags |= kFlagSkipped;
  }
  if (scale < 1.0) flags |= kFlagClipped;
  out.scale = scale;
  out.stabilized_norm = n * scale;
  out.flags = flags | UpdateDivergence(p, s, flags);
  return out;
}

// A group's scale as the kernels apply it, a float, in which 0 zeroes the gradients (a skipped
// step's): a positive scale below a float's range is the smallest positive float instead.
GSTAB_HD inline float KernelScale(double scale) {
  const float f = static_cast<float>(scale);
  return scale > 0.0 && f == 0.0f ? 1.40129846e-45f : f;  // FLT_TRUE_MIN
}

// A group whose norm is finite, on a step another group's non-finite norm skips: the job's step
// is skipped whole, so its statistics stay untouched too (counted as a step seen), and its
// gradients are zeroed or kept as the non-finite group's are.
GSTAB_HD inline StepOutcome SkipWithStep(const RuleParams& p, GroupStats* s,
                                         double sum_of_squares) {
  StepOutcome out;
  out.norm = sqrt(sum_of_squares);
  s->steps += 1;
  out.flags = kFlagSkipped | kFlagWithStep | (s->diverging ? kFlagDiverging : 0u);
  out.scale = rule_internal::SkippedScale(p);
  out.stabilized_norm = out.norm * out.scale;
  return out;
}

// One group's part of a step of the job: `step_non_finite`, whether any group of the step was
// non-finite (on any rank or node: the same on each), skips the step whole.
GSTAB_HD inline StepOutcome ApplyRuleInStep(const RuleParams& p, GroupStats* s,
                                            double sum_of_squares, bool any_non_finite,
                                            bool step_non_finite) {
  if (step_non_finite && !any_non_finite) return SkipWithStep(p, s, sum_of_squares);
  return ApplyRule(p, s, sum_of_squares, any_non_finite);
}

// The bound of docs/method.md on the stabilized norm of an arbitrarily large spike at
// accepted step t >= 1: b / sqrt(w), b = (1 - beta1) / (1 - beta1^t), w = (1 - beta2) /
// (1 - beta2^t).
GSTAB_HD inline double StabilizedSpikeBound(const RuleParams& p, uint64_t t) {
  double b = 1.0 - p.beta1;
  double w = 1.0 - p.beta2;
  if (p.bias_correction) {
    b /= 1.0 - rule_internal::PowSteps(p.beta1, t);
    w /= 1.0 - rule_internal::PowSteps(p.beta2, t);
  }
  return b / sqrt(w);
}

}  // namespace gstab
