// EdgeLinkClient: the edge's one EdgeLink stream to the registry (the only gRPC code in the edge).
#ifndef TETHER_WS_EDGE_LINK_EDGE_LINK_CLIENT_H_
#define TETHER_WS_EDGE_LINK_EDGE_LINK_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "proto/tether/v1/edge_link.grpc.pb.h"
#include "ws_edge/core/ports.h"

namespace tether::edge {

struct LinkOptions {
  std::string target;  // registry address, host:port
  std::string edge_id;
  std::string epoch;  // fresh per process
  std::string version = "tether-edge/0.1";
  // Authentication to the registry: a shared secret (sent as x-tether-edge-secret), and/or TLS
  // with the registry's CA (PEM) and, for mutual TLS, this edge's certificate and key (PEM).
  std::string secret;
  std::string ca_pem;
  std::string cert_pem;
  std::string key_pem;
  std::string tls_server_name;  // overrides the name checked in the registry's certificate
  int64_t backoff_initial_ms = 200;
  // Capped at half the heartbeat interval of the last attach ack (see Supervise), so a link
  // that comes back well within the lease re-attaches before the lease lapses.
  int64_t backoff_max_ms = 5'000;
};

// What the link reports, delivered on the edge's loop through `post`.
struct LinkCallbacks {
  std::function<void(std::function<void()>)> post;  // runs a task on the edge loop
  std::function<void()> on_up;                      // attached (send the resync now)
  std::function<void()> on_down;                    // the stream broke
  std::function<void(const v1::RegistryMessage&)> on_message;
};

// Keeps one attached stream alive: attach with edge id and epoch, heartbeats at the interval
// the registry asks for, and reconnection with exponential backoff and full jitter. Owns its
// channel, the current stream and a supervisor thread. Thread-safe.
class EdgeLinkClient final : public RegistryLink {
 public:
  EdgeLinkClient(const LinkOptions& options, LinkCallbacks callbacks);
  ~EdgeLinkClient() override;

  void Start();
  // Flushes what is queued (bounded wait), then ends the stream and the thread.
  void Stop();
  // Queues on the attached stream. False when none is attached, when bulk (a result or an
  // event) is over its bound, or when the queue overflowed: then the stream is cancelled and
  // the resync on the next one repairs what was lost with it.
  bool Send(const v1::EdgeMessage& message) override ABSL_LOCKS_EXCLUDED(mu_);
  bool attached() ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t reconnects() ABSL_LOCKS_EXCLUDED(mu_);
  // Streams cancelled because the registry read too slowly for what had to be sent.
  uint64_t overflows() const { return overflows_.load(); }

  class Stream;  // one call's reactor; defined in the .cc

 private:
  void Supervise();
  // On the loop: true for events of a stream older than the newest one that came up.
  bool StaleOnLoop(uint64_t seq) const;
  void OnAttached(Stream* stream) ABSL_LOCKS_EXCLUDED(mu_);
  void OnStreamDone(Stream* stream) ABSL_LOCKS_EXCLUDED(mu_);

  const LinkOptions options_;
  const LinkCallbacks callbacks_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::EdgeLink::Stub> stub_;

  absl::Mutex mu_;
  std::shared_ptr<Stream> stream_ ABSL_GUARDED_BY(mu_);  // shared: Stop() flushes a copy
  bool attached_ ABSL_GUARDED_BY(mu_) = false;
  bool stream_done_ ABSL_GUARDED_BY(mu_) = false;
  bool just_attached_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int64_t heartbeat_ms_ ABSL_GUARDED_BY(mu_) = 2'500;
  std::atomic<int64_t> heartbeat_from_ack_{2'500};  // written by the stream's read path
  uint64_t reconnects_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t stream_seq_ ABSL_GUARDED_BY(mu_) = 0;  // numbers the streams in creation order
  uint64_t loop_stream_seq_ = 0;  // newest stream that came up; touched on the loop only
  std::atomic<uint64_t> overflows_{0};
  std::thread supervisor_;
  std::mt19937_64 rng_;
};

}  // namespace tether::edge

#endif  // TETHER_WS_EDGE_LINK_EDGE_LINK_CLIENT_H_
