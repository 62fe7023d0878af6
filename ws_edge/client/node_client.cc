#include "ws_edge/client/node_client.h"

#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/ids.h"
#include "common/status_macros.h"

namespace tether::edge::client {
namespace {

using nlohmann::json;
using State = NodeClient::State;

absl::Status StatusFromError(const protocol::ErrorShape& e) {
  std::string text = absl::StrCat(e.code, ": ", e.message);
  if (auto it = e.details.find("code");
      e.details.is_object() && it != e.details.end() && it->is_string()) {
    absl::StrAppend(&text, " [", it->get_ref<const std::string&>(), "]");
  }
  if (e.code == protocol::kInvalidRequest) return absl::InvalidArgumentError(text);
  if (e.code == protocol::kNotPaired) return absl::PermissionDeniedError(text);
  if (e.code == protocol::kUnavailable) return absl::UnavailableError(text);
  return absl::UnknownError(text);
}

absl::Status ClosedStatus(const std::optional<CloseInfo>& close, absl::string_view before) {
  if (!close.has_value()) return absl::UnavailableError(absl::StrCat("closed before ", before));
  return absl::UnavailableError(absl::StrCat("closed before ", before, ": code ", close->code,
                                             " reason \"", close->reason, "\"",
                                             close->error.empty() ? "" : " error: ", close->error));
}

// payload[outer][inner] if it is a string, else "" (never throws on odd shapes).
std::string NestedString(const json& payload, const char* outer, const char* inner) {
  auto o = payload.find(outer);
  if (o == payload.end() || !o->is_object()) return "";
  auto i = o->find(inner);
  return i != o->end() && i->is_string() ? i->get<std::string>() : "";
}

NodeClientOptions WithInstanceId(NodeClientOptions options, const DeviceCredentials& creds) {
  if (options.connect.instance_id.empty()) options.connect.instance_id = creds.instance_id();
  return options;
}

}  // namespace

DeviceCredentials::DeviceCredentials() : DeviceCredentials(protocol::Ed25519Identity::Generate()) {}

DeviceCredentials::DeviceCredentials(protocol::Ed25519Identity identity)
    : identity_(std::move(identity)), instance_id_(common::RandomUuid()) {}

DeviceCredentials::~DeviceCredentials() { EVP_PKEY_free(key_); }

std::string DeviceCredentials::Sign(absl::string_view message) const {
  absl::MutexLock lock(&key_mu_);
  const std::string& seed = identity_.seed();
  if (key_ == nullptr) {
    key_ = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr,
                                        reinterpret_cast<const unsigned char*>(seed.data()),
                                        seed.size());
    if (key_ == nullptr) return identity_.Sign(message);  // not expected; the slow path works
  }
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  unsigned char signature[protocol::kEd25519SignatureBytes];
  size_t len = sizeof(signature);
  const bool ok =
      ctx != nullptr && EVP_DigestSignInit(ctx, nullptr, nullptr, nullptr, key_) == 1 &&
      EVP_DigestSign(ctx, signature, &len, reinterpret_cast<const unsigned char*>(message.data()),
                     message.size()) == 1;
  EVP_MD_CTX_free(ctx);
  if (!ok) return identity_.Sign(message);
  return protocol::Base64UrlEncode(absl::string_view(reinterpret_cast<char*>(signature), len));
}

std::optional<std::string> DeviceCredentials::device_token() const {
  absl::MutexLock lock(&mu_);
  return device_token_;
}

void DeviceCredentials::set_device_token(std::optional<std::string> token) {
  absl::MutexLock lock(&mu_);
  device_token_ = std::move(token);
}

InvokeReply InvokeReply::Ok(std::optional<std::string> payload_json) {
  InvokeReply r;
  r.payload_json = std::move(payload_json);
  return r;
}

InvokeReply InvokeReply::Error(std::string code, std::string message) {
  InvokeReply r;
  r.ok = false;
  r.error_code = std::move(code);
  r.error_message = std::move(message);
  return r;
}

