// tetherctl: the operator's command line for the registry's public gRPC API.
//
// Exit codes a script can rely on: 0 ok; 1 other error; 2 usage; 3 NOT_CONNECTED; 4 TIMEOUT;
// 5 DISCONNECTED; 6 COMMAND_NOT_ALLOWED; 7 NODE_ERROR; 8 not found; 9 registry unreachable;
// 10 not authenticated or not allowed.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/env_flags.h"
#include "common/files.h"
#include "proto/tether/v1/registry.grpc.pb.h"

ABSL_FLAG(std::string, registry, "127.0.0.1:7000", "registry gRPC address (env TETHER_REGISTRY)");
ABSL_FLAG(bool, json, false, "print JSON instead of tables");
ABSL_FLAG(int64_t, timeout_ms, 0, "invoke: timeout (0: the registry's default, 30 s)");
ABSL_FLAG(std::string, idempotency_key, "", "invoke: idempotency key");
ABSL_FLAG(uint64_t, from, 0, "watch: resume after this revision (0: from now)");
ABSL_FLAG(bool, connected, false, "nodes: only connected ones");
ABSL_FLAG(bool, disconnected, false, "nodes: only disconnected ones");
ABSL_FLAG(int64_t, max_events, 0, "watch: stop after this many events (0: never)");
ABSL_FLAG(std::string, token_file, "",
          "file holding the API bearer token (default: env TETHER_TOKEN)");
ABSL_FLAG(std::string, tls_ca_file, "", "PEM CA to verify the registry (TLS); empty: plaintext");
ABSL_FLAG(std::string, tls_name, "", "name expected in the registry's certificate");

namespace {

using tether::v1::Registry;

constexpr char kUsage[] = R"(tetherctl [flags] COMMAND [ARGS]

commands:
  nodes [--connected|--disconnected]     list nodes
  get NODE_ID                            describe one node
  invoke NODE_ID COMMAND [PARAMS_JSON]   invoke a command on a node (--timeout_ms, --idempotency_key)
  presence                               connected nodes and the current revision
  watch [--from=REVISION]                stream presence changes; resumes after registry blips
  pairing list | approve REQUEST_ID | reject REQUEST_ID
  devices                                paired devices
  revoke NODE_ID                         unpair a device and close its connections

NODE_ID may be a prefix (as `nodes` prints them) that names one node.
the API token comes from env TETHER_TOKEN or --token_file.

exit codes: 0 ok, 1 error, 2 usage, 3 NOT_CONNECTED, 4 TIMEOUT, 5 DISCONNECTED,
            6 COMMAND_NOT_ALLOWED, 7 NODE_ERROR, 8 not found, 9 registry unreachable,
            10 not authenticated / not allowed)";

std::string Json(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

int Fail(const grpc::Status& s) {
  std::fprintf(stderr, "tetherctl: %s\n", s.error_message().c_str());
  if (s.error_code() == grpc::StatusCode::NOT_FOUND) return 8;
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE) return 9;
  if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
      s.error_code() == grpc::StatusCode::PERMISSION_DENIED) {
    return 10;
  }
  return 1;
}

std::string& Token() {
  static std::string token;
  return token;
}

std::unique_ptr<grpc::ClientContext> Ctx(int64_t timeout_ms = 10'000) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!Token().empty()) ctx->AddMetadata("authorization", "Bearer " + Token());
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  return ctx;
}

std::string Ago(int64_t ms) {
  if (ms == 0) return "-";
  const int64_t now = absl::ToUnixMillis(absl::Now());
  return absl::StrCat((now - ms) / 1000, "s ago");
}

void PrintNodeRow(const tether::v1::Node& n) {
  std::printf("%-16.16s %-9s %-20.20s %-8.8s %-12.12s %-32s %s\n", n.node_id().c_str(),
              n.connected() ? "connected" : "-", n.display_name().c_str(), n.platform().c_str(),
              n.edge_id().c_str(), n.conn_id().c_str(), Ago(n.last_seen_ms()).c_str());
}

