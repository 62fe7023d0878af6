// StallingStore: a hostile fake of the registry's store (see the class comment).
#ifndef TETHER_TESTS_TESTING_STALLING_STORE_H_
#define TETHER_TESTS_TESTING_STALLING_STORE_H_

#include <atomic>
#include <functional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "registry_service/core/store.h"
#include "registry_service/store/memory_store.h"

namespace tether::testing {

// A registry::MemoryStore as hostile as Redis under a storm: Register and Touch wait while their
// gate is closed, and StartInvoke runs a hook first (on the deciding thread, under the decision) so
// a test can make anything happen while a decision is in the store. Thread-safe, except that the
// hook is set before the store is used.
class StallingStore final : public registry::Store {
 public:
  explicit StallingStore(const registry::StoreOptions& o, int64_t start_ms = 1'700'000'000'000)
      : inner_(o, start_ms) {}
  std::function<void()> before_start_invoke;
  std::atomic<bool> fail_renewals{false};  // RenewLease answers UNAVAILABLE (a store cut off)
  std::function<void()> during_resync;     // runs inside Resync, before the decision
  std::atomic<int> renewals{0};            // RenewLease calls
  void Stall(bool registers, bool touches) {
    absl::MutexLock lock(&mu_);
    stall_registers_ = registers;
    stall_touches_ = touches;
  }
  int stalled() {
    absl::MutexLock lock(&mu_);
    return stalled_;
  }

  absl::Status AttachEdge(const std::string& e, const std::string& ep, int64_t now,
                          registry::Effects* fx) override {
    return inner_.AttachEdge(e, ep, now, fx);
  }
  absl::Status RenewLease(const std::string& e, const std::string& ep, int64_t now) override {
    ++renewals;
    if (fail_renewals) return absl::UnavailableError("store unreachable (test)");
    return inner_.RenewLease(e, ep, now);
  }
  absl::Status DrainEdge(const std::string& e, const std::string& ep, int64_t now,
                         registry::Effects* fx) override {
    return inner_.DrainEdge(e, ep, now, fx);
  }
  absl::StatusOr<registry::ResyncResult> Resync(const std::string& e, const std::string& ep,
                                                const std::vector<registry::LiveConnection>& live,
                                                int64_t now, registry::Effects* fx) override {
    if (during_resync) during_resync();
    return inner_.Resync(e, ep, live, now, fx);
  }
  absl::StatusOr<registry::RegisterResult> Register(const registry::ConnectionSpec& spec,
                                                    int64_t now, registry::Effects* fx) override {
    Wait(&stall_registers_);
    return inner_.Register(spec, now, fx);
  }
  registry::CloseResult Close(const std::string& e, const std::string& c, int64_t now,
                              registry::Effects* fx) override {
    return inner_.Close(e, c, now, fx);
  }
  void Touch(const std::string& c, int64_t now) override {
    Wait(&stall_touches_);
    inner_.Touch(c, now);
  }
  registry::InvokeStartResult StartInvoke(const registry::InvokeStart& s, int64_t now,
                                          registry::Effects* fx) override {
    if (before_start_invoke) before_start_invoke();
    return inner_.StartInvoke(s, now, fx);
  }
  bool SettleInvoke(const std::string& i, const std::string& n, const std::string& c,
                    const std::string& e, const registry::InvokeOutcome& o, int64_t now,
                    registry::Effects* fx) override {
    return inner_.SettleInvoke(i, n, c, e, o, now, fx);
  }
  bool FailInvoke(const std::string& i, const std::string& c, const std::string& e,
                  const registry::InvokeOutcome& o, int64_t now, registry::Effects* fx) override {
    return inner_.FailInvoke(i, c, e, o, now, fx);
  }
  void Expire(int64_t now, registry::Effects* fx) override { inner_.Expire(now, fx); }
  absl::StatusOr<registry::NodePage> ListNodes(const registry::NodeFilter& f, const std::string& t,
                                               int size) override {
    return inner_.ListNodes(f, t, size);
  }
  absl::StatusOr<registry::NodeView> GetNode(const std::string& n) override {
    return inner_.GetNode(n);
  }
  absl::StatusOr<registry::PresenceSnapshot> GetPresence() override { return inner_.GetPresence(); }
  absl::StatusOr<std::vector<registry::PresenceEvent>> ReadPresence(uint64_t after,
                                                                    size_t max) override {
    return inner_.ReadPresence(after, max);
  }
  uint64_t HeadRevision() override { return inner_.HeadRevision(); }
  std::vector<registry::PairingRequest> ListPairingRequests() override {
    return inner_.ListPairingRequests();
  }
  std::vector<registry::Device> ListDevices() override { return inner_.ListDevices(); }
  absl::StatusOr<registry::Device> ApprovePairing(const std::string& r, const std::string& by,
                                                  int64_t now) override {
    return inner_.ApprovePairing(r, by, now);
  }
  absl::Status RejectPairing(const std::string& r) override { return inner_.RejectPairing(r); }
  absl::StatusOr<int> RevokeDevice(const std::string& n, int64_t now,
                                   registry::Effects* fx) override {
    return inner_.RevokeDevice(n, now, fx);
  }
  bool StartedEmpty() const override { return false; }
  registry::StoreDrops Dropped() override { return {}; }

 private:
  void Wait(bool* gate) {
    absl::MutexLock lock(&mu_);
    if (!*gate) return;
    ++stalled_;
    mu_.Await(absl::Condition(
        +[](bool* g) { return !*g; }, gate));
    --stalled_;
  }
  registry::MemoryStore inner_;
  absl::Mutex mu_;
  bool stall_registers_ ABSL_GUARDED_BY(mu_) = false;
  bool stall_touches_ ABSL_GUARDED_BY(mu_) = false;
  int stalled_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tether::testing

#endif  // TETHER_TESTS_TESTING_STALLING_STORE_H_
