// Counters, gauges and histograms rendered in Prometheus' text exposition format.
#ifndef TETHER_COMMON_METRICS_H_
#define TETHER_COMMON_METRICS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace tether::common {

// A monotonically increasing count. Thread-safe, lock-free.
class Counter {
 public:
  void Add(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

// Counts of observations in fixed buckets plus their sum. Thread-safe, lock-free.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double v);
  const std::vector<double>& bounds() const { return bounds_; }
  uint64_t bucket(size_t i) const { return counts_[i].load(std::memory_order_relaxed); }
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  double sum() const;

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // one per bound (cumulative on render)
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_micros_{0};  // sum kept in millionths to stay lock-free
};

// Owns named metrics and renders them. A metric is created on first use and lives as long as
// the registry; callers keep the returned reference. Thread-safe.
class MetricsRegistry {
 public:
  // `name` may carry labels: `tether_invokes_total{outcome="ok"}`.
  Counter& GetCounter(const std::string& name, const std::string& help);
  Histogram& GetHistogram(const std::string& name, const std::string& help,
                          std::vector<double> bounds);
  // A gauge read at render time (e.g. a live connection count). `read` must be thread-safe.
  void AddGauge(const std::string& name, const std::string& help, std::function<double()> read);
  // Metrics owned elsewhere (not owned here; must outlive this registry).
  void Expose(const std::string& name, const std::string& help, const Counter* counter);
  void Expose(const std::string& name, const std::string& help, const Histogram* histogram);

  std::string Render() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Family {
    std::string help;
    std::string type;
  };
  static std::string BaseName(const std::string& name);

  absl::Mutex mu_;
  std::map<std::string, Family> families_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<Counter>> owned_counters_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<Histogram>> owned_histograms_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, const Counter*> counters_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, const Histogram*> histograms_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::function<double()>> gauges_ ABSL_GUARDED_BY(mu_);
};

// Default latency buckets in milliseconds.
std::vector<double> LatencyBucketsMs();

}  // namespace tether::common

#endif  // TETHER_COMMON_METRICS_H_
