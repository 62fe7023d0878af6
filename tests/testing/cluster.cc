#include "tests/testing/cluster.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iterator>

#include "gtest/gtest.h"

namespace tether::testing {

constexpr char kRegistryBinary[] = "registry_service/server/registry_service";
constexpr char kEdgeBinary[] = "ws_edge/ws_edge";

bool Eventually(const std::function<bool()>& done, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return done();
}

std::unique_ptr<grpc::ClientContext> AuthedContext(const std::string& token,
                                                   absl::Duration timeout) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
  ctx->set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
  return ctx;
}

PresenceWatcher::PresenceWatcher(v1::Registry::Stub& api, uint64_t from_revision,
                                 const std::string& token) {
  if (!token.empty()) ctx_.AddMetadata("authorization", "Bearer " + token);
  v1::WatchPresenceRequest req;
  req.set_from_revision(from_revision);
  reader_ = std::thread([this, &api, req] {
    auto stream = api.WatchPresence(&ctx_, req);
    v1::PresenceEvent e;
    while (stream->Read(&e)) {
      absl::MutexLock lock(&mu_);
      events_.push_back(e);
    }
    grpc::Status s = stream->Finish();
    absl::MutexLock lock(&mu_);
    done_ = true;
    status_ = s;
  });
}

PresenceWatcher::~PresenceWatcher() {
  ctx_.TryCancel();
  reader_.join();
}

std::vector<v1::PresenceEvent> PresenceWatcher::events() {
  absl::MutexLock lock(&mu_);
  return events_;
}

int PresenceWatcher::Count(const std::string& node_id, v1::PresenceEvent::Kind kind) {
  absl::MutexLock lock(&mu_);
  int n = 0;
  for (const auto& e : events_) n += e.node_id() == node_id && e.kind() == kind;
  return n;
}

bool PresenceWatcher::WaitFor(const std::string& node_id, v1::PresenceEvent::Kind kind, int count,
                              absl::Duration timeout) {
  return Eventually([&] { return Count(node_id, kind) >= count; }, timeout);
}

grpc::Status PresenceWatcher::status() {
  absl::MutexLock lock(&mu_);
  return status_;
}

Cluster::Cluster() : loop_(std::make_unique<edge::client::ClientLoop>()) {
  tokens_file_ = TempPath("api-tokens");
  std::ofstream(tokens_file_) << kAdminToken << " admin ops\n"
                              << kReadToken << " read dashboard\n"
                              << kWriteToken << " write caller\n"
                              << kPairingToken << " pairing approver\n";
  edge_secret_file_ = TempPath("edge-secret");
  std::ofstream(edge_secret_file_) << "edge-secret-for-tests\n";
}

Cluster::~Cluster() {
  loop_.reset();  // node clients must be gone already (tests own them)
  balancer_.reset();
  edges_.clear();
  registry_.reset();
  extra_registries_.clear();
}

std::vector<std::string> Cluster::RegistryArgs(const std::vector<std::string>& flags,
                                               int port) const {
  std::vector<std::string> args = {"--listen=127.0.0.1:" + std::to_string(port), "--tick_ms=20",
                                   "--metrics_port=0", "--api_tokens_file=" + tokens_file_,
                                   "--edge_secret_file=" + edge_secret_file_};
  // No recovery phase unless the test asks for one: most tests start the registry before any
  // edge and would otherwise wait out the grace (tests of recovery pass their own flag).
  if (std::none_of(flags.begin(), flags.end(),
                   [](const std::string& f) { return f.rfind("--recovery_grace_ms=", 0) == 0; })) {
    args.push_back("--recovery_grace_ms=0");
  }
  args.insert(args.end(), flags.begin(), flags.end());
  return args;
}

int Cluster::StartExtraRegistry(const std::string& name, const std::vector<std::string>& flags) {
  auto proc = std::make_unique<ChildProcess>(kRegistryBinary, RegistryArgs(flags, 0));
  auto p = proc->WaitForPort(absl::Seconds(20));
  EXPECT_TRUE(p.ok()) << p.status();
  extra_registries_[name] = std::move(proc);
  return p.ok() ? *p : 0;
}

