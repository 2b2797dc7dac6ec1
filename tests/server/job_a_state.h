// The state the checkpoint-store tests save and read: job "a" at a step, with one group.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "gstab/v1/stabilizer.pb.h"
#include "server/state_codec.h"

namespace gstab::testing {

inline v1::JobState JobA(uint64_t last_step) {
  v1::JobState job;
  job.set_format_version(kJobStateFormatVersion);
  job.set_job("a");
  job.set_last_step(last_step);
  job.add_groups()->set_name("w");
  return job;
}

// JobA with groups `names` in that order (in place of its "w"), each of `t` accepted steps and
// the stabilizer's moments m 2 and v 5.
inline v1::JobState JobAWithGroups(uint64_t last_step, std::initializer_list<const char*> names,
                                   uint64_t t) {
  v1::JobState job = JobA(last_step);
  job.clear_groups();
  for (const char* name : names) {
    v1::GroupState* g = job.add_groups();
    g->set_name(name);
    g->set_t(t);
    g->set_m(2.0);
    g->set_v(5.0);
  }
  return job;
}

}  // namespace gstab::testing
