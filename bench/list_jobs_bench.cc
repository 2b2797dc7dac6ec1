// What ListJobs (`gstabctl status`) costs gstabd per job held, and how long it holds each job's
// lock: its line of the listing (Job::Summarize) beside GetStats on the same jobs in the same
// run (what ListJobs called for each job before: every group's statistics built, to count them).
//
//   list_jobs_bench [--jobs=16] [--groups=65536] [--rounds=20]
//
// Jobs hold `groups` norm groups each (imported, as a checkpoint or `gstabctl import` brings
// them; 65,536 is kMaxGroupsPerJob). Each round reads every job once each way; the figures are
// per call (median and the slowest call of all rounds). Figures go to bench/RESULTS.md.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/flags.h"
#include "bench/stats.h"
#include "core/config.h"
#include "server/job.h"
#include "server/state_codec.h"

namespace gstab {
namespace {

using Clock = std::chrono::steady_clock;

// A state of `groups` warm groups, as a job that has stepped a while holds.
v1::JobState StateOf(int groups) {
  v1::JobState state;
  state.set_format_version(kJobStateFormatVersion);
  state.set_last_step(1000);
  *state.mutable_config() = EffectiveConfig(RuleParams{});
  GroupStats s;
  s.t = s.steps = 1000;
  s.m = 0.9;
  s.v = 0.82;
  s.spike_mean = 1.0;
  s.spike_var = 0.01;
  for (int g = 0; g < groups; ++g) {
    *state.add_groups() = GroupStateToProto(absl::StrCat("layers.", g, ".weight"), s);
  }
  return state;
}

// Microseconds of each call of `summarize` and of `stats`, one value per (round, job): each job
// read both ways in turn, so that both see the same drift of a shared machine.
template <typename Summarize, typename Stats>
void Time(const std::vector<std::unique_ptr<Job>>& jobs, int rounds, const Summarize& summarize,
          const Stats& stats, std::vector<double>* summary_us, std::vector<double>* stats_us) {
  const auto micros = [](Clock::time_point since) {
    return std::chrono::duration<double, std::micro>(Clock::now() - since).count();
  };
  for (int r = 0; r < rounds; ++r) {
    for (const auto& job : jobs) {
      auto start = Clock::now();
      summarize(*job);
      summary_us->push_back(micros(start));
      start = Clock::now();
      stats(*job);
      stats_us->push_back(micros(start));
    }
  }
}

int Main(int argc, char** argv) {
  struct {
    int jobs = 16, groups = 65536, rounds = 20;
  } o;
  bench::ParseFlags(argc, argv,
                    {{"--jobs=", &o.jobs}, {"--groups=", &o.groups}, {"--rounds=", &o.rounds}});
  const v1::JobState state = StateOf(o.groups);
  std::vector<std::unique_ptr<Job>> jobs;
  for (int j = 0; j < o.jobs; ++j) {
    jobs.push_back(std::make_unique<Job>(absl::StrCat("job-", j), RuleParams{}, 1, nullptr));
    if (absl::Status s = jobs.back()->ImportState(state, /*with_config=*/false); !s.ok()) {
      std::fprintf(stderr, "import: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  size_t lines = 0;  // read, so that nothing is optimized away
  std::vector<double> summary, stats;
  Time(
      jobs, o.rounds,
      [&](const Job& job) {
        v1::JobSummary out;
        job.Summarize(&out);
        lines += out.groups();
      },
      [&](const Job& job) {
        v1::GetStatsResponse out;
        job.GetStats(&out);
        lines += static_cast<size_t>(out.groups_size());
      },
      &summary, &stats);
  const double s50 = bench::Percentile(summary, 0.5);
  const double g50 = bench::Percentile(stats, 0.5);
  std::printf("%d jobs of %d groups, %d rounds (%zu groups read)\n", o.jobs, o.groups, o.rounds,
              lines);
  std::printf(
      "per call, us: Summarize median %.1f (max %.1f); GetStats median %.1f (max %.1f); "
      "GetStats / Summarize %.0fx\n",
      s50, bench::Percentile(summary, 1.0), g50, bench::Percentile(stats, 1.0), g50 / s50);
  return 0;
}

}  // namespace
}  // namespace gstab

int main(int argc, char** argv) { return gstab::Main(argc, argv); }
