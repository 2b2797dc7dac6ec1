#include "server/metrics.h"

#include <charconv>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace gstab {
namespace {

std::string Escape(const std::string& s, bool quotes) {
  std::string out;
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && quotes) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
  return out;
}

const char* TypeName(MetricType t) {
  switch (t) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

}  // namespace

std::string FormatMetricValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  std::vector<double> b;
  for (int i = 0; i < count; ++i) {
    // Rounded to 12 significant digits so bounds print as 1e-05, not 9.999999999999999e-06.
    char buf[32];
    const auto r = std::to_chars(buf, buf + sizeof buf, start * std::pow(factor, i),
                                 std::chars_format::general, 12);
    double v = 0;
    std::from_chars(buf, r.ptr, v);
    b.push_back(v);
  }
  return b;
}

MetricFamily::MetricFamily(std::string name, std::string help, MetricType type,
                           std::vector<std::string> label_names, std::vector<double> bounds)
    : name_(std::move(name)),
      help_(std::move(help)),
      type_(type),
      label_names_(std::move(label_names)),
      bounds_(std::move(bounds)) {}

MetricFamily::Series& MetricFamily::Get(const Labels& labels) {
  auto [it, inserted] = series_.try_emplace(labels);
  Series& s = it->second;
  if (inserted) {
    for (size_t i = 0; i < label_names_.size() && i < labels.size(); ++i) {
      absl::StrAppend(&s.pairs, i ? "," : "", label_names_[i], "=\"", Escape(labels[i], true),
                      "\"");
    }
    pairs_bytes_ += s.pairs.size();
    if (type_ == MetricType::kHistogram) s.buckets.assign(bounds_.size(), 0);
  }
  return s;
}

void MetricFamily::Add(const Labels& labels, double delta) {
  absl::MutexLock lock(&mu_);
  Get(labels).value += delta;
}

void MetricFamily::Set(const Labels& labels, double value) {
  absl::MutexLock lock(&mu_);
  Get(labels).value = value;
}

void MetricFamily::Observe(const Labels& labels, double value) {
  if (!std::isfinite(value)) return;
  absl::MutexLock lock(&mu_);
  Series& s = Get(labels);
  for (size_t i = 0; i < bounds_.size(); ++i) {
    if (value <= bounds_[i]) {
      ++s.buckets[i];
      break;
    }
  }
  s.value += value;  // _sum
  ++s.count;
}

void MetricFamily::Remove(const Labels& labels) {
  absl::MutexLock lock(&mu_);
  auto it = series_.find(labels);
  if (it == series_.end()) return;
  pairs_bytes_ -= it->second.pairs.size();
  series_.erase(it);
}

void MetricFamily::RemoveByFirstLabel(const std::string& first) {
  absl::MutexLock lock(&mu_);
  // The job's series lie together (the map orders label vectors by their first value first),
  // from the one label vector {first} would be: its range alone, not every job's series.
  for (auto it = series_.lower_bound(Labels{first});
       it != series_.end() && !it->first.empty() && it->first[0] == first;) {
    pairs_bytes_ -= it->second.pairs.size();
    it = series_.erase(it);
  }
}

double MetricFamily::Value(const Labels& labels) const {
  absl::MutexLock lock(&mu_);
  auto it = series_.find(labels);
  return it == series_.end() ? 0.0 : it->second.value;
}

void MetricFamily::Render(std::string* out) const {
  absl::StrAppend(out, "# HELP ", name_, " ", Escape(help_, false), "\n");
  absl::StrAppend(out, "# TYPE ", name_, " ", TypeName(type_), "\n");
  // Copied under the lock, flat (three allocations), and formatted after: a step's update waits
  // for a copy of the family, not for its text (bench/RESULTS.md, metrics_bench).
  struct Row {
    size_t pairs_end;  // in `pairs`
    double value;
    uint64_t count;
  };
  std::vector<Row> rows;
  std::string pairs;
  std::vector<uint64_t> buckets;  // histograms: bounds_.size() a row
  {
    absl::MutexLock lock(&mu_);
    rows.reserve(series_.size());
    pairs.reserve(pairs_bytes_);
    buckets.reserve(type_ == MetricType::kHistogram ? series_.size() * bounds_.size() : 0);
    for (const auto& [labels, s] : series_) {
      pairs += s.pairs;
      rows.push_back(Row{pairs.size(), s.value, s.count});
      buckets.insert(buckets.end(), s.buckets.begin(), s.buckets.end());
    }
  }
  size_t begin = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    const Row& s = rows[r];
    const absl::string_view labels(pairs.data() + begin, s.pairs_end - begin);
    begin = s.pairs_end;
    if (type_ != MetricType::kHistogram) {
      absl::StrAppend(out, name_, labels.empty() ? "" : "{", labels, labels.empty() ? "" : "}", " ",
                      FormatMetricValue(s.value), "\n");
      continue;
    }
    const absl::string_view sep = labels.empty() ? "" : ",";
    uint64_t cumulative = 0;
    for (size_t i = 0; i < bounds_.size(); ++i) {
      cumulative += buckets[r * bounds_.size() + i];
      absl::StrAppend(out, name_, "_bucket{", labels, sep, "le=\"", FormatMetricValue(bounds_[i]),
                      "\"} ", cumulative, "\n");
    }
    absl::StrAppend(out, name_, "_bucket{", labels, sep, "le=\"+Inf\"} ", s.count, "\n");
    const std::string braces = labels.empty() ? "" : absl::StrCat("{", labels, "}");
    absl::StrAppend(out, name_, "_sum", braces, " ", FormatMetricValue(s.value), "\n");
    absl::StrAppend(out, name_, "_count", braces, " ", s.count, "\n");
  }
}

MetricFamily* MetricsRegistry::Add(const std::string& name, const std::string& help,
                                   MetricType type, std::vector<std::string> label_names,
                                   std::vector<double> bounds) {
  absl::MutexLock lock(&mu_);
  auto& f = families_[name];
  if (f == nullptr) {
    f.reset(new MetricFamily(name, help, type, std::move(label_names), std::move(bounds)));
  }
  return f.get();
}

MetricFamily* MetricsRegistry::AddCounter(const std::string& name, const std::string& help,
                                          std::vector<std::string> label_names) {
  return Add(name, help, MetricType::kCounter, std::move(label_names), {});
}

MetricFamily* MetricsRegistry::AddGauge(const std::string& name, const std::string& help,
                                        std::vector<std::string> label_names) {
  return Add(name, help, MetricType::kGauge, std::move(label_names), {});
}

MetricFamily* MetricsRegistry::AddHistogram(const std::string& name, const std::string& help,
                                            std::vector<std::string> label_names,
                                            std::vector<double> bounds) {
  return Add(name, help, MetricType::kHistogram, std::move(label_names), std::move(bounds));
}

std::string MetricsRegistry::Render() const {
  std::string out;
  absl::MutexLock lock(&mu_);
  for (const auto& [name, family] : families_) family->Render(&out);
  return out;
}

}  // namespace gstab
