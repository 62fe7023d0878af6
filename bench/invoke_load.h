// Invoke load: concurrent InvokeNode calls through the registry's public API to random nodes,
// at a fixed rate (open loop) or flat out (closed loop), with latencies and outcomes.
#ifndef TETHER_BENCH_INVOKE_LOAD_H_
#define TETHER_BENCH_INVOKE_LOAD_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/tether/v1/registry.grpc.pb.h"

namespace tether::bench {

struct InvokeLoadOptions {
  std::vector<std::string> node_ids;  // targets, picked uniformly at random
  // Invokes per second, started on a fixed schedule; a call's latency counts from its
  // scheduled start, so a stalled server is not hidden by the driver waiting (coordinated
  // omission). 0: flat out, each caller starts its next call when the previous one ends.
  double rate = 0;
  int concurrency = 64;  // calls in flight at most (the "callers")
  absl::Duration duration = absl::Seconds(10);
  int64_t max_invokes = 10'000'000;         // stops at whichever bound comes first
  const std::atomic<bool>* stop = nullptr;  // or when this turns true (not owned)
  int64_t timeout_ms = 5000;                // the invoke's timeout (the gRPC deadline adds 2 s)
  std::string command = "system.which";
  std::string params_json = R"({"bins":["sh"]})";
  std::string bearer_token;  // sent as "authorization: Bearer <token>" unless empty
  // If > 0, an OK answer whose payload is not this long counts as a bad payload.
  size_t expect_payload_bytes = 0;
};

// Latency percentiles in milliseconds.
struct Latency {
  int64_t count = 0;
  double p50 = 0, p90 = 0, p99 = 0, p999 = 0, max = 0;
};

struct InvokeLoadResult {
  int64_t started = 0;
  int64_t ok = 0;
  int64_t bad_payload = 0;                        // OK but not the payload the fleet sends
  std::map<std::string, int64_t> typed_errors;    // tether-error-code -> count
  std::map<std::string, int64_t> untyped_errors;  // gRPC status without a tether code -> count
  int64_t late_starts = 0;  // fixed rate: calls that started > 1 ms after their slot
  double elapsed_s = 0;
  double achieved_rate = 0;  // completed invokes per second
  Latency latency;           // of OK answers

  int64_t typed_error_count() const;
  int64_t untyped_error_count() const;
  int64_t completed() const {
    return ok + bad_payload + typed_error_count() + untyped_error_count();
  }
  std::string Summary() const;  // one line
};

// Runs the load until the duration or max_invokes is reached and every call has ended.
// Thread-compatible; its calls complete on its own completion-queue threads.
absl::StatusOr<InvokeLoadResult> RunInvokeLoad(v1::Registry::Stub& stub,
                                               const InvokeLoadOptions& options);

Latency Percentiles(std::vector<double> samples_ms);

}  // namespace tether::bench

#endif  // TETHER_BENCH_INVOKE_LOAD_H_
