#include "bench/invoke_load.h"

#include <grpcpp/grpcpp.h>
#include <sys/prctl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <thread>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace tether::bench {
namespace {

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    default:
      return "OTHER";
  }
}

struct Call {
  grpc::ClientContext ctx;
  v1::InvokeNodeRequest request;
  v1::InvokeNodeResponse response;
  grpc::Status status;
  std::unique_ptr<grpc::ClientAsyncResponseReader<v1::InvokeNodeResponse>> reader;
  absl::Time scheduled;
};

// Issues calls from one thread and collects their ends on completion-queue threads. (The
// async API, not the callback API: in gRPC 1.51 on Linux the callback API runs every callback
// on a separate "nexting" thread, a thread hop per call that costs more than the call.)
class Driver {
 public:
  static constexpr int kQueues = 1;

  Driver(v1::Registry::Stub& stub, const InvokeLoadOptions& options)
      : stub_(stub), options_(options) {
    for (int i = 0; i < kQueues; ++i) {
      queues_.push_back(std::make_unique<grpc::CompletionQueue>());
      pollers_.emplace_back([this, cq = queues_.back().get()] {
        void* tag = nullptr;
        bool ok = false;
        while (cq->Next(&tag, &ok)) Done(static_cast<Call*>(tag));
      });
    }
  }

  // Waits for the calls still in flight (each has a deadline).
  ~Driver() {
    for (auto& cq : queues_) cq->Shutdown();
    for (std::thread& t : pollers_) t.join();
  }

  InvokeLoadResult Run() {
    // Wake-ups of this thread may come at most 1 us late instead of the default 50 us.
    (void)prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    const absl::Time start = absl::Now();
    const absl::Time stop = start + options_.duration;
    absl::BitGen rng;
    const auto slot_free = [this] {
      mu_.AssertHeld();
      return in_flight_ < options_.concurrency;
    };
    for (int64_t i = 0; i < options_.max_invokes; ++i) {
      if (options_.stop != nullptr && options_.stop->load()) break;
      absl::Time scheduled = absl::Now();
      if (options_.rate > 0) {
        scheduled = start + absl::Seconds(static_cast<double>(i) / options_.rate);
        if (scheduled >= stop) break;
        // Sleeps rather than spins: a spinning driver would take CPU from the servers it
        // measures on the same cores. The timer slack is 1 us (below), so it wakes on time.
        for (absl::Duration wait = scheduled - absl::Now(); wait > absl::ZeroDuration();
             wait = scheduled - absl::Now()) {
          absl::SleepFor(wait);
        }
      } else if (scheduled >= stop) {
        break;
      }
      {
        absl::MutexLock lock(&mu_);
        if (!slot_free()) mu_.Await(absl::Condition(&slot_free));
        ++in_flight_;
        ++result_.started;
      }
      if (options_.rate > 0 && absl::Now() - scheduled > absl::Milliseconds(1)) {
        ++late_starts_;
      }
      if (options_.rate <= 0) scheduled = absl::Now();
      const std::string& node =
          options_.node_ids[absl::Uniform<size_t>(rng, 0, options_.node_ids.size())];
      Issue(node, scheduled);
    }
    {
      absl::MutexLock lock(&mu_);
      const auto idle = [this] {
        mu_.AssertHeld();
        return in_flight_ == 0;
      };
      mu_.AwaitWithTimeout(absl::Condition(&idle),
                           absl::Milliseconds(options_.timeout_ms) + absl::Seconds(10));
    }
    absl::MutexLock lock(&mu_);
    InvokeLoadResult r = result_;
    r.late_starts = late_starts_;
    r.elapsed_s = absl::ToDoubleSeconds(absl::Now() - start);
    r.achieved_rate = static_cast<double>(r.completed()) / std::max(1e-9, r.elapsed_s);
    r.latency = Percentiles(samples_);
    return r;
  }

