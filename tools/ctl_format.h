// Rendering for gstabctl: tables, sparklines, events.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gstab/v1/stabilizer.pb.h"

namespace gstab::ctl {

// A job whose step waits for local workers (JobSummary.arrived_local_ranks not empty): the
// ranks it waits for.
std::string WaitingLine(const v1::JobSummary& job);
// One line per job, with a header; then the jobs whose step waits, and the retired jobs.
std::string StatusTable(const v1::ListJobsResponse& jobs);
// The `top` screen (without the clear-screen sequence).
std::string TopScreen(const v1::ListJobsResponse& jobs, int width);
// ▁▂▃▄▅▆▇█ on a log scale over the finite values (a decade at least, so a steady norm draws
// flat); '!' marks non-finite ones.
std::string Sparkline(const std::vector<double>& values);
std::string EventLine(const v1::Event& event);

}  // namespace gstab::ctl
