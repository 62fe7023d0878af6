#include "common/metrics.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tether::common {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0);
}

void Histogram::Observe(double v) {
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_micros_.fetch_add(static_cast<uint64_t>(std::max(v, 0.0) * 1e6), std::memory_order_relaxed);
}

double Histogram::sum() const { return sum_micros_.load(std::memory_order_relaxed) / 1e6; }

std::string MetricsRegistry::BaseName(const std::string& name) {
  return name.substr(0, name.find('{'));
}

Counter& MetricsRegistry::GetCounter(const std::string& name, const std::string& help) {
  absl::MutexLock lock(&mu_);
  families_.emplace(BaseName(name), Family{help, "counter"});
  auto& slot = owned_counters_[name];
  if (slot == nullptr) slot = std::make_unique<Counter>();
  counters_[name] = slot.get();
  return *slot;
}

Histogram& MetricsRegistry::GetHistogram(const std::string& name, const std::string& help,
                                         std::vector<double> bounds) {
  absl::MutexLock lock(&mu_);
  families_.emplace(BaseName(name), Family{help, "histogram"});
  auto& slot = owned_histograms_[name];
  if (slot == nullptr) slot = std::make_unique<Histogram>(std::move(bounds));
  histograms_[name] = slot.get();
  return *slot;
}

void MetricsRegistry::Expose(const std::string& name, const std::string& help,
                             const Counter* counter) {
  absl::MutexLock lock(&mu_);
  families_.emplace(BaseName(name), Family{help, "counter"});
  counters_[name] = counter;
}

void MetricsRegistry::Expose(const std::string& name, const std::string& help,
                             const Histogram* histogram) {
  absl::MutexLock lock(&mu_);
  families_.emplace(BaseName(name), Family{help, "histogram"});
  histograms_[name] = histogram;
}

void MetricsRegistry::AddGauge(const std::string& name, const std::string& help,
                               std::function<double()> read) {
  absl::MutexLock lock(&mu_);
  families_.emplace(BaseName(name), Family{help, "gauge"});
  gauges_[name] = std::move(read);
}

std::string MetricsRegistry::Render() {
  absl::MutexLock lock(&mu_);
  std::string out;
  for (const auto& [family, f] : families_) {
    absl::StrAppend(&out, "# HELP ", family, " ", f.help, "\n# TYPE ", family, " ", f.type, "\n");
    auto in_family = [&](const std::string& name) { return BaseName(name) == family; };
    for (const auto& [name, c] : counters_) {
      if (in_family(name)) absl::StrAppend(&out, name, " ", c->value(), "\n");
    }
    for (const auto& [name, read] : gauges_) {
      if (in_family(name)) absl::StrAppend(&out, name, " ", absl::StrFormat("%g", read()), "\n");
    }
    for (const auto& [name, h] : histograms_) {
      if (!in_family(name)) continue;
      // Labels of the histogram itself go before `le`.
      std::string labels = name.size() > family.size() ? name.substr(family.size() + 1) : "";
      if (!labels.empty()) labels.pop_back();  // drop '}'
      const std::string sep = labels.empty() ? "" : ",";
      uint64_t cumulative = 0;
      for (size_t i = 0; i < h->bounds().size(); ++i) {
        cumulative += h->bucket(i);
        absl::StrAppend(&out, family, "_bucket{", labels, sep, "le=\"",
                        absl::StrFormat("%g", h->bounds()[i]), "\"} ", cumulative, "\n");
      }
      absl::StrAppend(&out, family, "_bucket{", labels, sep, "le=\"+Inf\"} ", h->count(), "\n");
      const std::string suffix = labels.empty() ? "" : "{" + labels + "}";
      absl::StrAppend(&out, family, "_sum", suffix, " ", absl::StrFormat("%g", h->sum()), "\n");
      absl::StrAppend(&out, family, "_count", suffix, " ", h->count(), "\n");
    }
  }
  return out;
}

std::vector<double> LatencyBucketsMs() {
  return {0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000};
}

}  // namespace tether::common
