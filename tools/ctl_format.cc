#include "tools/ctl_format.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"

namespace gstab::ctl {
namespace {

// NaN and infinity apart: they point to different causes (0/0 against an overflow).
std::string Norm(double v) { return std::isnan(v) ? "nan" : absl::StrFormat("%.4g", v); }

// Whom a job belongs to: its uid, cert:NAME (a client certificate's name), or "-".
std::string Owner(const v1::JobSummary& j) {
  if (j.has_owner_certificate()) return absl::StrCat("cert:", j.owner_certificate());
  return j.has_owner_uid() ? absl::StrCat(j.owner_uid()) : "-";
}

const char* EventName(v1::EventType t) {
  switch (t) {
    case v1::EVENT_TYPE_SPIKE:
      return "SPIKE";
    case v1::EVENT_TYPE_SKIP:
      return "SKIP";
    case v1::EVENT_TYPE_DIVERGENCE_START:
      return "DIVERGING";
    case v1::EVENT_TYPE_DIVERGENCE_END:
      return "RECOVERED";
    case v1::EVENT_TYPE_ATTACH:
      return "ATTACH";
    case v1::EVENT_TYPE_DETACH:
      return "DETACH";
    case v1::EVENT_TYPE_CONFIG_CHANGE:
      return "CONFIG";
    case v1::EVENT_TYPE_JOB_RETIRED:
      return "RETIRED";
    case v1::EVENT_TYPE_STATISTICS_ROLLED_BACK:
      return "ROLLED_BACK";
    default:
      return "EVENT";
  }
}

}  // namespace

std::string WaitingLine(const v1::JobSummary& j) {
  std::vector<uint32_t> missing;
  for (uint32_t r = 0; r < j.local_world_size(); ++r) {
    if (std::find(j.arrived_local_ranks().begin(), j.arrived_local_ranks().end(), r) ==
        j.arrived_local_ranks().end()) {
      missing.push_back(r);
    }
  }
  return absl::StrCat(j.job(), ": step ", j.waiting_step(), " waits for local rank",
                      missing.size() == 1 ? " " : "s ", absl::StrJoin(missing, ","), " (",
                      j.arrived_local_ranks_size(), " of ", j.local_world_size(), " arrived)");
}

std::string StatusTable(const v1::ListJobsResponse& jobs) {
  // STEPS counts this gstabd's steps of the job (from 0 again after a restore); LAST_STEP is
  // the job's step number, after which its workers go on.
  // The JOB column as wide as the longest name (up to 128 characters), so columns line up.
  int w = 24;
  for (const v1::JobSummary& j : jobs.jobs()) w = std::max(w, static_cast<int>(j.job().size()));
  std::string out = absl::StrFormat("%-*s %-10s %7s %9s %10s %12s %12s %7s %6s %9s %5s %s\n", w,
                                    "JOB", "POLICY", "WORKERS", "STEPS", "LAST_STEP", "LAST_NORM",
                                    "STABILIZED", "SPIKES", "SKIPS", "DIVERGING", "NODE", "OWNER");
  std::string retired;
  std::string waiting;
  for (const v1::JobSummary& j : jobs.jobs()) {
    if (j.arrived_local_ranks_size() > 0) absl::StrAppend(&waiting, WaitingLine(j), "\n");
    if (j.retired()) {
      absl::StrAppendFormat(&retired, "%-*s %-10s %9d %7d %s\n", w, j.job(), j.policy(),
                            j.last_step(), j.groups(), Owner(j));
      continue;
    }
    // A job across nodes: this node's rank of their count ("1/4"); "-" on one node.
    const std::string node =
        j.node_count() > 1 ? absl::StrCat(j.node_rank(), "/", j.node_count()) : "-";
    absl::StrAppendFormat(&out, "%-*s %-10s %7d %9d %10d %12s %12s %7d %6d %9s %5s %s\n", w,
                          j.job(), j.policy(), j.attached_workers(), j.steps(), j.last_step(),
                          Norm(j.last_norm()), Norm(j.last_stabilized_norm()), j.spike_steps(),
                          j.skipped_steps(), j.diverging() ? "YES" : "no", node, Owner(j));
  }
  if (std::none_of(jobs.jobs().begin(), jobs.jobs().end(),
                   [](const v1::JobSummary& j) { return !j.retired(); })) {
    out += "(no jobs)\n";
  }
  if (!waiting.empty()) absl::StrAppend(&out, "\nwaiting for local workers:\n", waiting);
  if (!retired.empty()) {
    absl::StrAppendFormat(&out,
                          "\nnot held, kept as checkpoints (retired while idle, or found at "
                          "gstabd's start; they come "
                          "back when a worker attaches):\n"
                          "%-*s %-10s %9s %7s %s\n%s",
                          w, "JOB", "POLICY", "LAST_STEP", "GROUPS", "OWNER", retired);
  }
  // How gstabd sees this caller (jobs by uid; over TCP, by certificate).
  if (!jobs.caller().empty()) {
    const char* scope = jobs.caller_scope() == v1::CALLER_SCOPE_EVERY_JOB ? "acts on every job"
                        : jobs.caller_scope() == v1::CALLER_SCOPE_NO_JOB
                            ? "may act on no job"
                            : "acts on its own jobs only";
    absl::StrAppend(&out, "\ncaller: ", jobs.caller(), ", which ", scope, "\n");
  }
  return out;
}

std::string Sparkline(const std::vector<double>& values) {
  static const char* const kBars[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
  double lo = INFINITY, hi = -INFINITY;
  for (double v : values) {
    if (std::isfinite(v) && v > 0) {
      lo = std::min(lo, std::log10(v));
      hi = std::max(hi, std::log10(v));
    }
  }
  // The bars span a decade at least: a steady norm's noise (0.1%) stays flat, not full height.
  const double span = std::max(hi - lo, 1.0);
  std::string out;
  for (double v : values) {
    if (!std::isfinite(v)) {
      out += "!";
    } else if (v <= 0 || hi <= lo) {
      out += kBars[0];
    } else {
      const double f = (std::log10(v) - lo) / span;
      out += kBars[std::clamp(static_cast<int>(f * 7.999), 0, 7)];
    }
  }
  return out;
}

std::string TopScreen(const v1::ListJobsResponse& jobs, int width) {
  std::string out =
      absl::StrCat("gstab top   ", absl::FormatTime("%H:%M:%S", absl::Now(), absl::LocalTimeZone()),
                   "   ", jobs.jobs_size(), " job(s)\n\n");
  for (const v1::JobSummary& j : jobs.jobs()) {
    std::vector<double> recent(j.recent_norms().begin(), j.recent_norms().end());
    if (static_cast<int>(recent.size()) > width) recent.erase(recent.begin(), recent.end() - width);
    absl::StrAppendFormat(&out, "%s  [%s]  step %d  workers %d%s\n", j.job(), j.policy(),
                          j.last_step(), j.attached_workers(),
                          j.diverging() ? "  ** DIVERGING **" : "");
    absl::StrAppendFormat(&out, "  norm %s  last %s -> %s   spikes %d  skips %d\n",
                          Sparkline(recent), Norm(j.last_norm()), Norm(j.last_stabilized_norm()),
                          j.spike_steps(), j.skipped_steps());
    if (j.arrived_local_ranks_size() > 0) absl::StrAppend(&out, "  ", WaitingLine(j), "\n");
    out += "\n";
  }
  return out;
}

std::string EventLine(const v1::Event& e) {
  std::string out;
  if (e.dropped_before() > 0) {
    absl::StrAppend(&out, "(", e.dropped_before(), " events dropped: this reader was too slow)\n");
  }
  const absl::Time t = absl::FromUnixNanos(e.wall_time_unix_nanos());
  absl::StrAppend(&out, absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", t, absl::UTCTimeZone()), "  ",
                  absl::StrFormat("%-9s", EventName(e.type())), " job=", e.job());
  if (e.step() > 0) absl::StrAppend(&out, " step=", e.step());
  if (e.type() == v1::EVENT_TYPE_SPIKE || e.type() == v1::EVENT_TYPE_SKIP ||
      e.type() == v1::EVENT_TYPE_DIVERGENCE_START || e.type() == v1::EVENT_TYPE_DIVERGENCE_END) {
    absl::StrAppend(&out, " norm=", Norm(e.norm()), " z=", absl::StrFormat("%.3g", e.z()));
  }
  if (e.groups_size() > 0) absl::StrAppend(&out, " groups=", absl::StrJoin(e.groups(), ","));
  if (e.more_groups() > 0) absl::StrAppend(&out, " (+", e.more_groups(), " more)");
  if (!e.detail().empty()) absl::StrAppend(&out, " ", e.detail());
  return out;
}

}  // namespace gstab::ctl
