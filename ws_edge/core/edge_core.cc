#include "ws_edge/core/edge_core.h"

#include <algorithm>
#include <utility>

#include "common/ids.h"
#include "common/log.h"
#include "ws_edge/protocol/connect_params.h"
#include "ws_edge/protocol/frame.h"
#include "ws_edge/protocol/gateway_methods.h"
#include "ws_edge/protocol/hello.h"

namespace tether::edge {
namespace {

using nlohmann::json;
using protocol::ErrorShape;

constexpr int kCloseTryAgainLater = 1013;
constexpr int kCloseServiceRestart = 1012;

ErrorShape Unavailable(std::string message) {
  ErrorShape e;
  e.code = std::string(protocol::kUnavailable);
  e.message = std::move(message);
  e.retryable = true;
  e.retry_after_ms = 1000;
  return e;
}

ErrorShape InvalidRequest(std::string message) {
  ErrorShape e;
  e.code = std::string(protocol::kInvalidRequest);
  e.message = std::move(message);
  return e;
}

// The id to answer a frame that is not a valid request with: its own, if it has a usable one,
// else "invalid" (as the Gateway does; ids are never empty).
std::string ReplyId(const std::string& text) {
  auto value = protocol::ParseJson(text);
  if (value.ok() && value->is_object()) {
    auto id = value->find("id");
    if (id != value->end() && id->is_string() && !id->get_ref<const std::string&>().empty()) {
      return id->get<std::string>();
    }
  }
  return "invalid";
}

}  // namespace

EdgeCore::EdgeCore(const EdgeOptions& options, Downstream& downstream, RegistryLink& link,
                   const common::Clock& clock, Offload* offload)
    : options_(options),
      downstream_(downstream),
      link_(link),
      clock_(clock),
      offload_(offload != nullptr ? *offload : inline_offload_),
      started_ms_(clock.NowMs()),
      limiter_(options.handshake_limits),
      rng_(options.random_seed != 0 ? options.random_seed : std::random_device{}()) {}

void EdgeCore::EraseClosed() {
  // Erasing cannot call back into the core, but take the list first all the same.
  std::vector<uint64_t> closed = std::move(closed_);
  closed_.clear();
  for (uint64_t socket : closed) {
    auto it = sockets_.find(socket);
    if (it == sockets_.end()) continue;
    by_conn_id_.erase(it->second.conn_id);
    sockets_.erase(it);
  }
  stats_.sockets.store(static_cast<int64_t>(sockets_.size()));
  if (draining_ && !closed.empty()) {
    Entry entry(*this);  // closes made by the step are erased when it ends (and step again)
    DrainStep(clock_.NowMs());
  }
}

EdgeCore::Conn* EdgeCore::Find(uint64_t socket) {
  auto it = sockets_.find(socket);
  return it == sockets_.end() ? nullptr : &it->second;
}

EdgeCore::Conn* EdgeCore::FindByConnId(const std::string& conn_id) {
  auto it = by_conn_id_.find(conn_id);
  return it == by_conn_id_.end() ? nullptr : Find(it->second);
}

bool EdgeCore::SendFrame(Conn& conn, const std::string& text) {
  if (conn.state == State::kClosing) return false;
  if (downstream_.Send(conn.socket, text)) return true;
  CloseSlowConsumer(conn.socket);
  return false;
}

void EdgeCore::CloseSlowConsumer(uint64_t socket) {
  Entry entry(*this);
  Conn* conn = Find(socket);
  if (conn == nullptr || conn->state == State::kClosing) return;
  stats_.slow_consumers_closed.Add();
  common::Log(
      common::LogLevel::kWarn, "slow_consumer_closed",
      {{"conn_id", conn->conn_id}, {"node_id", conn->node_id}, {"remote", conn->remote_addr}});
  CloseConn(*conn, protocol::kClosePolicyViolation, "slow consumer");
}

void EdgeCore::CloseConn(Conn& conn, int code, const std::string& reason) {
  if (conn.state == State::kClosing) return;
  // Whether the registry has heard of it is remembered in register_request.
  if (conn.state == State::kLive) stats_.live.fetch_sub(1);
  SetState(conn, State::kClosing);
  downstream_.Close(conn.socket, code, reason);
}

void EdgeCore::SetState(Conn& conn, State state) {
  if (conn.state == State::kRegistering) --registering_;
  if (state == State::kRegistering) ++registering_;
  conn.state = state;
}

// --- Sockets ---------------------------------------------------------------------------------

void EdgeCore::OnOpen(uint64_t socket, const std::string& remote_addr, bool loopback) {
  Entry entry(*this);
  if (draining_) {
    downstream_.Close(socket, kCloseServiceRestart, "service restart");
    return;
  }
  if ((options_.max_connections > 0 && sockets_.size() >= options_.max_connections) ||
      (options_.max_pending_handshakes > 0 &&
       pending_handshakes_ >= options_.max_pending_handshakes)) {
    stats_.connections_refused.Add();
    downstream_.Close(socket, kCloseTryAgainLater, "edge at capacity; try again later");
    return;
  }
  const int64_t now = clock_.NowMs();
  if (!limiter_.Allow(LimitKeyOf(remote_addr), now)) {
    // Cheapest possible refusal: no challenge, no state kept. 1013 makes real nodes retry later.
    stats_.handshakes_rate_limited.Add();
    common::Log(common::LogLevel::kDebug, "handshake_rate_limited", {{"remote", remote_addr}});
    downstream_.Close(socket, kCloseTryAgainLater, "too many handshakes from this address");
    return;
  }
  Conn& conn = sockets_[socket];
  ++pending_handshakes_;
  conn.socket = socket;
  conn.conn_id = common::UniqueId();  // ours, never the client's
  conn.nonce = common::RandomUuid();
  conn.opened_ms = clock_.NowMs();
  conn.remote_addr = remote_addr;
  conn.loopback = loopback;
  by_conn_id_[conn.conn_id] = socket;
  stats_.sockets.store(static_cast<int64_t>(sockets_.size()));
  SendFrame(conn, protocol::EncodeEvent("connect.challenge", protocol::BuildConnectChallenge(
                                                                 conn.nonce, conn.opened_ms)));
}

void EdgeCore::OnMessage(uint64_t socket, const std::string& text) {
  Entry entry(*this);
  Conn* conn = Find(socket);
  if (conn == nullptr) return;
  switch (conn->state) {
    case State::kAwaitConnect:
      HandleConnect(*conn, text);
      return;
    case State::kVerifying:
    case State::kRegistering: {
      auto frame = protocol::ParseFrame(text);
      if (frame.ok() && frame->type == protocol::FrameType::kRequest) {
        SendFrame(*conn, protocol::EncodeResponseError(
                             frame->id, InvalidRequest("handshake in progress: wait for hello")));
      }
      return;
    }
    case State::kLive:
      HandleLiveFrame(*conn, text);
      return;
    case State::kClosing:
      return;
  }
}

void EdgeCore::OnClose(uint64_t socket) {
  Entry entry(*this);
  Conn* conn = Find(socket);
  if (conn == nullptr || conn->gone) return;
  // Results this socket delivered were forwarded as they arrived, so on the ordered stream
  // they reach the registry before this close does.
  if (conn->register_request != 0 && link_up_) {
    v1::EdgeMessage m;
    m.mutable_closed()->set_conn_id(conn->conn_id);
    SendLink(m);
  }
  if (conn->state == State::kLive) stats_.live.fetch_sub(1);
  SetState(*conn, State::kClosing);  // nothing more goes to it
  conn->gone = true;
  if (conn->pending_handshake) {
    conn->pending_handshake = false;
    --pending_handshakes_;
  }
  closed_.push_back(socket);  // erased by the outermost Entry (this one, if not nested)
}

void EdgeCore::Reject(Conn& conn, const protocol::HandshakeRejection& rejection) {
  stats_.handshakes_rejected.Add();
  limiter_.ChargeFailure(LimitKeyOf(conn.remote_addr), clock_.NowMs());
  const nlohmann::json& d = rejection.error.details;
  const std::string detail = d.is_object() && d.contains("code") && d["code"].is_string()
                                 ? d["code"].get<std::string>()
                                 : "";
  common::Log(common::LogLevel::kInfo, "handshake_rejected",
              {{"conn_id", conn.conn_id},
               {"remote", conn.remote_addr},
               {"code", rejection.error.code},
               {"detail", detail},
               {"node_id", conn.node_id}});
  if (rejection.send_response) {
    SendFrame(conn, protocol::EncodeResponseError(rejection.request_id, rejection.error));
  }
  CloseConn(conn, rejection.close_code, rejection.close_reason);
}

void EdgeCore::RefuseRetryable(Conn& conn, const std::string& request_id, const std::string& why,
                               int64_t retry_after_ms, const std::string& close_reason) {
  ErrorShape e;
  e.code = std::string(protocol::kUnavailable);
  e.message = why;
  e.retryable = true;
  e.retry_after_ms = retry_after_ms;
  if (!request_id.empty()) SendFrame(conn, protocol::EncodeResponseError(request_id, e));
  CloseConn(conn, kCloseTryAgainLater, close_reason);
}

void EdgeCore::RefuseUnavailable(Conn& conn, const std::string& request_id,
                                 const std::string& why) {
  stats_.handshakes_unavailable.Add();
  RefuseRetryable(conn, request_id, why, 1000, "registry unavailable");
}

void EdgeCore::HandleConnect(Conn& conn, const std::string& text) {
  // A flood from many addresses must not queue unbounded work ahead of honest nodes.
  constexpr int64_t kMaxVerifying = 4096;
  if (verifying_ >= kMaxVerifying) {
    stats_.handshakes_rate_limited.Add();
    CloseConn(conn, kCloseTryAgainLater, "edge busy; try again later");
    return;
  }
  if (options_.max_registrations_in_flight > 0 &&
      static_cast<size_t>(verifying_ + registering_) >= options_.max_registrations_in_flight) {
    // The registry is behind: refuse before spending a signature check on it. Jittered, so
    // the refused nodes do not come back as one herd. Only a well-formed connect is told to
    // retry: a malformed one goes on to its own error (found before any signature check).
    auto frame = protocol::ParseFrame(text);
    if (frame.ok() && frame->type == protocol::FrameType::kRequest && frame->method == "connect" &&
        protocol::ParseConnectParams(frame->params).ok()) {
      stats_.handshakes_busy.Add();
      std::uniform_int_distribution<int64_t> jitter(0, 1000);
      RefuseRetryable(conn, frame->id, "edge busy: the registry is behind on registrations; retry",
                      1000 + jitter(rng_), "edge busy; try again later");
      return;
    }
  }
  ++verifying_;
  SetState(conn, State::kVerifying);
  // The check runs off the loop: copy what it reads.
  struct Job {
    std::string text;
    std::string nonce;
    int64_t now_ms = 0;
    std::optional<std::string> token;
    protocol::HandshakeResult result;
  };
  auto job = std::make_shared<Job>();
  job->text = text;
  job->nonce = conn.nonce;
  job->now_ms = clock_.NowMs();
  job->token = options_.shared_token;
  offload_.Run(
      [job] {
        protocol::HandshakeConfig config;
        config.challenge_nonce = job->nonce;
        config.now_ms = job->now_ms;
        if (job->token.has_value()) config.shared_token = *job->token;
        job->result = protocol::CheckHandshake(job->text, config);
      },
      [this, job, socket = conn.socket, conn_id = conn.conn_id] {
        Entry entry(*this);  // a posted task: a public entry of its own
        --verifying_;
        FinishConnect(socket, conn_id, std::move(job->result));
      });
}

void EdgeCore::FinishConnect(uint64_t socket, const std::string& conn_id,
                             protocol::HandshakeResult result) {
  Conn* found = Find(socket);
  if (found == nullptr || found->conn_id != conn_id || found->state != State::kVerifying) return;
  Conn& conn = *found;
  if (auto* rejection = std::get_if<protocol::HandshakeRejection>(&result)) {
    Reject(conn, *rejection);
    return;
  }
  conn.accepted = std::make_unique<protocol::HandshakeAccepted>(
      std::move(std::get<protocol::HandshakeAccepted>(result)));
  conn.node_id = conn.accepted->node_id;
  if (!link_up_ || draining_) {
    RefuseUnavailable(conn, conn.accepted->request_id,
                      draining_ ? "edge is draining; reconnect" : "registry link is down");
    return;
  }
  SetState(conn, State::kRegistering);
  conn.register_request = next_request_++;
  v1::EdgeMessage m;
  FillOpened(conn, m.mutable_opened());
  conn.opened = m.opened().SerializeAsString();  // what a resync reports once it is live
  SendLink(m);
}

void EdgeCore::FillOpened(const Conn& conn, v1::ConnectionOpened* o) const {
  const protocol::HandshakeAccepted& a = *conn.accepted;
  o->set_request_id(conn.register_request);
  o->set_conn_id(conn.conn_id);
  o->set_node_id(a.node_id);
  o->set_public_key(a.public_key);
  o->set_device_token(a.device_token);
  o->set_shared_token_ok(a.token_check != protocol::TokenCheck::kDeviceTokenPending);
  o->set_remote_addr(conn.remote_addr);
  o->set_loopback(conn.loopback);
  v1::ClientInfo* c = o->mutable_client();
  const protocol::ClientInfo& ci = a.params.client;
  c->set_client_id(ci.id);
  c->set_display_name(ci.display_name.value_or(""));
  c->set_version(ci.version);
  c->set_platform(ci.platform);
  c->set_device_family(ci.device_family.value_or(""));
  c->set_mode(ci.mode);
  c->set_instance_id(ci.instance_id.value_or(""));
  for (const auto& x : a.params.caps) c->add_caps(x);
  for (const auto& x : a.params.commands) c->add_commands(x);
}

void EdgeCore::HandleLiveFrame(Conn& conn, const std::string& text) {
  auto frame = protocol::ParseFrame(text);
  if (!frame.ok()) {
    SendFrame(conn, protocol::EncodeResponseError(
                        ReplyId(text), InvalidRequest("invalid request frame: " +
                                                      std::string(frame.status().message()))));
    return;
  }
  if (frame->type != protocol::FrameType::kRequest) {
    SendFrame(conn, protocol::EncodeResponseError(
                        frame->id.empty() ? "invalid" : frame->id,
                        InvalidRequest("invalid request frame: nodes may only send req frames")));
    return;
  }
  const std::string& method = frame->method;
  // As the Gateway's flood guard: more than this many unauthorized calls in a row close the
  // socket (1008); any other request resets the count.
  // (The served methods first: no table lookup on the invoke path.)
  constexpr int kMaxUnauthorizedInARow = 10;
  const bool unauthorized = method != "node.invoke.result" && method != "node.event" &&
                            protocol::IsGatewayOperatorMethod(method);
  if (!unauthorized) conn.unauthorized_in_a_row = 0;
  if (method == "node.invoke.result") {
    HandleInvokeResult(conn, frame->id, frame->params);
  } else if (method == "node.event") {
    auto event = protocol::ParseNodeEventParams(frame->params);
    if (!event.ok()) {
      SendFrame(conn, protocol::EncodeResponseError(
                          frame->id, InvalidRequest("invalid node.event params: " +
                                                    std::string(event.status().message()))));
      return;
    }
    // The registry only notes that the node is alive (last seen): send it the event's name,
    // not its payload (up to 25 MiB), and at most once a second per connection.
    const int64_t now = clock_.NowMs();
    if (now >= conn.next_event_forward_ms) {
      v1::EdgeMessage m;
      m.mutable_event()->set_conn_id(conn.conn_id);
      m.mutable_event()->set_node_id(conn.node_id);
      m.mutable_event()->set_event(event->event);
      if (!SendLink(m)) {
        SendFrame(conn, protocol::EncodeResponseError(frame->id,
                                                      Unavailable("registry link busy or down")));
        return;
      }
      conn.next_event_forward_ms = now + 1000;
    }
    SendFrame(conn, protocol::EncodeResponseOk(frame->id, json{{"ok", true}}));
  } else if (!unauthorized) {
    // A node method the edge does not serve (what the node host expects from a gateway
    // without it: it stops asking), or a method the Gateway does not have.
    SendFrame(conn, protocol::EncodeResponseError(frame->id,
                                                  InvalidRequest("unknown method: " + method)));
  } else {
    // (A second connect too: the Gateway answers it the same way.)
    if (!SendFrame(conn, protocol::EncodeResponseError(
                             frame->id, InvalidRequest("unauthorized role: node")))) {
      return;
    }
    if (++conn.unauthorized_in_a_row > kMaxUnauthorizedInARow) {
      CloseConn(conn, protocol::kClosePolicyViolation, "repeated unauthorized calls");
    }
  }
}

void EdgeCore::HandleInvokeResult(Conn& conn, const std::string& frame_id, const json& params) {
  auto result = protocol::ParseInvokeResultParams(params);
  if (!result.ok()) {
    SendFrame(conn, protocol::EncodeResponseError(
                        frame_id, InvalidRequest("invalid node.invoke.result params: " +
                                                 std::string(result.status().message()))));
    return;
  }
  if (result->node_id != conn.node_id) {
    SendFrame(conn, protocol::EncodeResponseError(frame_id, InvalidRequest("nodeId mismatch")));
    return;
  }
  // Only an invoke delivered on this socket and still open can be settled by the registry:
  // answer the rest here instead of sending a 25 MiB payload up the link to be ignored.
  if (!conn.invokes.contains(result->id) || !link_up_) {
    SendFrame(conn, protocol::EncodeResponseOk(frame_id, json{{"ok", true}, {"ignored", true}}));
    return;
  }
  const uint64_t request = next_request_++;
  v1::EdgeMessage m;
  v1::InvokeResult* r = m.mutable_result();
  r->set_request_id(request);
  r->set_invoke_id(result->id);
  r->set_node_id(result->node_id);
  r->set_conn_id(conn.conn_id);  // the socket it arrived on, never the payload
  r->set_ok(result->ok);
  r->set_payload_json(result->payload_json.value_or(""));
  r->set_error_code(result->error_code.value_or(""));
  r->set_error_message(result->error_message.value_or(""));
  if (!SendLink(m)) {
    // Not forwarded (link down or its queue full): the node may retry, and its retry is
    // forwarded (the invoke stays open here).
    SendFrame(conn,
              protocol::EncodeResponseError(frame_id, Unavailable("registry link busy or down")));
    return;
  }
  conn.invokes.erase(result->id);
  awaiting_ack_[request] = AwaitingAck{conn.socket, frame_id};
  stats_.results_forwarded.Add();
}

// --- Registry --------------------------------------------------------------------------------

bool EdgeCore::SendLink(const v1::EdgeMessage& message) { return link_up_ && link_.Send(message); }

void EdgeCore::ReportUndeliverable(const std::string& invoke_id, const std::string& conn_id,
                                   const std::string& reason) {
  v1::EdgeMessage u;
  u.mutable_undeliverable()->set_invoke_id(invoke_id);
  u.mutable_undeliverable()->set_conn_id(conn_id);
  u.mutable_undeliverable()->set_reason(reason);
  SendLink(u);
}

void EdgeCore::OnLinkUp() {
  Entry entry(*this);
  link_up_ = true;
  // First on the new stream, in chunks: every one but the last says more follow.
  v1::EdgeMessage m;
  size_t bytes = 0;
  for (const auto& [socket, conn] : sockets_) {
    if (conn.state != State::kLive) continue;
    if (bytes >= static_cast<size_t>(options_.resync_chunk_bytes)) {
      m.mutable_resync()->set_more(true);
      link_.Send(m);
      m.mutable_resync()->Clear();
      bytes = 0;
    }
    v1::LiveConnection* l = m.mutable_resync()->add_connections();
    l->mutable_opened()->ParseFromString(conn.opened);
    l->set_generation(conn.generation);
    l->set_superseded(conn.superseded);
    bytes += conn.opened.size() + 16;
  }
  m.mutable_resync();  // (an edge with no live connection still resyncs: it has none)
  link_.Send(m);
}

void EdgeCore::OnLinkDown() {
  Entry entry(*this);
  link_up_ = false;
  for (auto& [socket, conn] : sockets_) {
    if (conn.state == State::kRegistering) {
      RefuseUnavailable(conn, conn.accepted->request_id, "registry link lost; reconnect");
    } else if (conn.state == State::kLive && !conn.invokes.empty()) {
      // The registry failed these (DISCONNECTED) when the stream broke, and no answer can
      // reach it: tell the node to stop working on them.
      for (const std::string& invoke_id : conn.invokes) {
        SendFrame(conn,
                  protocol::EncodeEvent("node.invoke.cancel",
                                        json{{"invokeId", invoke_id}, {"nodeId", conn.node_id}}));
      }
      conn.invokes.clear();
    }
  }
  // The registry fails invokes in flight on a lost link, so these results cannot count.
  for (const auto& [request, ack] : awaiting_ack_) {
    if (Conn* conn = Find(ack.socket)) {
      SendFrame(*conn,
                protocol::EncodeResponseOk(ack.frame_id, json{{"ok", true}, {"ignored", true}}));
    }
  }
  awaiting_ack_.clear();
}

void EdgeCore::OnRegistryMessage(const v1::RegistryMessage& m) {
  Entry entry(*this);
  switch (m.msg_case()) {
    case v1::RegistryMessage::kRegisterOutcome:
      HandleRegisterOutcome(m.register_outcome());
      return;
    case v1::RegistryMessage::kInvoke: {
      Conn* conn = FindByConnId(m.invoke().conn_id());
      if (conn == nullptr || conn->state == State::kClosing) {
        stats_.invokes_undeliverable.Add();
        ReportUndeliverable(m.invoke().invoke_id(), m.invoke().conn_id(),
                            "connection closed on the edge");
        return;
      }
      DeliverInvoke(*conn, m.invoke());
      return;
    }
    case v1::RegistryMessage::kCancel: {
      Conn* conn = FindByConnId(m.cancel().conn_id());
      if (conn == nullptr) return;
      // Not yet sent (queued behind hello-ok): it never will be, and the node has nothing
      // to stop.
      auto queued = std::find_if(
          conn->queued.begin(), conn->queued.end(),
          [&](const v1::InvokeRequest& q) { return q.invoke_id() == m.cancel().invoke_id(); });
      if (queued != conn->queued.end()) {
        conn->queued.erase(queued);
        return;
      }
      if (conn->invokes.erase(m.cancel().invoke_id()) == 0) return;
      SendFrame(*conn, protocol::EncodeEvent("node.invoke.cancel",
                                             json{{"invokeId", m.cancel().invoke_id()},
                                                  {"nodeId", m.cancel().node_id()}}));
      return;
    }
    case v1::RegistryMessage::kClose: {
      Conn* conn = FindByConnId(m.close().conn_id());
      if (conn == nullptr) return;
      const std::string& reason = m.close().reason();
      common::Log(reason == "superseded" ? common::LogLevel::kDebug : common::LogLevel::kInfo,
                  "connection_closed_by_registry",
                  {{"conn_id", conn->conn_id}, {"node_id", conn->node_id}, {"reason", reason}});
      if (reason == "superseded") {
        stats_.superseded_closed.Add();
        CloseConn(*conn, kCloseReplaced, "replaced");
      } else if (reason == "revoked") {
        CloseConn(*conn, protocol::kClosePolicyViolation, "device revoked");
      } else {
        CloseConn(*conn, kCloseServiceRestart, reason);
      }
      return;
    }
    case v1::RegistryMessage::kSuperseded: {
      Conn* conn = FindByConnId(m.superseded().conn_id());
      if (conn == nullptr) return;
      conn->superseded = true;
      // Closed by the grace at the latest, even if the registry's close never comes; at once
      // when nothing of its own is in flight.
      conn->retire_at_ms = clock_.NowMs() + m.superseded().grace_ms();
      if (conn->invokes.empty()) {
        stats_.superseded_closed.Add();
        CloseConn(*conn, kCloseReplaced, "replaced");
      }
      return;
    }
    case v1::RegistryMessage::kResultAck:
      AnswerAck(m.result_ack().request_id(), m.result_ack().ignored());
      return;
    case v1::RegistryMessage::kEvent: {
      Conn* conn = FindByConnId(m.event().conn_id());
      if (conn != nullptr && conn->state == State::kLive) {
        SendFrame(*conn, protocol::EncodeEventRaw(
                             m.event().event(),
                             m.event().payload_json().empty() ? "null" : m.event().payload_json()));
      }
      return;
    }
    case v1::RegistryMessage::kAttachAck:
    case v1::RegistryMessage::kResyncAck:
    case v1::RegistryMessage::MSG_NOT_SET:
      return;
  }
}

void EdgeCore::HandleRegisterOutcome(const v1::RegisterOutcome& o) {
  Conn* conn = FindByConnId(o.conn_id());
  if (conn == nullptr || conn->state != State::kRegistering ||
      conn->register_request != o.request_id()) {
    return;  // the socket went away meanwhile; its close is already on its way
  }
  const protocol::HandshakeAccepted& a = *conn->accepted;
  if (!o.granted()) {
    if (o.details_code() == "PAIRING_REQUIRED") {
      Reject(*conn, protocol::PairingRequiredRejection(a.request_id, o.pairing_request_id(),
                                                       "not-paired"));
    } else if (o.details_code() == "AUTH_DEVICE_TOKEN_MISMATCH") {
      Reject(*conn, protocol::DeviceTokenRejection(a));
    } else if (o.error_code() == "UNAVAILABLE" || o.error_code().empty()) {
      RefuseUnavailable(*conn, a.request_id, "registry refused: " + o.error_message());
    } else {
      protocol::HandshakeRejection r;
      r.request_id = a.request_id;
      r.error.code = o.error_code();
      r.error.message = o.error_message();
      if (!o.details_code().empty()) r.error.details = json{{"code", o.details_code()}};
      r.close_reason = protocol::TruncateCloseReason(o.error_message());
      Reject(*conn, r);
    }
    return;
  }
  const int64_t now = clock_.NowMs();
  SetState(*conn, State::kLive);
  conn->pending_handshake = false;
  --pending_handshakes_;
  stats_.live.fetch_add(1);
  conn->generation = o.generation();
  protocol::HelloOkOptions hello;
  hello.server_version = options_.version;
  hello.conn_id = conn->conn_id;
  hello.uptime_ms = now - started_ms_;
  hello.auth_method =
      a.token_check == protocol::TokenCheck::kDeviceTokenPending ? "device-token" : "token";
  hello.device_token = o.device_token();
  hello.issued_at_ms = now;
  hello.max_payload = options_.max_payload;
  hello.max_buffered_bytes = options_.max_buffered_bytes;
  hello.tick_interval_ms = options_.tick_interval_ms;
  stats_.handshakes_ok.Add();
  if (!SendFrame(*conn, protocol::EncodeResponseOk(a.request_id, protocol::BuildHelloOk(hello)))) {
    return;
  }
  downstream_.SetMaxMessageSize(conn->socket, static_cast<size_t>(options_.max_payload));
  conn->next_tick_ms = now + options_.tick_interval_ms;
  conn->accepted.reset();  // live: conn->opened is what a resync reports (`a` is gone)
  auto queued = std::exchange(conn->queued, {});
  for (const v1::InvokeRequest& inv : queued) DeliverInvoke(*conn, inv);
}

void EdgeCore::DeliverInvoke(Conn& conn, const v1::InvokeRequest& inv) {
  if (conn.state == State::kRegistering) {
    conn.queued.push_back(inv);  // hello-ok must reach the node first
    return;
  }
  if (recent_invokes_.contains(inv.invoke_id())) {
    // Sent again by a registry replica that took this edge over: delivered once already.
    stats_.invokes_duplicate.Add();
    if (!conn.invokes.contains(inv.invoke_id())) {
      // It ended here meanwhile: cancelled at the node when the link was lost (a crashed
      // replica failed nothing in the store), or answered with a result the lost link may have
      // dropped. Say so, so that the registry ends it now instead of at its deadline (a no-op
      // if it was settled).
      ReportUndeliverable(inv.invoke_id(), conn.conn_id,
                          "already ended at the edge (registry link lost)");
    }
    return;
  }
  protocol::InvokeRequest req;
  req.id = inv.invoke_id();
  req.node_id = inv.node_id();
  req.command = inv.command();
  if (!inv.params_json().empty()) req.params_json = inv.params_json();
  req.timeout_ms = inv.timeout_ms();
  req.idempotency_key = inv.idempotency_key();
  // If the send fails the socket is closed as a slow consumer; its close fails the invoke.
  if (SendFrame(conn, protocol::EncodeEventRaw("node.invoke.request",
                                               protocol::InvokeRequestPayloadJson(req)))) {
    conn.invokes.insert(inv.invoke_id());
    stats_.invokes_delivered.Add();
    recent_invokes_.insert(inv.invoke_id());
    recent_order_.push_back(inv.invoke_id());
    if (recent_order_.size() > kRecentInvokes) {
      recent_invokes_.erase(recent_order_.front());
      recent_order_.pop_front();
    }
  }
}

void EdgeCore::AnswerAck(uint64_t request_id, bool ignored) {
  auto it = awaiting_ack_.find(request_id);
  if (it == awaiting_ack_.end()) return;
  AwaitingAck ack = std::move(it->second);
  awaiting_ack_.erase(it);
  Conn* conn = Find(ack.socket);
  if (conn == nullptr) return;
  json payload = ignored ? json{{"ok", true}, {"ignored", true}} : json{{"ok", true}};
  SendFrame(*conn, protocol::EncodeResponseOk(ack.frame_id, payload));
}

// --- Timer and shutdown ----------------------------------------------------------------------

void EdgeCore::OnTimer() {
  Entry entry(*this);
  const int64_t now = clock_.NowMs();
  if (now >= next_prune_ms_) {
    limiter_.Prune(now);
    next_prune_ms_ = now + 10'000;
  }
  std::vector<uint64_t> sockets;
  sockets.reserve(sockets_.size());
  for (const auto& [socket, conn] : sockets_) sockets.push_back(socket);
  for (uint64_t socket : sockets) {
    Conn* conn = Find(socket);
    if (conn == nullptr) continue;
    const int64_t age = now - conn->opened_ms;
    switch (conn->state) {
      case State::kAwaitConnect:
      case State::kVerifying:
        // As the Gateway does: a plain close, no reason.
        if (age >= options_.handshake_timeout_ms) CloseConn(*conn, protocol::kCloseNormal, "");
        break;
      case State::kRegistering:
        if (age >= options_.handshake_timeout_ms) {
          RefuseUnavailable(*conn, conn->accepted->request_id, "registry did not answer in time");
        }
        break;
      case State::kLive:
        if (draining_) break;  // DrainStep below
        if (conn->superseded && now >= conn->retire_at_ms) {
          stats_.superseded_closed.Add();
          CloseConn(*conn, kCloseReplaced, "replaced");
          break;
        }
        if (now >= conn->next_tick_ms) {
          conn->next_tick_ms = now + options_.tick_interval_ms;
          SendFrame(*conn, protocol::EncodeEvent("tick", json{{"ts", now}}, ++conn->seq));
        }
        break;
      case State::kClosing:
        break;
    }
  }
  if (draining_) DrainStep(now);
}

void EdgeCore::Drain() {
  Entry entry(*this);
  if (draining_) return;
  draining_ = true;
  const int64_t now = clock_.NowMs();
  drain_deadline_ms_ = now + options_.drain_timeout_ms;
  std::uniform_int_distribution<int64_t> jitter(0, std::max<int64_t>(0, options_.drain_spread_ms));
  for (auto& [socket, conn] : sockets_) {
    if (conn.state == State::kLive) {
      conn.drain_close_at_ms = now + jitter(rng_);
    } else {
      CloseConn(conn, kCloseServiceRestart, "service restart");  // no session to hand over
    }
  }
  DrainStep(now);
}

void EdgeCore::DrainStep(int64_t now) {
  const bool overdue = now >= drain_deadline_ms_;
  for (auto& [socket, conn] : sockets_) {
    if (conn.state != State::kLive || now < conn.drain_close_at_ms) continue;
    // Its own invokes first (their results still count), unless the drain ran out of time.
    if (!conn.invokes.empty() && !overdue) continue;
    CloseConn(conn, kCloseServiceRestart, "service restart");
  }
  // Sockets closed inline are erased by the outermost call, which runs this again.
  if (drain_sent_ || !sockets_.empty()) return;
  // Every socket is gone, each with its own `closed`: the lease can end now.
  drain_sent_ = true;
  if (link_up_) {
    v1::EdgeMessage m;
    m.mutable_drain();
    SendLink(m);
  }
}

}  // namespace tether::edge