InvokeReply InvokeReply::Deferred() {
  InvokeReply r;
  r.defer = true;
  return r;
}

NodeClient::NodeClient(ClientLoop& loop, DeviceCredentials& credentials, NodeClientOptions options)
    : loop_(loop),
      credentials_(credentials),
      options_(WithInstanceId(std::move(options), credentials)) {}

NodeClient::~NodeClient() {
  loop_.RunSync([this] {
    if (con_ == nullptr) return;
    // Detach first: after this no websocketpp callback can reach this object.
    con_->set_open_handler(nullptr);
    con_->set_fail_handler(nullptr);
    con_->set_close_handler(nullptr);
    con_->set_message_handler(nullptr);
    std::error_code ec;
    if (con_->get_state() == websocketpp::session::state::open) {
      con_->close(websocketpp::close::status::normal, "", ec);
    } else if (con_->get_state() == websocketpp::session::state::connecting) {
      con_->get_socket().close(ec);  // aborts the pending connect or upgrade
    }
    con_.reset();
  });
}

void NodeClient::Start() {
  {
    absl::MutexLock lock(&mu_);
    if (state_ != State::kIdle) return;
    state_ = State::kConnecting;
  }
  // Queued, not run synchronously, so a fleet can be started without a round trip each; the
  // destructor's RunSync is queued behind it.
  loop_.Run([this] { StartOnLoop(); });
}

void NodeClient::StartOnLoop() {
  std::error_code ec;
  const std::string uri = absl::StrCat("ws://", options_.host, ":", options_.port, options_.path);
  con_ = loop_.endpoint().get_connection(uri, ec);
  if (ec) {
    con_.reset();
    FinishClose(CloseInfo{0, "", false, absl::StrCat("bad uri ", uri, ": ", ec.message())});
    return;
  }
  con_->set_open_handler([this](const websocketpp::connection_hdl&) { OnOpen(); });
  con_->set_fail_handler([this](const websocketpp::connection_hdl&) { OnFail(); });
  con_->set_close_handler([this](const websocketpp::connection_hdl&) { OnClose(); });
  con_->set_message_handler(
      [this](const websocketpp::connection_hdl&, const WsClient::message_ptr& message) {
        OnMessage(message->get_payload());
      });
  if (!options_.source_address.empty()) {
    loop_.endpoint().set_next_source_address(options_.source_address);
  }
  loop_.endpoint().connect(con_);
}

void NodeClient::OnOpen() {
  absl::MutexLock lock(&mu_);
  if (state_ == State::kConnecting) state_ = State::kOpen;
}

void NodeClient::OnFail() {
  std::string error = con_->get_ec().message();
  if (con_->get_response_code() != 0) {
    absl::StrAppend(&error, " (HTTP ", static_cast<int>(con_->get_response_code()), ")");
  }
  FinishClose(CloseInfo{websocketpp::close::status::abnormal_close, "", close_requested_, error});
}

void NodeClient::OnClose() {
  FinishClose(CloseInfo{con_->get_remote_close_code(), con_->get_remote_close_reason(),
                        close_requested_, ""});
}

void NodeClient::FinishClose(const CloseInfo& info) {
  {
    absl::MutexLock lock(&mu_);
    state_ = State::kClosed;
    close_ = info;
  }
  if (options_.on_closed) options_.on_closed(info);
}

void NodeClient::OnMessage(const std::string& text) {
  absl::StatusOr<protocol::Frame> frame = protocol::ParseFrame(text);
  {
    absl::MutexLock lock(&mu_);
    ++frame_count_;
    if (options_.record_frames) {
      frames_.push_back(text);
      if (frame.ok() && frame->type == protocol::FrameType::kEvent) events_.push_back(*frame);
    }
  }
  if (!frame.ok()) return;  // kept in frames_ for the test to look at
  switch (frame->type) {
    case protocol::FrameType::kEvent:
      if (frame->event == "connect.challenge") OnChallenge(*frame);
      if (frame->event == "node.invoke.request") OnInvokeRequest(*frame);
      break;
    case protocol::FrameType::kResponse:
      OnResponse(*std::move(frame));
      break;
    case protocol::FrameType::kRequest:
      break;  // a gateway sends nodes no requests
  }
}