int Nodes(Registry::Stub& api) {
  tether::v1::ListNodesRequest req;
  if (absl::GetFlag(FLAGS_connected))
    req.set_connected(tether::v1::ListNodesRequest::CONNECTED_ONLY);
  if (absl::GetFlag(FLAGS_disconnected)) {
    req.set_connected(tether::v1::ListNodesRequest::DISCONNECTED_ONLY);
  }
  req.set_page_size(1000);
  if (!absl::GetFlag(FLAGS_json)) {
    std::printf("%-16s %-9s %-20s %-8s %-12s %-32s %s\n", "NODE", "STATE", "NAME", "PLATFORM",
                "EDGE", "CONN", "LAST SEEN");
  }
  for (;;) {
    tether::v1::ListNodesResponse resp;
    grpc::Status s = api.ListNodes(Ctx().get(), req, &resp);
    if (!s.ok()) return Fail(s);
    for (const auto& n : resp.nodes()) {
      if (absl::GetFlag(FLAGS_json)) {
        std::printf("%s\n", Json(n).c_str());
      } else {
        PrintNodeRow(n);
      }
    }
    if (resp.next_page_token().empty()) return 0;
    req.set_page_token(resp.next_page_token());
  }
}

// The node ids `nodes` prints are cut to 16 characters; a command given such a prefix (any
// prefix shorter than a whole 64-character id) gets the one node it names, in place. Several
// matches: `ambiguous` says which (exit 2); none: the prefix stays (the registry answers it).
grpc::Status ResolveNodeId(Registry::Stub& api, std::string* id, std::string* ambiguous) {
  if (id->size() >= 64) return grpc::Status::OK;
  tether::v1::ListNodesRequest req;
  req.set_page_size(1000);
  std::vector<std::string> matches;
  for (;;) {
    tether::v1::ListNodesResponse resp;
    grpc::Status s = api.ListNodes(Ctx().get(), req, &resp);
    if (!s.ok()) return s;
    for (const auto& n : resp.nodes()) {
      if (absl::StartsWith(n.node_id(), *id)) matches.push_back(n.node_id());
    }
    if (resp.next_page_token().empty()) break;
    req.set_page_token(resp.next_page_token());
  }
  if (matches.size() > 1) {
    *ambiguous = "node id prefix '" + *id + "' matches " + std::to_string(matches.size()) +
                 " nodes: " + absl::StrJoin(matches, ", ");
  } else if (matches.size() == 1) {
    *id = matches[0];
  }
  return grpc::Status::OK;
}

int Get(Registry::Stub& api, const std::string& node_id) {
  tether::v1::GetNodeRequest req;
  req.set_node_id(node_id);
  tether::v1::Node n;
  grpc::Status s = api.GetNode(Ctx().get(), req, &n);
  if (!s.ok()) return Fail(s);
  std::printf("%s\n", Json(n).c_str());
  return 0;
}

int Invoke(Registry::Stub& api, const std::string& node_id, const std::string& command,
           const std::string& params) {
  tether::v1::InvokeNodeRequest req;
  req.set_node_id(node_id);
  req.set_command(command);
  req.set_params_json(params);
  req.set_timeout_ms(absl::GetFlag(FLAGS_timeout_ms));
  req.set_idempotency_key(absl::GetFlag(FLAGS_idempotency_key));
  const int64_t wait = (req.timeout_ms() > 0 ? req.timeout_ms() : 300'000) + 5'000;
  auto ctx = Ctx(wait);
  tether::v1::InvokeNodeResponse resp;
  grpc::Status s = api.InvokeNode(ctx.get(), req, &resp);
  if (s.ok()) {
    if (absl::GetFlag(FLAGS_json)) {
      std::printf("%s\n", Json(resp).c_str());
    } else {
      std::printf("%s\n", resp.payload_json().c_str());
    }
    return 0;
  }
  std::string code;
  const auto& md = ctx->GetServerTrailingMetadata();
  if (auto it = md.find("tether-error-code"); it != md.end()) {
    code = std::string(it->second.data(), it->second.size());
  }
  // No invoke outcome: the call itself was refused (not authenticated, no write scope, registry
  // unreachable), with the exit codes every other command uses.
  if (code.empty()) return Fail(s);
  std::fprintf(stderr, "tetherctl: %s\n", s.error_message().c_str());
  if (code == "NOT_CONNECTED") return 3;
  if (code == "TIMEOUT") return 4;
  if (code == "DISCONNECTED") return 5;
  if (code == "COMMAND_NOT_ALLOWED") return 6;
  if (code == "NODE_ERROR") return 7;
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ? 9 : 1;
}

int Presence(Registry::Stub& api) {
  tether::v1::GetPresenceResponse resp;
  grpc::Status s = api.GetPresence(Ctx().get(), {}, &resp);
  if (!s.ok()) return Fail(s);
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", Json(resp).c_str());
    return 0;
  }
  std::printf("revision %llu, %d connected\n", static_cast<unsigned long long>(resp.revision()),
              resp.nodes_size());
  for (const auto& n : resp.nodes()) PrintNodeRow(n);
  return 0;
}

