// A small Prometheus registry and its text exposition (format 0.0.4). Families hold series
// keyed by label values; Render() writes every family sorted by name with HELP and TYPE first,
// series sorted by labels, histograms with cumulative buckets ending in +Inf (equal to _count),
// escaped HELP and label values, and locale-independent numbers.
//
// Injected where needed (no global). Thread-safe.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace gstab {

enum class MetricType { kCounter, kGauge, kHistogram };

class MetricFamily {
 public:
  using Labels = std::vector<std::string>;  // values, in the family's label-name order

  // Counters and gauges: add to the series (created at 0).
  void Add(const Labels& labels, double delta);
  // Gauges: set the series.
  void Set(const Labels& labels, double value);
  // Histograms: count one observation; NaN and Inf are ignored (they have counters of
  // their own).
  void Observe(const Labels& labels, double value);
  // Removes one series, or every series whose first label equals `first` (a job).
  void Remove(const Labels& labels);
  void RemoveByFirstLabel(const std::string& first);
  double Value(const Labels& labels) const;  // 0 for a missing series

 private:
  friend class MetricsRegistry;
  struct Series {
    double value = 0;
    std::vector<uint64_t> buckets;  // histogram: non-cumulative counts per bound
    uint64_t count = 0;
    std::string pairs;  // its labels as exposed (name="value",...), made with the series
  };
  MetricFamily(std::string name, std::string help, MetricType type,
               std::vector<std::string> label_names, std::vector<double> bounds);
  void Render(std::string* out) const;
  Series& Get(const Labels& labels) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string name_;
  const std::string help_;
  const MetricType type_;
  const std::vector<std::string> label_names_;
  const std::vector<double> bounds_;
  // A step's updates wait for this lock: Render holds it only to copy the series.
  mutable absl::Mutex mu_;
  std::map<Labels, Series> series_ ABSL_GUARDED_BY(mu_);
  size_t pairs_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // of every series' `pairs`
};

class MetricsRegistry {
 public:
  // Names must be unique; the registry owns the families for its lifetime.
  MetricFamily* AddCounter(const std::string& name, const std::string& help,
                           std::vector<std::string> label_names);
  MetricFamily* AddGauge(const std::string& name, const std::string& help,
                         std::vector<std::string> label_names);
  // `bounds`: increasing upper bounds; +Inf is implicit.
  MetricFamily* AddHistogram(const std::string& name, const std::string& help,
                             std::vector<std::string> label_names, std::vector<double> bounds);

  std::string Render() const;

 private:
  MetricFamily* Add(const std::string& name, const std::string& help, MetricType type,
                    std::vector<std::string> label_names, std::vector<double> bounds);
  mutable absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<MetricFamily>> families_ ABSL_GUARDED_BY(mu_);
};

// Prometheus number formatting: shortest round-trip form, "NaN", "+Inf", "-Inf".
std::string FormatMetricValue(double value);
// `count` bounds from `start`, each `factor` times the previous.
std::vector<double> ExponentialBuckets(double start, double factor, int count);

}  // namespace gstab
