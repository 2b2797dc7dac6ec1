// The state the checkpoint-store tests save and read: job "a" at a step, with one group.
#pragma once

#include <cstdint>

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

}  // namespace gstab::testing
