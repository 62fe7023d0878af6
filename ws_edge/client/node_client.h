// NodeClient: one node WebSocket speaking OpenClaw's node protocol like the headless node host,
// for tests and the benchmark (a well-behaved node, or a hostile one sending raw frames).
#ifndef TETHER_WS_EDGE_CLIENT_NODE_CLIENT_H_
#define TETHER_WS_EDGE_CLIENT_NODE_CLIENT_H_

#include <openssl/evp.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "ws_edge/client/client_loop.h"
#include "ws_edge/client/connect_request.h"
#include "ws_edge/protocol/device_identity.h"
#include "ws_edge/protocol/frame.h"
#include "ws_edge/protocol/hello.h"

namespace tether::edge::client {

// A node's identity: its key, a persisted instance id and the device token from its last
// hello-ok. Several NodeClients may share one (sockets of the same node, e.g. a reconnect while
// the old socket is still open). Owned by the caller; must outlive the clients that use it.
// Thread-safe.
class DeviceCredentials {
 public:
  DeviceCredentials();  // a fresh key
  explicit DeviceCredentials(protocol::Ed25519Identity identity);
  ~DeviceCredentials();
  DeviceCredentials(const DeviceCredentials&) = delete;
  DeviceCredentials& operator=(const DeviceCredentials&) = delete;

  const protocol::Ed25519Identity& identity() const { return identity_; }
  const std::string& node_id() const { return identity_.device_id(); }
  const std::string& instance_id() const { return instance_id_; }

  std::optional<std::string> device_token() const ABSL_LOCKS_EXCLUDED(mu_);
  void set_device_token(std::optional<std::string> token) ABSL_LOCKS_EXCLUDED(mu_);

  // The same as identity().Sign(message), but the OpenSSL key is built from the seed once, on
  // first use, and kept (that derivation costs as much as the signature itself).
  std::string Sign(absl::string_view message) const ABSL_LOCKS_EXCLUDED(key_mu_);

 private:
  const protocol::Ed25519Identity identity_;
  const std::string instance_id_;
  mutable absl::Mutex mu_;
  std::optional<std::string> device_token_ ABSL_GUARDED_BY(mu_);
  mutable absl::Mutex key_mu_;
  mutable EVP_PKEY* key_ ABSL_GUARDED_BY(key_mu_) = nullptr;  // owned; built lazily
};

// The node's answer to one node.invoke.request.
struct InvokeReply {
  bool ok = true;
  std::optional<std::string> payload_json;  // sent as payloadJSON when ok
  std::string error_code;                   // sent as error{code, message} when !ok
  std::string error_message;
  bool defer = false;  // send nothing now; answer later with SendInvokeResult, or never

  static InvokeReply Ok(std::optional<std::string> payload_json = std::nullopt);
  static InvokeReply Error(std::string code, std::string message);
  static InvokeReply Deferred();
};

using InvokeHandler = std::function<InvokeReply(const protocol::InvokeRequest&)>;

// How the socket ended. `code`/`reason` are what the server sent in its close frame (1006 when
// the connection dropped without one); `error` describes a failure to connect at all.
struct CloseInfo {
  int code = 0;
  std::string reason;
  bool closed_by_client = false;
  std::string error;
};

struct NodeClientOptions {
  std::string host = "127.0.0.1";  // with source_address: a numeric address
  uint16_t port = 18789;
  // Local address the socket binds to before connecting (e.g. "127.0.0.2", so that a fleet
  // spread over several source addresses does not run out of ephemeral ports); empty: the
  // kernel chooses.
  std::string source_address;
  std::string path = "/";
  std::optional<std::string> shared_token;  // else the stored device token is used
  ConnectRequestOptions connect;
  // Send `connect` as soon as the challenge arrives. Off: the test drives the handshake with
  // SendText/SendConnect (hostile-client tests).
  bool auto_connect = true;
  // Keep every received frame, event, response and invoke request for inspection (the
  // Wait/getters that need them fail with FailedPrecondition otherwise); a benchmark fleet turns
  // it off. Counters, hello, error responses and close info are always kept.
  bool record_frames = true;
  // Runs on the loop thread (so it delays every client of that loop while it runs). Default:
  // answer ok without a payload.
  InvokeHandler on_invoke;
  std::function<void()> on_ready;                      // after hello-ok, on the loop thread
  std::function<void(const Challenge&)> on_challenge;  // the first one, on the loop thread
  std::function<void(const CloseInfo&)> on_closed;     // on the loop thread
};

// One socket of one node, driven by a ClientLoop; a reconnect is a new NodeClient with the same
// DeviceCredentials. All websocketpp work happens on the loop thread; public methods are
// thread-safe and may be called from any thread, but the blocking Wait*/Connect/Open helpers
// must not be called on the loop thread (they return FailedPrecondition there), and the client
// must be destroyed off the loop thread.
//
// PauseReading() simulates a slow consumer by pausing websocketpp's reads on the socket: frames
// stay in the kernel buffers, the TCP window closes and the server's send buffer grows. While
// paused the client also cannot see a close frame; ResumeReading() drains what was queued. The
// read already in flight when pausing still completes, so one more buffer (up to 4 KiB) of
// frames can arrive after PauseReading() returns.
class NodeClient {
 public:
  enum class State { kIdle, kConnecting, kOpen, kHandshaking, kReady, kRefused, kClosed };