void Cluster::PointApiAt(int port) {
  api_ = v1::Registry::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
}

int Cluster::StartRegistry(const std::vector<std::string>& flags, int port) {
  registry_ = std::make_unique<ChildProcess>(kRegistryBinary, RegistryArgs(flags, port));
  auto p = registry_->WaitForPort(absl::Seconds(20));
  EXPECT_TRUE(p.ok()) << p.status();
  registry_port_ = p.ok() ? *p : 0;
  api_ = v1::Registry::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(registry_port_),
                                                   grpc::InsecureChannelCredentials()));
  return registry_port_;
}

void Cluster::StopRegistry(int sig) {
  registry_->Signal(sig);
  registry_->Wait(absl::Seconds(10));
}

int Cluster::StartEdge(const std::string& edge_id, const std::vector<std::string>& flags,
                       bool wait_attached) {
  // Every test node comes from 127.0.0.1: per-address handshake limits are tested on their own.
  std::vector<std::string> args = {"--listen=127.0.0.1:0",
                                   "--metrics_port=0",
                                   "--handshake_rate_per_ip=0",
                                   "--edge_secret_file=" + edge_secret_file_,
                                   "--registry=127.0.0.1:" + std::to_string(registry_port_),
                                   "--edge_id=" + edge_id};
  args.insert(args.end(), flags.begin(), flags.end());
  auto proc = std::make_unique<ChildProcess>(
      kEdgeBinary, args,
      std::vector<std::string>{std::string("TETHER_SHARED_TOKEN=") + kTestToken});
  auto p = proc->WaitForPort(absl::Seconds(20));
  EXPECT_TRUE(p.ok()) << p.status();
  edges_[edge_id] = std::move(proc);
  edge_ports_[edge_id] = p.ok() ? *p : 0;
  // A node can only register through an attached edge.
  ChildProcess* edge = edges_[edge_id].get();
  if (!wait_attached) return edge_ports_[edge_id];
  EXPECT_TRUE(Eventually([edge] {
    return edge->Log().find("registry_link_up") != std::string::npos;
  })) << edge->Log();
  return edge_ports_[edge_id];
}

void Cluster::StopEdge(const std::string& edge_id, int sig) {
  edges_.at(edge_id)->Signal(sig);
  edges_.at(edge_id)->Wait(absl::Seconds(15));
}

