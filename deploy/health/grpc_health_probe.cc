// grpc_health_probe: asks a gRPC server's standard health service (grpc.health.v1.Health/Check)
// whether it is SERVING. The registry image runs it as its Docker HEALTHCHECK; Kubernetes uses
// its native `grpc:` probe instead. Debian ships no generated health stubs, so the two tiny
// messages are encoded by hand over a generic stub.
//
//   grpc_health_probe --addr=127.0.0.1:7000 [--service=NAME] [--timeout_ms=2000]
//
// Exit status: 0 SERVING; 1 not serving, unreachable or any RPC error (printed on stderr).
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <future>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:7000", "server address host:port");
ABSL_FLAG(std::string, service, "", "service name to check (empty: the whole server)");
ABSL_FLAG(int64_t, timeout_ms, 2000, "deadline for connecting and answering");

namespace {

constexpr uint32_t kServing = 1;  // grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING

// HealthCheckRequest { string service = 1; }
std::string EncodeRequest(const std::string& service) {
  std::string out;
  if (service.empty()) return out;  // proto3: the default value is not written
  google::protobuf::io::StringOutputStream raw(&out);
  google::protobuf::io::CodedOutputStream coded(&raw);
  coded.WriteTag(1 << 3 | 2);  // field 1, length-delimited
  coded.WriteVarint32(static_cast<uint32_t>(service.size()));
  coded.WriteString(service);
  return out;
}

// HealthCheckResponse { ServingStatus status = 1; }; absent means UNKNOWN (0).
uint32_t DecodeStatus(const std::string& bytes) {
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                                            static_cast<int>(bytes.size()));
  uint32_t status = 0;
  while (uint32_t tag = in.ReadTag()) {
    if (tag == (1 << 3 | 0)) {
      if (!in.ReadVarint32(&status)) return 0;
    } else if (!google::protobuf::internal::WireFormatLite::SkipField(&in, tag)) {
      return 0;
    }
  }
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Exit 0 when the gRPC server at --addr reports SERVING.");
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() != 1) {
    std::fprintf(stderr, "grpc_health_probe: unexpected argument %s\n", rest[1]);
    return 2;
  }
  const std::string addr = absl::GetFlag(FLAGS_addr);
  auto channel = grpc::CreateChannel(addr, grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(absl::GetFlag(FLAGS_timeout_ms)));
  ctx.set_wait_for_ready(true);  // a server still starting gets the whole deadline

  const std::string req_bytes = EncodeRequest(absl::GetFlag(FLAGS_service));
  grpc::Slice slice(req_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  const grpc::Status status = done.get_future().get();
  if (!status.ok()) {
    std::fprintf(stderr, "grpc_health_probe: %s: code %d: %s\n", addr.c_str(),
                 static_cast<int>(status.error_code()), status.error_message().c_str());
    return 1;
  }
  std::vector<grpc::Slice> slices;
  std::string resp_bytes;
  if (response.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices) {
      resp_bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
  }
  const uint32_t serving = DecodeStatus(resp_bytes);
  if (serving != kServing) {
    std::fprintf(stderr, "grpc_health_probe: %s: status %u, not SERVING\n", addr.c_str(), serving);
    return 1;
  }
  std::printf("SERVING\n");
  return 0;
}
