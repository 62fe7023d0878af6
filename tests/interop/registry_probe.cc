// registry_probe: a tiny client of the registry's public gRPC API (tether.v1.Registry) for
// shell-driven interop tests. Prints results as JSON (protobuf's JSON mapping, field names in
// lowerCamelCase) on stdout; failures go to stderr with the gRPC status and, for InvokeNode,
// the tether-error-code trailer.
//
//   registry_probe --registry=127.0.0.1:7000 list
//   registry_probe --registry=... get NODE_ID
//   registry_probe --registry=... invoke NODE_ID COMMAND PARAMS_JSON [TIMEOUT_MS]
//   registry_probe --registry=... revision
//   registry_probe --registry=... watch FROM_REVISION SECONDS   (one event a line, then exit 0)
//
// --token=T (or env TETHER_API_TOKEN) sends "authorization: Bearer T" with every call.
// Exit status: 0 ok, 1 the RPC failed, 2 bad usage.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "proto/tether/v1/registry.grpc.pb.h"

namespace {

using tether::v1::Registry;

std::string ToJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions o;
  o.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

std::string g_token;  // bearer token for the public API; empty: none sent

void Deadline(grpc::ClientContext& ctx, int64_t ms) {
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
  if (!g_token.empty()) ctx.AddMetadata("authorization", "Bearer " + g_token);
}

int Fail(const char* what, const grpc::Status& s, const std::string& extra = "") {
  std::fprintf(stderr, "registry_probe: %s failed: code=%d message=%s%s\n", what,
               static_cast<int>(s.error_code()), s.error_message().c_str(), extra.c_str());
  return 1;
}

int Usage() {
  std::fprintf(stderr,
               "usage: registry_probe --registry=HOST:PORT [--token=T] "
               "(list | get NODE_ID | invoke NODE_ID COMMAND PARAMS_JSON [TIMEOUT_MS] | revision | "
               "watch FROM_REVISION SECONDS)\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string target;
  std::vector<std::string> args;
  if (const char* t = std::getenv("TETHER_API_TOKEN"); t != nullptr) g_token = t;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--registry=", 0) == 0) {
      target = a.substr(11);
    } else if (a.rfind("--token=", 0) == 0) {
      g_token = a.substr(8);
    } else {
      args.push_back(a);
    }
  }
  if (target.empty() || args.empty()) return Usage();
  auto api = Registry::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  const std::string& cmd = args[0];

  if (cmd == "list" && args.size() == 1) {
    grpc::ClientContext ctx;
    Deadline(ctx, 5000);
    tether::v1::ListNodesRequest req;
    tether::v1::ListNodesResponse resp;
    grpc::Status s = api->ListNodes(&ctx, req, &resp);
    if (!s.ok()) return Fail("ListNodes", s);
    std::cout << ToJson(resp) << std::endl;
    return 0;
  }
  if (cmd == "get" && args.size() == 2) {
    grpc::ClientContext ctx;
    Deadline(ctx, 5000);
    tether::v1::GetNodeRequest req;
    req.set_node_id(args[1]);
    tether::v1::Node node;
    grpc::Status s = api->GetNode(&ctx, req, &node);
    if (!s.ok()) return Fail("GetNode", s);
    std::cout << ToJson(node) << std::endl;
    return 0;
  }
  if (cmd == "invoke" && (args.size() == 4 || args.size() == 5)) {
    int64_t timeout_ms = args.size() == 5 ? std::atoll(args[4].c_str()) : 10000;
    grpc::ClientContext ctx;
    Deadline(ctx, timeout_ms + 5000);
    tether::v1::InvokeNodeRequest req;
    req.set_node_id(args[1]);
    req.set_command(args[2]);
    req.set_params_json(args[3]);
    req.set_timeout_ms(timeout_ms);
    tether::v1::InvokeNodeResponse resp;
    grpc::Status s = api->InvokeNode(&ctx, req, &resp);
    if (!s.ok()) {
      std::string extra;
      const auto& md = ctx.GetServerTrailingMetadata();
      if (auto it = md.find("tether-error-code"); it != md.end()) {
        extra += " tether-error-code=" + std::string(it->second.data(), it->second.size());
      }
      if (auto it = md.find("tether-invoke-error-bin"); it != md.end()) {
        tether::v1::InvokeError e;
        if (e.ParseFromArray(it->second.data(), static_cast<int>(it->second.size()))) {
          extra += " invoke-error=" + ToJson(e);
        }
      }
      return Fail("InvokeNode", s, extra);
    }
    std::cout << ToJson(resp) << std::endl;
    return 0;
  }
  if (cmd == "revision" && args.size() == 1) {
    grpc::ClientContext ctx;
    Deadline(ctx, 5000);
    tether::v1::GetPresenceResponse resp;
    grpc::Status s = api->GetPresence(&ctx, {}, &resp);
    if (!s.ok()) return Fail("GetPresence", s);
    std::cout << resp.revision() << std::endl;
    return 0;
  }
  if (cmd == "watch" && args.size() == 3) {
    grpc::ClientContext ctx;
    Deadline(ctx, static_cast<int64_t>(std::atof(args[2].c_str()) * 1000));
    tether::v1::WatchPresenceRequest req;
    req.set_from_revision(std::strtoull(args[1].c_str(), nullptr, 10));
    auto stream = api->WatchPresence(&ctx, req);
    tether::v1::PresenceEvent e;
    while (stream->Read(&e)) std::cout << ToJson(e) << std::endl;
    grpc::Status s = stream->Finish();
    // The watch ends by its own deadline: that is the normal way out.
    if (!s.ok() && s.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
      return Fail("WatchPresence", s);
    }
    return 0;
  }
  return Usage();
}
