// The plain data of the per-group update rule: parameters, statistics and the outcome of one
// step. Trivially copyable so the same bytes live in host memory, GPU memory and checkpoints.
#pragma once

#include <cstdint>

namespace gstab {

enum class PolicyKind : uint32_t {
  kStabilize = 0,
  kClip = 1,
  kZClip = 2,
  kMonitor = 3,
};

// Resolved parameters (every default filled in and validated; see core/config.h).
struct RuleParams {
  PolicyKind policy = PolicyKind::kStabilize;
  // stabilize
  double beta1 = 0.6;
  double beta2 = 0.999;
  double eps = 1e-12;
  bool bias_correction = true;
  // clip
  double clip_max_norm = 1.0;
  // zclip
  double zclip_alpha = 0.97;
  uint32_t zclip_warmup_steps = 25;
  double zclip_z_threshold = 2.5;
  double zclip_max_norm = 0.0;  // 0: no cap
  // spike detection
  double spike_z_threshold = 6.0;
  uint32_t spike_warmup_steps = 25;
  double spike_beta = 0.98;
  double spike_ratio = 10.0;
  // divergence
  uint32_t diverge_consecutive_spikes = 3;
  uint32_t diverge_consecutive_non_finite = 3;
  double diverge_growth_ratio = 4.0;
  double diverge_short_beta = 0.9;
  double diverge_long_beta = 0.995;
  uint32_t diverge_recovery_steps = 50;
  // non-finite steps: zero the gradients (true) or keep them
  bool zero_non_finite = true;
};

// Running statistics of one norm group. Zero-initialised is the correct initial state.
// Every policy's statistics are updated on every accepted step, whichever policy is active,
// so a runtime policy switch starts from warm statistics.
struct GroupStats {
  uint64_t t = 0;  // accepted steps (finite, non-zero norm)
  // stabilize: EMAs of n and n^2, not bias corrected
  double m = 0.0;
  double v = 0.0;
  // zclip: EMA mean/variance of the (clipped) norm, and warm-up sums
  double zclip_mean = 0.0;
  double zclip_var = 0.0;
  double zclip_warm_sum = 0.0;
  double zclip_warm_sumsq = 0.0;
  // spike detector: EMA mean/variance of the (spike-clamped) norm
  double spike_mean = 0.0;
  double spike_var = 0.0;
  // divergence: short- and long-horizon EMAs of the (spike-clamped) norm
  double short_ema = 0.0;
  double long_ema = 0.0;
  uint32_t consecutive_spikes = 0;
  uint32_t consecutive_non_finite = 0;
  uint32_t calm_steps = 0;
  uint32_t diverging = 0;
  // counters
  uint64_t steps = 0;
  uint64_t non_finite_steps = 0;
  uint64_t zero_norm_steps = 0;
  uint64_t spikes = 0;
};

// Flags of StepOutcome::flags.
enum StepFlag : uint32_t {
  kFlagAccepted = 1u << 0,         // statistics updated, t advanced
  kFlagSkipped = 1u << 1,          // non-finite norm: the optimizer must skip this step
  kFlagZeroNorm = 1u << 2,         // all-zero gradient: nothing changed
  kFlagSpike = 1u << 3,            // z-score above the threshold (after warm-up)
  kFlagSpikeRatio = 1u << 4,       // norm above spike_ratio * m_hat (after warm-up)
  kFlagDiverging = 1u << 5,        // the group is in the diverging state after this step
  kFlagDivergenceBegan = 1u << 6,  // ... and entered it at this step
  kFlagDivergenceEnded = 1u << 7,  // left the diverging state at this step
  kFlagClipped = 1u << 8,          // the applied scale is below one
  kFlagMismatch = 1u << 9,         // the job's nodes disagreed on the step or the group layout:
                                   // nothing was applied (set with kFlagSkipped)
  kFlagVoided = 1u << 10,          // CUDA: the step was voided (a node or local GPU lost, the
                                   // all-reduce aborted): nothing was applied (with kFlagSkipped)
  kFlagWithStep = 1u << 11,        // finite, skipped with the step another group's non-finite
                                   // norm skips: statistics untouched (with kFlagSkipped)
  kFlagUnregistered = 1u << 12,    // CUDA: no worker registers the group (an import or a
                                   // checkpoint brought it): statistics untouched, scale 1
};

struct StepOutcome {
  double norm = 0.0;             // raw L2 norm (NaN/Inf when non-finite)
  double stabilized_norm = 0.0;  // norm after scaling
  double scale = 1.0;            // multiply the group's gradients by this (0: zero them)
  double z = 0.0;                // spike detector z-score (0 during warm-up)
  uint32_t flags = 0;
};

// The results a CUDA worker reads from the buffer gstabd writes each step (before `done`):
// this header, then one StepOutcome per group. The C ABI spells the same layout as
// gstab_results_header / gstab_group_outcome.
struct StepResultsHeader {
  uint64_t step = 0;        // the step these results belong to (0: none yet)
  uint32_t num_groups = 0;  // StepOutcome entries that follow
  uint32_t flags = 0;       // OR of the groups' flags (kFlagSkipped: skip the optimizer step)
};
static_assert(sizeof(StepResultsHeader) == 16, "the results layout is part of the C ABI");
static_assert(sizeof(StepOutcome) == 40, "the results layout is part of the C ABI");

}  // namespace gstab
