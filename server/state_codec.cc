#include "server/state_codec.h"

namespace gstab {

v1::GroupState GroupStateToProto(const std::string& name, const GroupStats& s) {
  v1::GroupState p;
  p.set_name(name);
  p.set_t(s.t);
  p.set_m(s.m);
  p.set_v(s.v);
  p.set_zclip_mean(s.zclip_mean);
  p.set_zclip_var(s.zclip_var);
  p.set_zclip_warm_sum(s.zclip_warm_sum);
  p.set_zclip_warm_sumsq(s.zclip_warm_sumsq);
  p.set_spike_mean(s.spike_mean);
  p.set_spike_var(s.spike_var);
  p.set_short_ema(s.short_ema);
  p.set_long_ema(s.long_ema);
  p.set_consecutive_spikes(s.consecutive_spikes);
  p.set_consecutive_non_finite(s.consecutive_non_finite);
  p.set_calm_steps(s.calm_steps);
  p.set_diverging(s.diverging);
  p.set_steps(s.steps);
  p.set_non_finite_steps(s.non_finite_steps);
  p.set_zero_norm_steps(s.zero_norm_steps);
  p.set_spikes(s.spikes);
  return p;
}

GroupStats GroupStateFromProto(const v1::GroupState& p) {
  GroupStats s;
  s.t = p.t();
  s.m = p.m();
  s.v = p.v();
  s.zclip_mean = p.zclip_mean();
  s.zclip_var = p.zclip_var();
  s.zclip_warm_sum = p.zclip_warm_sum();
  s.zclip_warm_sumsq = p.zclip_warm_sumsq();
  s.spike_mean = p.spike_mean();
  s.spike_var = p.spike_var();
  s.short_ema = p.short_ema();
  s.long_ema = p.long_ema();
  s.consecutive_spikes = p.consecutive_spikes();
  s.consecutive_non_finite = p.consecutive_non_finite();
  s.calm_steps = p.calm_steps();
  s.diverging = p.diverging();
  s.steps = p.steps();
  s.non_finite_steps = p.non_finite_steps();
  s.zero_norm_steps = p.zero_norm_steps();
  s.spikes = p.spikes();
  return s;
}

}  // namespace gstab
