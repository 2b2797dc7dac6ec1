// How long a step's metric updates wait while /metrics is scraped.
//
//   metrics_bench [--jobs=256] [--groups=33] [--families=5] [--seconds=3]
//
// A registry laid out as gstabd's per-group gauges are (Observer: gstab_norm,
// gstab_stabilized_norm, gstab_scale and the two EMA gauges, each jobs x groups series labelled
// job and group; 256 jobs is --max_jobs' default). A "step" thread sets every group of one job
// in each family, as Observer::RecordStep does after a step of that job (it also sets a few
// per-job series, left out here), and times each such round; a "scraper" thread renders the
// whole registry back to back (a worst case: Prometheus scrapes every 15 to 60 s). Baselines in
// the same run: the step thread alone, and the scraper alone. Figures go to bench/RESULTS.md.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/flags.h"
#include "bench/stats.h"
#include "server/metrics.h"

namespace gstab {
namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  int jobs = 256;
  int groups = 33;
  int families = 5;
  double seconds = 3;
};

Options Parse(int argc, char** argv) {
  Options o;
  bench::ParseFlags(argc, argv,
                    {{"--jobs=", &o.jobs},
                     {"--groups=", &o.groups},
                     {"--families=", &o.families},
                     {"--seconds=", &o.seconds}});
  return o;
}

MetricFamily::Labels SeriesLabels(int job, int group) {
  return {absl::StrCat("job-", job), absl::StrCat("layers.", group, ".mlp")};
}

// Rounds of one step's sets (every group of job 7 in each family), for `seconds`: each round's
// duration in microseconds.
std::vector<double> StepRounds(const std::vector<MetricFamily*>& families, int groups,
                               double seconds) {
  std::vector<double> rounds;
  std::vector<MetricFamily::Labels> labels;
  for (int g = 0; g < groups; ++g) labels.push_back(SeriesLabels(7, g));
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  double value = 0;
  while (Clock::now() < end) {
    const auto start = Clock::now();
    for (const MetricFamily::Labels& l : labels) {
      for (MetricFamily* f : families) f->Set(l, value);
    }
    rounds.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
    value += 1;
    std::this_thread::sleep_for(std::chrono::microseconds(200));  // a step's other work
  }
  return rounds;
}

void Report(const char* what, const std::vector<double>& us) {
  std::printf("%-28s rounds %7zu  p50 %9.1f us  p99 %9.1f us  max %9.1f us\n", what, us.size(),
              bench::Percentile(us, 0.5), bench::Percentile(us, 0.99), bench::Percentile(us, 1));
}

}  // namespace
}  // namespace gstab

int main(int argc, char** argv) {
  using namespace gstab;
  const Options o = Parse(argc, argv);
  MetricsRegistry registry;
  std::vector<MetricFamily*> families;
  for (int f = 0; f < o.families; ++f) {
    families.push_back(registry.AddGauge(absl::StrCat("gstab_bench_gauge_", f), "a per-group gauge",
                                         {"job", "group"}));
    for (int j = 0; j < o.jobs; ++j) {
      for (int g = 0; g < o.groups; ++g) families.back()->Set(SeriesLabels(j, g), 1.0 / (g + 1));
    }
  }
  const size_t bytes = registry.Render().size();
  std::printf("%d families x %d jobs x %d groups: %d series, %zu bytes a scrape\n", o.families,
              o.jobs, o.groups, o.families * o.jobs * o.groups, bytes);

  std::atomic<bool> stop{false};
  auto scrape = [&](std::vector<double>* times) {
    while (!stop.load()) {
      const auto start = Clock::now();
      const std::string text = registry.Render();
      times->push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
      if (text.empty()) std::abort();  // keeps the render
    }
  };
  std::vector<double> scrapes_alone, scrapes;
  std::thread alone_scraper(scrape, &scrapes_alone);
  std::this_thread::sleep_for(std::chrono::duration<double>(o.seconds));
  stop = true;
  alone_scraper.join();
  stop = false;
  const std::vector<double> alone = StepRounds(families, o.groups, o.seconds);
  std::thread scraper(scrape, &scrapes);
  const std::vector<double> scraped = StepRounds(families, o.groups, o.seconds);
  stop = true;
  scraper.join();

  Report("step alone (baseline)", alone);
  Report("step while scraped", scraped);
  Report("scrape alone (baseline)", scrapes_alone);
  Report("scrape while stepping", scrapes);
  std::printf("while scraped / alone: p99 %.1fx, max %.1fx\n",
              bench::Percentile(scraped, 0.99) / bench::Percentile(alone, 0.99),
              bench::Percentile(scraped, 1) / bench::Percentile(alone, 1));
  return 0;
}