const char* KindName(tether::v1::PresenceEvent::Kind k) {
  switch (k) {
    case tether::v1::PresenceEvent::CONNECTED:
      return "connected";
    case tether::v1::PresenceEvent::REPLACED:
      return "replaced";
    case tether::v1::PresenceEvent::DISCONNECTED:
      return "disconnected";
    default:
      return "?";
  }
}

// Streams presence; on a broken stream it reconnects and resumes after the last revision
// seen. If that revision is no longer in the registry's history it says so and goes on from
// the current one (the caller should re-list).
int Watch(Registry::Stub& api) {
  uint64_t after = absl::GetFlag(FLAGS_from);
  const int64_t max_events = absl::GetFlag(FLAGS_max_events);
  int64_t seen = 0;
  for (;;) {
    grpc::ClientContext ctx;
    if (!Token().empty()) ctx.AddMetadata("authorization", "Bearer " + Token());
    tether::v1::WatchPresenceRequest req;
    req.set_from_revision(after);
    auto stream = api.WatchPresence(&ctx, req);
    tether::v1::PresenceEvent e;
    while (stream->Read(&e)) {
      after = e.revision();
      if (absl::GetFlag(FLAGS_json)) {
        std::printf("%s\n", Json(e).c_str());
      } else {
        std::printf("%llu %s %s conn=%s edge=%s gen=%llu%s%s\n",
                    static_cast<unsigned long long>(e.revision()), KindName(e.kind()),
                    e.node_id().c_str(), e.conn_id().c_str(), e.edge_id().c_str(),
                    static_cast<unsigned long long>(e.generation()),
                    e.reason().empty() ? "" : " reason=", e.reason().c_str());
      }
      std::fflush(stdout);
      if (max_events > 0 && ++seen >= max_events) {
        ctx.TryCancel();
        return 0;
      }
    }
    grpc::Status s = stream->Finish();
    if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
        s.error_code() == grpc::StatusCode::PERMISSION_DENIED) {
      return Fail(s);
    }
    if (s.error_code() == grpc::StatusCode::OUT_OF_RANGE) {
      std::fprintf(stderr, "tetherctl: %s; continuing from now (re-list with 'nodes')\n",
                   s.error_message().c_str());
      after = 0;
      continue;
    }
    std::fprintf(stderr, "tetherctl: watch interrupted (%s); resuming after %llu\n",
                 s.error_message().c_str(), static_cast<unsigned long long>(after));
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
}

