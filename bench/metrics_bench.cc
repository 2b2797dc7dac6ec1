// How long a step's metric updates wait while /metrics is scraped.
//
//   metrics_bench [--jobs=256] [--groups=33] [--families=20] [--seconds=3]
//
// A registry laid out as gstabd's per-group gauges are (families x jobs x groups series, labels
// job and group). A "step" thread sets one series in each family, as Observer::RecordStep does
// once per group family, and times each such round; a "scraper" thread renders the whole
// registry back to back, as a scrape does. The baseline, in the same run, is the step thread
// alone. Figures go to bench/RESULTS.md.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "bench/stats.h"
#include "server/metrics.h"

namespace gstab {
namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  int jobs = 256;
  int groups = 33;
  int families = 20;
  double seconds = 3;
};

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    bool ok = true;
    if (absl::ConsumePrefix(&arg, "--jobs=")) {
      ok = absl::SimpleAtoi(arg, &o.jobs);
    } else if (absl::ConsumePrefix(&arg, "--groups=")) {
      ok = absl::SimpleAtoi(arg, &o.groups);
    } else if (absl::ConsumePrefix(&arg, "--families=")) {
      ok = absl::SimpleAtoi(arg, &o.families);
    } else if (absl::ConsumePrefix(&arg, "--seconds=")) {
      ok = absl::SimpleAtod(arg, &o.seconds);
    } else {
      ok = false;
    }
    if (!ok || o.jobs < 1 || o.groups < 1 || o.families < 1 || o.seconds <= 0) {
      std::fprintf(stderr, "bad argument '%s'\n", argv[i]);
      std::exit(2);
    }
  }
  return o;
}

// Rounds of one Set per family, for `seconds`: each round's duration in microseconds.
std::vector<double> StepRounds(const std::vector<MetricFamily*>& families, double seconds) {
  std::vector<double> rounds;
  const MetricFamily::Labels labels = {"job-7", "layers.3.mlp"};
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  double value = 0;
  while (Clock::now() < end) {
    const auto start = Clock::now();
    for (MetricFamily* f : families) f->Set(labels, value);
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
      for (int g = 0; g < o.groups; ++g) {
        families.back()->Set({absl::StrCat("job-", j), absl::StrCat("layers.", g, ".mlp")},
                             1.0 / (g + 1));
      }
    }
  }
  const size_t bytes = registry.Render().size();
  std::printf("%d families x %d jobs x %d groups: %d series, %zu bytes a scrape\n", o.families,
              o.jobs, o.groups, o.families * o.jobs * o.groups, bytes);

  const std::vector<double> alone = StepRounds(families, o.seconds);
  std::atomic<bool> stop{false};
  std::vector<double> scrapes;
  std::thread scraper([&] {
    while (!stop.load()) {
      const auto start = Clock::now();
      const std::string text = registry.Render();
      scrapes.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
      if (text.empty()) std::abort();  // keeps the render
    }
  });
  const std::vector<double> scraped = StepRounds(families, o.seconds);
  stop = true;
  scraper.join();

  Report("step alone (baseline)", alone);
  Report("step while scraped", scraped);
  Report("scrape (the whole registry)", scrapes);
  std::printf("while scraped / alone: p99 %.1fx, max %.1fx\n",
              bench::Percentile(scraped, 0.99) / bench::Percentile(alone, 0.99),
              bench::Percentile(scraped, 1) / bench::Percentile(alone, 1));
  return 0;
}
