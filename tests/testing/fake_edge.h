// FakeEdge: a test-only edge that drives a real EdgeLink stream over gRPC.
#ifndef TETHER_TESTS_TESTING_FAKE_EDGE_H_
#define TETHER_TESTS_TESTING_FAKE_EDGE_H_

#include <grpcpp/grpcpp.h>

#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/tether/v1/edge_link.grpc.pb.h"

namespace tether::testing {

// Owns one stream and a reader thread that queues what the registry sends. Thread-safe.
class FakeEdge {
 public:
  // `secret`: sent as x-tether-edge-secret when not empty.
  FakeEdge(const std::string& target, std::string edge_id, std::string epoch = "epoch-1",
           const std::string& secret = "")
      : edge_id_(std::move(edge_id)), epoch_(std::move(epoch)) {
    channel_ = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
    stub_ = v1::EdgeLink::NewStub(channel_);
    if (!secret.empty()) ctx_.AddMetadata("x-tether-edge-secret", secret);
    stream_ = stub_->Connect(&ctx_);
    reader_ = std::thread([this] {
      v1::RegistryMessage m;
      while (stream_->Read(&m)) {
        absl::MutexLock lock(&mu_);
        inbox_.push_back(m);
      }
      absl::MutexLock lock(&mu_);
      closed_ = true;
    });
  }

  ~FakeEdge() {
    ctx_.TryCancel();
    reader_.join();
  }

  bool Send(const v1::EdgeMessage& m) {
    absl::MutexLock lock(&write_mu_);
    return stream_->Write(m);
  }

  // Sends attach and waits for the ack.
  std::optional<v1::AttachAck> Attach() {
    v1::EdgeMessage m;
    m.mutable_attach()->set_edge_id(edge_id_);
    m.mutable_attach()->set_epoch(epoch_);
    Send(m);
    auto ack = Next([](const v1::RegistryMessage& r) { return r.has_attach_ack(); });
    if (!ack) return std::nullopt;
    return ack->attach_ack();
  }

  // Opens a connection and waits for its registration outcome.
  std::optional<v1::RegisterOutcome> Open(const std::string& conn_id, const std::string& node_id,
                                          bool shared_token_ok = true) {
    v1::EdgeMessage m;
    auto* o = m.mutable_opened();
    o->set_request_id(++request_id_);
    o->set_conn_id(conn_id);
    o->set_node_id(node_id);
    o->set_public_key("pk-" + node_id);
    o->set_shared_token_ok(shared_token_ok);
    o->mutable_client()->set_client_id("node-host");
    o->mutable_client()->set_display_name("host-" + node_id);
    o->mutable_client()->add_commands("system.which");
    Send(m);
    const uint64_t id = request_id_;
    auto r = Next([&](const v1::RegistryMessage& x) {
      return x.has_register_outcome() && x.register_outcome().request_id() == id;
    });
    if (!r) return std::nullopt;
    return r->register_outcome();
  }

  void Close(const std::string& conn_id) {
    v1::EdgeMessage m;
    m.mutable_closed()->set_conn_id(conn_id);
    m.mutable_closed()->set_code(1000);
    Send(m);
  }

  // Sends a result and returns whether the registry ignored it.
  std::optional<bool> Result(const std::string& conn_id, const v1::InvokeRequest& inv,
                             const std::string& payload) {
    v1::EdgeMessage m;
    auto* r = m.mutable_result();
    r->set_request_id(++request_id_);
    r->set_invoke_id(inv.invoke_id());
    r->set_node_id(inv.node_id());
    r->set_conn_id(conn_id);
    r->set_ok(true);
    r->set_payload_json(payload);
    Send(m);
    const uint64_t id = request_id_;
    auto ack = Next([&](const v1::RegistryMessage& x) {
      return x.has_result_ack() && x.result_ack().request_id() == id;
    });
    if (!ack) return std::nullopt;
    return ack->result_ack().ignored();
  }

  // Waits for (and removes) the first queued message matching `pred`.
  std::optional<v1::RegistryMessage> Next(std::function<bool(const v1::RegistryMessage&)> pred,
                                          absl::Duration timeout = absl::Seconds(5)) {
    absl::MutexLock lock(&mu_);
    // Conditions must be pure: absl may evaluate them on any thread, more than once.
    auto ready = [&]() {
      if (closed_) return true;
      for (const auto& m : inbox_) {
        if (pred(m)) return true;
      }
      return false;
    };
    mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
    for (auto it = inbox_.begin(); it != inbox_.end(); ++it) {
      if (pred(*it)) {
        std::optional<v1::RegistryMessage> found = *it;
        inbox_.erase(it);
        return found;
      }
    }
    return std::nullopt;
  }

  // The status the registry ended the stream with (after WaitClosed).
  grpc::Status Finish() { return stream_->Finish(); }

  bool WaitClosed(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&closed_), timeout);
  }

  const std::string& edge_id() const { return edge_id_; }

 private:
  const std::string edge_id_;
  const std::string epoch_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::EdgeLink::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::EdgeMessage, v1::RegistryMessage>> stream_;
  std::thread reader_;
  absl::Mutex write_mu_;
  uint64_t request_id_ = 0;
  absl::Mutex mu_;
  std::deque<v1::RegistryMessage> inbox_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace tether::testing

#endif  // TETHER_TESTS_TESTING_FAKE_EDGE_H_