void NodeClient::OnChallenge(const protocol::Frame& frame) {
  absl::StatusOr<Challenge> challenge = ParseChallenge(frame.payload);
  if (!challenge.ok()) {
    // As the node host: without a usable challenge there is no handshake.
    close_requested_ = true;
    std::error_code ec;
    con_->close(websocketpp::close::status::policy_violation,
                std::string(challenge.status().message()), ec);
    return;
  }
  std::optional<std::string> device_token;
  {
    absl::MutexLock lock(&mu_);
    if (challenge_.has_value()) return;  // only the first challenge counts
    challenge_ = *challenge;
  }
  if (options_.on_challenge) options_.on_challenge(*challenge);
  {
    absl::MutexLock lock(&mu_);
    if (!options_.auto_connect || state_ != State::kOpen) return;
  }
  if (!options_.shared_token.has_value()) device_token = credentials_.device_token();
  (void)SendConnect(BuildConnectParams(
      options_.connect, credentials_.identity(), *challenge, options_.shared_token, device_token,
      [this](absl::string_view message) { return credentials_.Sign(message); }));
}

void NodeClient::OnResponse(protocol::Frame frame) {
  bool ready = false;
  {
    absl::MutexLock lock(&mu_);
    if (!frame.ok) {
      error_responses_.push_back(frame.error.value_or(
          protocol::ErrorShape{"UNKNOWN", "response without error", nullptr, {}, {}}));
    }
    if (frame.id == connect_request_id_ &&
        (state_ == State::kOpen || state_ == State::kHandshaking)) {
      if (frame.ok) {
        hello_ = frame.payload;
        conn_id_ = NestedString(frame.payload, "server", "connId");
        const std::string token = NestedString(frame.payload, "auth", "deviceToken");
        // Stored before the state turns ready, so a waiter that reconnects right after
        // Connect() returns already sees it.
        if (!token.empty()) credentials_.set_device_token(token);
        state_ = State::kReady;
        ready = true;
      } else {
        connect_error_ = error_responses_.back();
        state_ = State::kRefused;
      }
    }
    if (options_.record_frames) responses_[frame.id] = std::move(frame);
  }
  if (ready && options_.on_ready) options_.on_ready();
}

void NodeClient::OnInvokeRequest(const protocol::Frame& frame) {
  absl::StatusOr<protocol::InvokeRequest> request = protocol::ParseInvokeRequest(frame.payload);
  if (!request.ok()) return;  // the raw frame is recorded; nothing sensible to answer
  {
    absl::MutexLock lock(&mu_);
    ++invoke_count_;
    if (options_.record_frames) invokes_.push_back(*request);
  }
  const InvokeReply reply = options_.on_invoke ? options_.on_invoke(*request) : InvokeReply::Ok();
  if (!reply.defer) (void)SendInvokeResult(*request, reply);
}

std::string NodeClient::NextRequestId() {
  absl::MutexLock lock(&mu_);
  return absl::StrCat(next_request_++, ":", common::RandomUuid());
}

absl::Status NodeClient::SendOnLoop(const std::string& text) {
  if (con_ == nullptr) return absl::FailedPreconditionError("socket not started");
  const std::error_code ec = con_->send(text, websocketpp::frame::opcode::text);
  if (ec) return absl::FailedPreconditionError(absl::StrCat("send failed: ", ec.message()));
  return absl::OkStatus();
}

absl::Status NodeClient::SendText(const std::string& text) {
  absl::Status status;
  loop_.RunSync([&] { status = SendOnLoop(text); });
  return status;
}

