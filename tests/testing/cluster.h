// Cluster: real registry and edge processes on 127.0.0.1 for end-to-end tests, with a public
// API client, presence watchers and node clients.
#ifndef TETHER_TESTS_TESTING_CLUSTER_H_
#define TETHER_TESTS_TESTING_CLUSTER_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/tether/v1/registry.grpc.pb.h"
#include "tests/testing/process.h"
#include "ws_edge/client/client_loop.h"
#include "ws_edge/client/node_client.h"

namespace tether::testing {

inline constexpr char kTestToken[] = "test-shared-token";  // nodes' shared gateway token
// Public API bearer tokens the cluster's registry accepts, one per scope.
inline constexpr char kAdminToken[] = "admin-token-for-tests";
inline constexpr char kReadToken[] = "read-token-for-tests";
inline constexpr char kWriteToken[] = "write-token-for-tests";
inline constexpr char kPairingToken[] = "pairing-token-for-tests";

// A client context carrying `authorization: Bearer <token>` (none when `token` is empty).
std::unique_ptr<grpc::ClientContext> AuthedContext(const std::string& token = kAdminToken,
                                                   absl::Duration timeout = absl::Seconds(10));

// GET http://127.0.0.1:port/path; the whole response (head and body), or "" on failure.
std::string HttpGet(int port, const std::string& path);
// The metrics port a process printed ("... http://host:PORT/metrics").
int MetricsPort(ChildProcess& process);
// The value of the sample `name` (with its labels) in a Prometheus scrape, or -1.
double MetricValue(const std::string& scrape, const std::string& name);

// Polls `done` until it holds or `timeout` passes.
bool Eventually(const std::function<bool()>& done, absl::Duration timeout = absl::Seconds(10));

// Streams WatchPresence into a list on its own thread. Thread-safe.
class PresenceWatcher {
 public:
  PresenceWatcher(v1::Registry::Stub& api, uint64_t from_revision,
                  const std::string& token = kAdminToken);
  ~PresenceWatcher();
  std::vector<v1::PresenceEvent> events();
  int Count(const std::string& node_id, v1::PresenceEvent::Kind kind);
  bool WaitFor(const std::string& node_id, v1::PresenceEvent::Kind kind, int count = 1,
               absl::Duration timeout = absl::Seconds(10));
  grpc::Status status();  // after the stream ended

 private:
  grpc::ClientContext ctx_;
  std::thread reader_;
  absl::Mutex mu_;
  std::vector<v1::PresenceEvent> events_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
};

struct InvokeOutcome {
  grpc::Status status;
  v1::InvokeNodeResponse response;
  std::string error_code;  // tether-error-code trailer
};

// One InvokeNode call through `api` with the write token; the caller's deadline is the
// invoke's timeout plus 5 s.
InvokeOutcome InvokeVia(v1::Registry::Stub& api, const std::string& node_id, int64_t timeout_ms,
                        const std::string& command = "system.which",
                        const std::string& params_json = R"({"bins":["sh"]})",
                        const std::string& idempotency_key = "");

// Owns the processes it starts (killed on destruction) and a node client loop. Not
// thread-safe; tests drive it from their main thread.
class Cluster {
 public:
  Cluster();
  ~Cluster();

  // Starts the registry (on `port`, 0 = any) with extra flags; returns its port. It requires
  // the API tokens above and the edge secret the cluster's edges present.
  int StartRegistry(const std::vector<std::string>& flags = {"--auto_approve"}, int port = 0);
  ChildProcess& registry() { return *registry_; }
  void StopRegistry(int sig);  // signal and reap
  // Starts another registry process (a replica on the same store, say); returns its port.
  int StartExtraRegistry(const std::string& name, const std::vector<std::string>& flags);
  ChildProcess& extra_registry(const std::string& name) { return *extra_registries_.at(name); }
  // api() and the helpers below (GetNode, Invoke, ...) call the registry on `port` from now on.
  void PointApiAt(int port);
  // Starts an edge attached to the registry; returns its WebSocket port.
  // Waits until it attached unless `wait_attached` is false (an edge the registry refuses).
  int StartEdge(const std::string& edge_id, const std::vector<std::string>& flags = {},
                bool wait_attached = true);
  ChildProcess& edge(const std::string& edge_id) { return *edges_.at(edge_id); }
  void StopEdge(const std::string& edge_id, int sig);
  int edge_port(const std::string& edge_id) { return edge_ports_.at(edge_id); }

  // Starts nginx (deploy/nginx) balancing over the given edges; returns its port.
  int StartBalancer(const std::vector<std::string>& edge_ids);
  int balancer_port() const { return balancer_port_; }
  int registry_port() const { return registry_port_; }
  const std::string& edge_secret_file() const { return edge_secret_file_; }

  v1::Registry::Stub& api() { return *api_; }
  edge::client::ClientLoop& loop() { return *loop_; }

  // A node client on `edge_id` using `creds`; started (not yet waited for).
  std::unique_ptr<edge::client::NodeClient> Node(
      edge::client::DeviceCredentials& creds, const std::string& edge_id,
      std::function<void(edge::client::NodeClientOptions&)> tweak = nullptr);
  // The same for any WebSocket port (an edge's or the balancer's).
  std::unique_ptr<edge::client::NodeClient> NodeAt(
      edge::client::DeviceCredentials& creds, int port,
      std::function<void(edge::client::NodeClientOptions&)> tweak = nullptr);
  std::unique_ptr<edge::client::NodeClient> ReadyNodeAt(edge::client::DeviceCredentials& creds,
                                                        int port);
  // A node client that answers every invoke with {"ok":true,"by":<conn id>} and is connected.
  std::unique_ptr<edge::client::NodeClient> ReadyNode(edge::client::DeviceCredentials& creds,
                                                      const std::string& edge_id);

  std::optional<v1::Node> GetNode(const std::string& node_id);
  bool Connected(const std::string& node_id);
  InvokeOutcome Invoke(const std::string& node_id, int64_t timeout_ms = 5000,
                       const std::string& command = "system.which",
                       const std::string& params_json = R"({"bins":["sh"]})",
                       const std::string& idempotency_key = "");
  uint64_t Revision();

 private:
  std::string tokens_file_;
  std::string edge_secret_file_;
  // The arguments every registry process gets, then `flags`.
  std::vector<std::string> RegistryArgs(const std::vector<std::string>& flags, int port) const;

  std::unique_ptr<ChildProcess> registry_;
  int registry_port_ = 0;
  std::map<std::string, std::unique_ptr<ChildProcess>> extra_registries_;
  std::map<std::string, std::unique_ptr<ChildProcess>> edges_;
  std::map<std::string, int> edge_ports_;
  std::unique_ptr<v1::Registry::Stub> api_;
  std::unique_ptr<ChildProcess> balancer_;
  int balancer_port_ = 0;
  std::unique_ptr<edge::client::ClientLoop> loop_;
};

}  // namespace tether::testing

#endif  // TETHER_TESTS_TESTING_CLUSTER_H_
