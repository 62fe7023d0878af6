// invoke_load: M concurrent InvokeNode callers against a running registry, to random
// connected nodes, at a fixed rate or flat out; prints outcomes and latency percentiles.
//
//   invoke_load --registry=127.0.0.1:7000 --rate=2000 --concurrency=256 --duration_s=10
//   invoke_load --rate=0 --concurrency=64          # flat out
//
// A registry that requires API tokens gets the one in env TETHER_TOKEN (as tetherctl).
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "bench/invoke_load.h"
#include "proto/tether/v1/registry.grpc.pb.h"

ABSL_FLAG(std::string, registry, "127.0.0.1:7000", "registry gRPC address (127.0.0.0/8)");
ABSL_FLAG(double, rate, 1000, "invokes per second (0: flat out)");
ABSL_FLAG(int, concurrency, 64, "calls in flight at most");
ABSL_FLAG(int64_t, duration_s, 10, "seconds to run (at most 3600)");
ABSL_FLAG(int64_t, max_invokes, 1'000'000, "invokes to start at most");
ABSL_FLAG(int64_t, timeout_ms, 5000, "invoke timeout");
ABSL_FLAG(std::string, nodes, "", "comma-separated node ids (default: every connected node)");
ABSL_FLAG(std::string, command, "system.which", "command to invoke");
ABSL_FLAG(std::string, params_json, R"({"bins":["sh"]})", "params of every invoke");
ABSL_FLAG(int, expect_payload_bytes, 0, "count answers of another size as bad (0: any)");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Invoke load driver for Tether benchmarks.");
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::ParseCommandLine(argc, argv);
  const std::string target = absl::GetFlag(FLAGS_registry);
  if (target.rfind("127.", 0) != 0) {
    std::fprintf(stderr, "invoke_load: --registry must be a 127.x.x.x address\n");
    return 2;
  }
  auto stub = tether::v1::Registry::NewStub(
      grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));

  tether::bench::InvokeLoadOptions o;
  if (const char* t = std::getenv("TETHER_TOKEN"); t != nullptr) o.bearer_token = t;
  o.node_ids = absl::StrSplit(absl::GetFlag(FLAGS_nodes), ',', absl::SkipEmpty());
  if (o.node_ids.empty()) {
    tether::v1::ListNodesRequest req;
    req.set_connected(tether::v1::ListNodesRequest::CONNECTED_ONLY);
    req.set_page_size(1000);
    for (;;) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      if (!o.bearer_token.empty()) ctx.AddMetadata("authorization", "Bearer " + o.bearer_token);
      tether::v1::ListNodesResponse resp;
      grpc::Status s = stub->ListNodes(&ctx, req, &resp);
      if (!s.ok()) {
        std::fprintf(stderr, "invoke_load: ListNodes: %s\n", s.error_message().c_str());
        return 1;
      }
      for (const auto& n : resp.nodes()) o.node_ids.push_back(n.node_id());
      if (resp.next_page_token().empty()) break;
      req.set_page_token(resp.next_page_token());
    }
  }
  o.rate = absl::GetFlag(FLAGS_rate);
  o.concurrency = absl::GetFlag(FLAGS_concurrency);
  o.duration = absl::Seconds(std::min<int64_t>(absl::GetFlag(FLAGS_duration_s), 3600));
  o.max_invokes = absl::GetFlag(FLAGS_max_invokes);
  o.timeout_ms = absl::GetFlag(FLAGS_timeout_ms);
  o.command = absl::GetFlag(FLAGS_command);
  o.params_json = absl::GetFlag(FLAGS_params_json);
  o.expect_payload_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_expect_payload_bytes));
  auto result = tether::bench::RunInvokeLoad(*stub, o);
  if (!result.ok()) {
    std::fprintf(stderr, "invoke_load: %s\n", std::string(result.status().message()).c_str());
    return 1;
  }
  std::printf("%zu nodes: %s\n", o.node_ids.size(), result->Summary().c_str());
  return result->completed() == result->ok ? 0 : 1;
}