int Cluster::StartBalancer(const std::vector<std::string>& edge_ids) {
  const std::string prefix = TempPath("nginx");
  mkdir(prefix.c_str(), 0755);
  balancer_port_ = FreePort();
  std::string cmd = "deploy/nginx/render.sh --foreground --out " + prefix + "/nginx.conf " +
                    std::to_string(balancer_port_);
  for (const auto& id : edge_ids) cmd += " " + std::to_string(edge_ports_.at(id));
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  if (geteuid() == 0) {
    // As root, nginx's workers would switch to `nobody` and chown their temp dirs, which the
    // test sandbox's user namespace refuses: keep them as the current user.
    std::string conf = "user root;\n";
    std::ifstream in(prefix + "/nginx.conf");
    conf.append(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    std::ofstream(prefix + "/nginx.conf") << conf;
  }
  balancer_ = std::make_unique<ChildProcess>(
      "/usr/sbin/nginx",
      std::vector<std::string>{"-p", prefix, "-c", prefix + "/nginx.conf", "-e", "stderr"},
      std::vector<std::string>{}, /*port_file_flag=*/false);
  const int port = balancer_port_;
  EXPECT_TRUE(Eventually([port] {
    return HttpGet(port, "/lb-healthz").find("200") != std::string::npos;
  })) << balancer_->Log();
  return balancer_port_;
}

std::unique_ptr<edge::client::NodeClient> Cluster::Node(
    edge::client::DeviceCredentials& creds, const std::string& edge_id,
    std::function<void(edge::client::NodeClientOptions&)> tweak) {
  return NodeAt(creds, edge_ports_.at(edge_id), std::move(tweak));
}

std::unique_ptr<edge::client::NodeClient> Cluster::NodeAt(
    edge::client::DeviceCredentials& creds, int port,
    std::function<void(edge::client::NodeClientOptions&)> tweak) {
  edge::client::NodeClientOptions o;
  o.port = static_cast<uint16_t>(port);
  o.shared_token = kTestToken;
  o.auto_connect = true;
  if (tweak) tweak(o);
  auto node = std::make_unique<edge::client::NodeClient>(*loop_, creds, o);
  node->Start();
  return node;
}

std::unique_ptr<edge::client::NodeClient> Cluster::ReadyNode(edge::client::DeviceCredentials& creds,
                                                             const std::string& edge_id) {
  return ReadyNodeAt(creds, edge_ports_.at(edge_id));
}

std::unique_ptr<edge::client::NodeClient> Cluster::ReadyNodeAt(
    edge::client::DeviceCredentials& creds, int port) {
  auto node = NodeAt(creds, port, [](edge::client::NodeClientOptions& o) {
    o.on_invoke = [](const edge::protocol::InvokeRequest&) {
      return edge::client::InvokeReply::Ok(std::string(R"({"ok":true})"));
    };
  });
  absl::Status s = node->Connect(absl::Seconds(10));
  EXPECT_TRUE(s.ok()) << s;
  return node;
}

std::optional<v1::Node> Cluster::GetNode(const std::string& node_id) {
  auto ctx = AuthedContext(kReadToken, absl::Seconds(5));
  v1::GetNodeRequest req;
  req.set_node_id(node_id);
  v1::Node node;
  if (!api_->GetNode(ctx.get(), req, &node).ok()) return std::nullopt;
  return node;
}

bool Cluster::Connected(const std::string& node_id) {
  auto n = GetNode(node_id);
  return n.has_value() && n->connected();
}

InvokeOutcome InvokeVia(v1::Registry::Stub& api, const std::string& node_id, int64_t timeout_ms,
                        const std::string& command, const std::string& params_json,
                        const std::string& idempotency_key) {
  auto ctx = AuthedContext(kWriteToken, absl::Milliseconds(timeout_ms + 5000));
  v1::InvokeNodeRequest req;
  req.set_node_id(node_id);
  req.set_command(command);
  req.set_params_json(params_json);
  req.set_timeout_ms(timeout_ms);
  req.set_idempotency_key(idempotency_key);
  InvokeOutcome out;
  out.status = api.InvokeNode(ctx.get(), req, &out.response);
  auto md = ctx->GetServerTrailingMetadata();
  auto it = md.find("tether-error-code");
  if (it != md.end()) out.error_code = std::string(it->second.data(), it->second.size());
  return out;
}

InvokeOutcome Cluster::Invoke(const std::string& node_id, int64_t timeout_ms,
                              const std::string& command, const std::string& params_json,
                              const std::string& idempotency_key) {
  return InvokeVia(*api_, node_id, timeout_ms, command, params_json, idempotency_key);
}

std::string HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string req = "GET " + path + " HTTP/1.0\r\n\r\n";
    (void)!write(fd, req.data(), req.size());
    char buf[4096];
    for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) out.append(buf, n);
  }
  close(fd);
  return out;
}

int MetricsPort(ChildProcess& process) {
  std::string log;
  Eventually([&] {
    log = process.Log();
    return log.find("/metrics") != std::string::npos;
  });
  const size_t end = log.find("/metrics");
  const size_t colon = log.rfind(':', end);
  return colon == std::string::npos ? 0 : std::atoi(log.c_str() + colon + 1);
}

double MetricValue(const std::string& scrape, const std::string& name) {
  const size_t at = scrape.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::atof(scrape.c_str() + at + name.size() + 2);
}

uint64_t Cluster::Revision() {
  auto ctx = AuthedContext(kReadToken);
  v1::GetPresenceResponse resp;
  EXPECT_TRUE(api_->GetPresence(ctx.get(), {}, &resp).ok());
  return resp.revision();
}

}  // namespace tether::testing