int Pairing(Registry::Stub& api, const std::vector<char*>& args) {
  const std::string verb = args.size() > 2 ? args[2] : "list";
  if (verb == "list") {
    tether::v1::ListPairingRequestsResponse resp;
    grpc::Status s = api.ListPairingRequests(Ctx().get(), {}, &resp);
    if (!s.ok()) return Fail(s);
    for (const auto& r : resp.requests()) {
      if (absl::GetFlag(FLAGS_json)) {
        std::printf("%s\n", Json(r).c_str());
      } else {
        std::printf("%s %s %s %s %s\n", r.request_id().c_str(), r.node_id().c_str(),
                    r.display_name().c_str(), r.platform().c_str(), r.remote_addr().c_str());
      }
    }
    return 0;
  }
  if (args.size() != 4) return 2;
  if (verb == "approve") {
    tether::v1::ApprovePairingRequest req;
    req.set_request_id(args[3]);
    req.set_approved_by("tetherctl");
    tether::v1::ApprovePairingResponse resp;
    grpc::Status s = api.ApprovePairing(Ctx().get(), req, &resp);
    if (!s.ok()) return Fail(s);
    std::printf("approved %s\n", resp.device().node_id().c_str());
    return 0;
  }
  if (verb == "reject") {
    tether::v1::RejectPairingRequest req;
    req.set_request_id(args[3]);
    tether::v1::RejectPairingResponse resp;
    grpc::Status s = api.RejectPairing(Ctx().get(), req, &resp);
    return s.ok() ? 0 : Fail(s);
  }
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  // Flags also read TETHER_<FLAG> (e.g. TETHER_REGISTRY), as the servers do.
  std::vector<char*> args = tether::common::ParseFlags(argc, argv, kUsage);
  if (args.size() < 2) {
    std::fprintf(stderr, "%s\n", kUsage);
    return 2;
  }
  if (const std::string f = absl::GetFlag(FLAGS_token_file); !f.empty()) {
    auto token = tether::common::ReadTrimmedFile(f);
    if (!token.ok()) {
      std::fprintf(stderr, "tetherctl: --token_file: %s\n",
                   std::string(token.status().message()).c_str());
      return 2;
    }
    Token() = *token;
  } else if (const char* t = std::getenv("TETHER_TOKEN"); t != nullptr) {
    Token() = t;
  }
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  grpc::ChannelArguments channel_args;
  if (const std::string ca = absl::GetFlag(FLAGS_tls_ca_file); !ca.empty()) {
    grpc::SslCredentialsOptions ssl;
    auto pem = tether::common::ReadTrimmedFile(ca);
    if (!pem.ok()) {
      std::fprintf(stderr, "tetherctl: --tls_ca_file: %s\n",
                   std::string(pem.status().message()).c_str());
      return 2;
    }
    ssl.pem_root_certs = *pem + "\n";
    creds = grpc::SslCredentials(ssl);
    if (!absl::GetFlag(FLAGS_tls_name).empty()) {
      channel_args.SetSslTargetNameOverride(absl::GetFlag(FLAGS_tls_name));
    }
  }
  auto channel = grpc::CreateCustomChannel(absl::GetFlag(FLAGS_registry), creds, channel_args);
  auto api = Registry::NewStub(channel);
  const std::string cmd = args[1];
  std::string node_id;  // the whole id args[2] names, for get, revoke and invoke
  if ((cmd == "get" || cmd == "revoke" || cmd == "invoke") && args.size() >= 3) {
    node_id = args[2];
    std::string ambiguous;
    grpc::Status s = ResolveNodeId(*api, &node_id, &ambiguous);
    if (!s.ok()) return Fail(s);
    if (!ambiguous.empty()) {
      std::fprintf(stderr, "tetherctl: %s\n", ambiguous.c_str());
      return 2;
    }
    args[2] = node_id.data();
  }
  int rc = 2;
  if (cmd == "nodes") {
    rc = Nodes(*api);
  } else if (cmd == "get" && args.size() == 3) {
    rc = Get(*api, args[2]);
  } else if (cmd == "invoke" && (args.size() == 4 || args.size() == 5)) {
    rc = Invoke(*api, args[2], args[3], args.size() == 5 ? args[4] : "");
  } else if (cmd == "presence") {
    rc = Presence(*api);
  } else if (cmd == "watch") {
    rc = Watch(*api);
  } else if (cmd == "pairing") {
    rc = Pairing(*api, args);
  } else if (cmd == "devices") {
    tether::v1::ListDevicesResponse resp;
    grpc::Status s = api->ListDevices(Ctx().get(), {}, &resp);
    if (!s.ok()) return Fail(s);
    for (const auto& d : resp.devices()) std::printf("%s\n", Json(d).c_str());
    rc = 0;
  } else if (cmd == "revoke" && args.size() == 3) {
    tether::v1::RevokeDeviceRequest req;
    req.set_node_id(args[2]);
    tether::v1::RevokeDeviceResponse resp;
    grpc::Status s = api->RevokeDevice(Ctx().get(), req, &resp);
    if (!s.ok()) return Fail(s);
    std::printf("revoked; closed %d connection(s)\n", resp.closed_connections());
    rc = 0;
  }
  if (rc == 2) std::fprintf(stderr, "%s\n", kUsage);
  return rc;
}