absl::StatusOr<std::string> NodeClient::SendRequest(absl::string_view method, const json& params) {
  std::string id = NextRequestId();
  RETURN_IF_ERROR(SendText(protocol::EncodeRequest(id, method, params)));
  return id;
}

absl::StatusOr<std::string> NodeClient::SendConnect(const json& params) {
  std::string id = NextRequestId();
  {
    // Registered before sending so that even an immediate answer is matched.
    absl::MutexLock lock(&mu_);
    connect_request_id_ = id;
    if (state_ == State::kOpen) state_ = State::kHandshaking;
  }
  RETURN_IF_ERROR(SendText(protocol::EncodeRequest(id, "connect", params)));
  return id;
}

absl::StatusOr<std::string> NodeClient::SendNodeEvent(absl::string_view event,
                                                      std::optional<std::string> payload_json) {
  json params = {{"event", std::string(event)}};
  if (payload_json.has_value()) params["payloadJSON"] = *std::move(payload_json);
  return SendRequest("node.event", params);
}

absl::StatusOr<std::string> NodeClient::SendInvokeResult(const protocol::InvokeRequest& request,
                                                         const InvokeReply& reply) {
  json params = {{"id", request.id}, {"nodeId", request.node_id}, {"ok", reply.ok}};
  if (!reply.ok) {
    params["error"] = {{"code", reply.error_code}, {"message", reply.error_message}};
  } else if (reply.payload_json.has_value()) {
    params["payloadJSON"] = *reply.payload_json;
  }
  return SendRequest("node.invoke.result", params);
}

absl::Status NodeClient::Close(int code, const std::string& reason) {
  absl::Status status;
  loop_.RunSync([&] {
    if (con_ == nullptr) {
      status = absl::FailedPreconditionError("socket not started");
      return;
    }
    close_requested_ = true;
    std::error_code ec;
    con_->close(static_cast<websocketpp::close::status::value>(code), reason, ec);
    if (ec) status = absl::FailedPreconditionError(absl::StrCat("close: ", ec.message()));
  });
  return status;
}

void NodeClient::PauseReading() {
  loop_.RunSync([this] {
    if (con_ != nullptr) (void)con_->pause_reading();
  });
}

void NodeClient::ResumeReading() {
  loop_.RunSync([this] {
    if (con_ != nullptr) (void)con_->resume_reading();
  });
}

absl::Status NodeClient::Await(const std::function<bool()>& done, absl::Duration timeout,
                               absl::string_view what) {
  if (loop_.InLoopThread()) {
    return absl::FailedPreconditionError("blocking wait on the client loop thread");
  }
  absl::MutexLock lock(&mu_);
  if (!mu_.AwaitWithTimeout(absl::Condition(&done), timeout)) {
    return absl::DeadlineExceededError(absl::StrCat("timed out waiting for ", what));
  }
  return absl::OkStatus();
}

absl::Status NodeClient::Open(absl::Duration timeout) {
  Start();
  RETURN_IF_ERROR(Await(
      [this] {
        mu_.AssertHeld();
        return state_ != State::kIdle && state_ != State::kConnecting;
      },
      timeout, "the socket to open"));
  absl::MutexLock lock(&mu_);
  return close_.has_value() ? ClosedStatus(close_, "open") : absl::OkStatus();
}

absl::Status NodeClient::Connect(absl::Duration timeout) {
  Start();
  RETURN_IF_ERROR(Await(
      [this] {
        mu_.AssertHeld();
        return state_ == State::kReady || state_ == State::kRefused || state_ == State::kClosed;
      },
      timeout, "hello-ok"));
  absl::MutexLock lock(&mu_);
  if (connect_error_.has_value()) return StatusFromError(*connect_error_);
  if (state_ == State::kReady) return absl::OkStatus();
  return ClosedStatus(close_, "hello-ok");
}