 private:
  void Issue(const std::string& node, absl::Time scheduled) {
    auto* call = new Call();
    call->scheduled = scheduled;
    call->request.set_node_id(node);
    call->request.set_command(options_.command);
    call->request.set_params_json(options_.params_json);
    call->request.set_timeout_ms(options_.timeout_ms);
    call->ctx.set_deadline(std::chrono::system_clock::now() +
                           std::chrono::milliseconds(options_.timeout_ms + 2000));
    if (!options_.bearer_token.empty()) {
      call->ctx.AddMetadata("authorization", "Bearer " + options_.bearer_token);
    }
    grpc::CompletionQueue* cq = queues_[next_queue_++ % queues_.size()].get();
    call->reader = stub_.PrepareAsyncInvokeNode(&call->ctx, call->request, cq);
    call->reader->StartCall();
    call->reader->Finish(&call->response, &call->status, call);
  }

  void Done(Call* call) {
    const grpc::Status& status = call->status;
    const double ms = absl::ToDoubleMilliseconds(absl::Now() - call->scheduled);
    std::string error_code;
    if (!status.ok()) {
      const auto& md = call->ctx.GetServerTrailingMetadata();
      if (auto it = md.find("tether-error-code"); it != md.end()) {
        error_code.assign(it->second.data(), it->second.size());
      }
    }
    const size_t payload = call->response.payload_json().size();
    const bool ok = status.ok();
    const grpc::StatusCode code = status.error_code();
    delete call;
    absl::MutexLock lock(&mu_);
    --in_flight_;
    if (ok) {
      if (options_.expect_payload_bytes > 0 && payload != options_.expect_payload_bytes) {
        ++result_.bad_payload;
      } else {
        ++result_.ok;
        samples_.push_back(ms);
      }
    } else if (!error_code.empty()) {
      ++result_.typed_errors[error_code];
    } else {
      ++result_.untyped_errors[CodeName(code)];
    }
  }

  v1::Registry::Stub& stub_;
  const InvokeLoadOptions options_;
  std::vector<std::unique_ptr<grpc::CompletionQueue>> queues_;
  std::vector<std::thread> pollers_;
  size_t next_queue_ = 0;    // issuing thread only
  int64_t late_starts_ = 0;  // issuing thread only
  absl::Mutex mu_;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  InvokeLoadResult result_ ABSL_GUARDED_BY(mu_);
  std::vector<double> samples_ ABSL_GUARDED_BY(mu_);
};

std::string Join(const std::map<std::string, int64_t>& m) {
  std::string out;
  for (const auto& [k, v] : m) absl::StrAppend(&out, out.empty() ? "" : ",", k, ":", v);
  return out.empty() ? "none" : out;
}

}  // namespace

int64_t InvokeLoadResult::typed_error_count() const {
  int64_t n = 0;
  for (const auto& [code, count] : typed_errors) n += count;
  return n;
}

int64_t InvokeLoadResult::untyped_error_count() const {
  int64_t n = 0;
  for (const auto& [code, count] : untyped_errors) n += count;
  return n;
}

std::string InvokeLoadResult::Summary() const {
  return absl::StrFormat(
      "invokes=%d ok=%d bad_payload=%d typed_errors=%s untyped_errors=%s late_starts=%d "
      "rate=%.0f/s p50=%.3fms p90=%.3fms p99=%.3fms p99.9=%.3fms max=%.3fms",
      started, ok, bad_payload, Join(typed_errors), Join(untyped_errors), late_starts,
      achieved_rate, latency.p50, latency.p90, latency.p99, latency.p999, latency.max);
}

Latency Percentiles(std::vector<double> samples_ms) {
  Latency l;
  l.count = static_cast<int64_t>(samples_ms.size());
  if (samples_ms.empty()) return l;
  std::sort(samples_ms.begin(), samples_ms.end());
  const auto at = [&](double q) {
    const size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(samples_ms.size())));
    return samples_ms[std::min(samples_ms.size() - 1, rank == 0 ? 0 : rank - 1)];
  };
  l.p50 = at(0.50);
  l.p90 = at(0.90);
  l.p99 = at(0.99);
  l.p999 = at(0.999);
  l.max = samples_ms.back();
  return l;
}

absl::StatusOr<InvokeLoadResult> RunInvokeLoad(v1::Registry::Stub& stub,
                                               const InvokeLoadOptions& options) {
  if (options.node_ids.empty()) return absl::InvalidArgumentError("no nodes to invoke");
  if (options.concurrency <= 0 || options.rate < 0) {
    return absl::InvalidArgumentError("concurrency must be positive and rate non-negative");
  }
  Driver driver(stub, options);
  return driver.Run();
}

}  // namespace tether::bench