  // `loop` and `credentials` are not owned and must outlive this client.
  NodeClient(ClientLoop& loop, DeviceCredentials& credentials, NodeClientOptions options);
  // Closes the socket (1000) if it is open and detaches it from the loop.
  ~NodeClient();
  NodeClient(const NodeClient&) = delete;
  NodeClient& operator=(const NodeClient&) = delete;

  // Opens the socket without waiting; the handshake follows if auto_connect.
  void Start();
  // Start() if needed, then waits until the WebSocket is open.
  absl::Status Open(absl::Duration timeout);
  // Start() if needed, then waits for hello-ok. A refusal returns the server's error as a status
  // ("<CODE>: <message> [<details.code>]"; INVALID_REQUEST -> InvalidArgument, NOT_PAIRED ->
  // PermissionDenied, UNAVAILABLE -> Unavailable); connect_error() has the full ErrorShape.
  absl::Status Connect(absl::Duration timeout);
  // Start() if needed, then waits for connect.challenge.
  absl::StatusOr<Challenge> WaitForChallenge(absl::Duration timeout);

  // Raw text frame, sent as is.
  absl::Status SendText(const std::string& text);
  // `req` frame with a fresh "<n>:<uuid>" id; returns the id.
  absl::StatusOr<std::string> SendRequest(absl::string_view method, const nlohmann::json& params);
  // A connect request with the given params, tracked as this socket's handshake.
  absl::StatusOr<std::string> SendConnect(const nlohmann::json& params);
  absl::StatusOr<std::string> SendNodeEvent(absl::string_view event,
                                            std::optional<std::string> payload_json);
  // node.invoke.result for `request` (nodeId echoed from the request, as the node host does).
  absl::StatusOr<std::string> SendInvokeResult(const protocol::InvokeRequest& request,
                                               const InvokeReply& reply);
  absl::Status Close(int code = 1000, const std::string& reason = "");
  void PauseReading();
  void ResumeReading();

  absl::StatusOr<protocol::Frame> WaitForResponse(const std::string& id, absl::Duration timeout);
  // The `occurrence`-th event of that name (1-based); needs record_frames.
  absl::StatusOr<protocol::Frame> WaitForEvent(absl::string_view event, absl::Duration timeout,
                                               int occurrence = 1);
  absl::Status WaitForInvokeCount(int count, absl::Duration timeout);
  absl::StatusOr<CloseInfo> WaitForClose(absl::Duration timeout);

  const std::string& node_id() const { return credentials_.node_id(); }
  State state() const;
  std::optional<nlohmann::json> hello() const;
  std::string conn_id() const;  // server.connId from hello-ok
  std::optional<Challenge> challenge() const;
  std::optional<protocol::ErrorShape> connect_error() const;
  std::vector<protocol::ErrorShape> error_responses() const;  // every res with ok:false
  std::vector<std::string> received_frames() const;           // raw text, if record_frames
  std::vector<protocol::InvokeRequest> invoke_requests() const;
  int invoke_requests_received() const;
  int frames_received() const;
  std::optional<CloseInfo> close_info() const;

 private:
  // Loop-thread side.
  void StartOnLoop();
  absl::Status SendOnLoop(const std::string& text);
  void OnOpen();
  void OnFail();
  void OnClose();
  void OnMessage(const std::string& text);
  void OnChallenge(const protocol::Frame& frame);
  void OnResponse(protocol::Frame frame);
  void OnInvokeRequest(const protocol::Frame& frame);
  void FinishClose(const CloseInfo& info);

  std::string NextRequestId() ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status Await(const std::function<bool()>& done, absl::Duration timeout,
                     absl::string_view what) ABSL_LOCKS_EXCLUDED(mu_);

  ClientLoop& loop_;                // not owned; must outlive this
  DeviceCredentials& credentials_;  // not owned; must outlive this
  const NodeClientOptions options_;
  WsClient::connection_ptr con_;  // loop thread only (a shared_ptr because websocketpp's is)
  bool close_requested_ = false;  // loop thread only

  mutable absl::Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_) = State::kIdle;
  int next_request_ ABSL_GUARDED_BY(mu_) = 1;
  std::string connect_request_id_ ABSL_GUARDED_BY(mu_);
  std::optional<Challenge> challenge_ ABSL_GUARDED_BY(mu_);
  std::optional<nlohmann::json> hello_ ABSL_GUARDED_BY(mu_);
  std::string conn_id_ ABSL_GUARDED_BY(mu_);
  std::optional<protocol::ErrorShape> connect_error_ ABSL_GUARDED_BY(mu_);
  std::vector<protocol::ErrorShape> error_responses_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> frames_ ABSL_GUARDED_BY(mu_);
  std::vector<protocol::Frame> events_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, protocol::Frame> responses_ ABSL_GUARDED_BY(mu_);
  std::vector<protocol::InvokeRequest> invokes_ ABSL_GUARDED_BY(mu_);
  int invoke_count_ ABSL_GUARDED_BY(mu_) = 0;
  int frame_count_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<CloseInfo> close_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tether::edge::client

#endif  // TETHER_WS_EDGE_CLIENT_NODE_CLIENT_H_