absl::StatusOr<Challenge> NodeClient::WaitForChallenge(absl::Duration timeout) {
  Start();
  RETURN_IF_ERROR(Await(
      [this] {
        mu_.AssertHeld();
        return challenge_.has_value() || state_ == State::kClosed;
      },
      timeout, "connect.challenge"));
  absl::MutexLock lock(&mu_);
  if (!challenge_.has_value()) return ClosedStatus(close_, "connect.challenge");
  return *challenge_;
}

absl::StatusOr<protocol::Frame> NodeClient::WaitForResponse(const std::string& id,
                                                            absl::Duration timeout) {
  if (!options_.record_frames) return absl::FailedPreconditionError("record_frames is off");
  RETURN_IF_ERROR(Await(
      [&] {
        mu_.AssertHeld();
        return responses_.count(id) > 0 || state_ == State::kClosed;
      },
      timeout, absl::StrCat("the response to ", id)));
  absl::MutexLock lock(&mu_);
  auto it = responses_.find(id);
  if (it == responses_.end()) return ClosedStatus(close_, absl::StrCat("the response to ", id));
  return it->second;
}

absl::StatusOr<protocol::Frame> NodeClient::WaitForEvent(absl::string_view event,
                                                         absl::Duration timeout, int occurrence) {
  if (!options_.record_frames) return absl::FailedPreconditionError("record_frames is off");
  std::optional<protocol::Frame> found;
  const auto find = [&] {
    mu_.AssertHeld();
    int seen = 0;
    for (const protocol::Frame& f : events_) {
      if (f.event == event && ++seen == occurrence) {
        found = f;
        return true;
      }
    }
    return state_ == State::kClosed;
  };
  RETURN_IF_ERROR(Await(find, timeout, absl::StrCat("event ", event)));
  if (!found.has_value()) {
    absl::MutexLock lock(&mu_);
    return ClosedStatus(close_, absl::StrCat("event ", event));
  }
  return *std::move(found);
}

absl::Status NodeClient::WaitForInvokeCount(int count, absl::Duration timeout) {
  return Await(
      [&] {
        mu_.AssertHeld();
        return invoke_count_ >= count;
      },
      timeout, absl::StrCat(count, " invoke requests"));
}

absl::StatusOr<CloseInfo> NodeClient::WaitForClose(absl::Duration timeout) {
  RETURN_IF_ERROR(Await(
      [this] {
        mu_.AssertHeld();
        return close_.has_value();
      },
      timeout, "the socket to close"));
  absl::MutexLock lock(&mu_);
  return *close_;
}

NodeClient::State NodeClient::state() const {
  absl::MutexLock lock(&mu_);
  return state_;
}

std::optional<json> NodeClient::hello() const {
  absl::MutexLock lock(&mu_);
  return hello_;
}

std::string NodeClient::conn_id() const {
  absl::MutexLock lock(&mu_);
  return conn_id_;
}

std::optional<Challenge> NodeClient::challenge() const {
  absl::MutexLock lock(&mu_);
  return challenge_;
}

std::optional<protocol::ErrorShape> NodeClient::connect_error() const {
  absl::MutexLock lock(&mu_);
  return connect_error_;
}

std::vector<protocol::ErrorShape> NodeClient::error_responses() const {
  absl::MutexLock lock(&mu_);
  return error_responses_;
}

std::vector<std::string> NodeClient::received_frames() const {
  absl::MutexLock lock(&mu_);
  return frames_;
}

std::vector<protocol::InvokeRequest> NodeClient::invoke_requests() const {
  absl::MutexLock lock(&mu_);
  return invokes_;
}

int NodeClient::invoke_requests_received() const {
  absl::MutexLock lock(&mu_);
  return invoke_count_;
}

int NodeClient::frames_received() const {
  absl::MutexLock lock(&mu_);
  return frame_count_;
}

std::optional<CloseInfo> NodeClient::close_info() const {
  absl::MutexLock lock(&mu_);
  return close_;
}

}  // namespace tether::edge::client
