#include "registry_service/core/registry.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/ids.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace tether::registry {
namespace {

constexpr size_t kPumpBatch = 4096;

// FNV-1a, 64 bits: stable across processes and restarts (the scope is part of keys kept in
// Redis and shared by replicas), which absl::Hash is not.
uint64_t StableHash(absl::string_view text) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// What a caller's idempotency key is scoped to: the caller, the command and the params.
std::string IdempotencyScope(const InvokeParams& p) {
  return absl::StrCat(absl::Hex(StableHash(p.caller)), ":", p.command, ":",
                      absl::Hex(StableHash(p.params_json)), ":");
}

}  // namespace

Registry::Registry(Store& store, const common::Clock& clock, const RegistryOptions& options)
    : store_(store),
      clock_(clock),
      options_(options),
      routed_(store.RoutesThroughStore()),
      published_(store.HeadRevision()) {
  if (options_.recovery_grace_ms > 0 && store_.StartedEmpty()) {
    absl::MutexLock lock(&mu_);
    recovering_.store(true);
    recovery_ends_ms_ = clock_.NowMs() + options_.recovery_grace_ms;
    common::Log(common::LogLevel::kWarn, "recovery_started",
                {{"grace_ms", absl::StrCat(options_.recovery_grace_ms)},
                 {"expected_edges", absl::StrCat(options_.recovery_edges)},
                 {"why", "the store's table was empty at start: waiting for edges to resync"}});
  }
}

// --- Recovery --------------------------------------------------------------------------------

absl::Status Registry::ServingStatus() const {
  if (!recovering_.load()) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  const int64_t left = std::max<int64_t>(0, recovery_ends_ms_ - clock_.NowMs());
  return absl::UnavailableError(absl::StrCat(
      "registry is recovering (its table was empty at start): ", resynced_.size(),
      " edge(s) resynced, ", owing_resync_.size(), " attached edge(s) still to resync, at most ",
      left, " ms of grace left; retry after ",
      std::min<int64_t>(std::max<int64_t>(left, 100), 1000), " ms"));
}

int64_t Registry::RetryAfterMs() const {
  if (!recovering_.load()) return 0;
  absl::MutexLock lock(&mu_);
  const int64_t left = std::max<int64_t>(0, recovery_ends_ms_ - clock_.NowMs());
  return std::min<int64_t>(std::max<int64_t>(left, 100), 1000);
}

void Registry::MaybeEndRecovery() {
  if (!recovering_.load()) return;
  std::string why;
  size_t resynced = 0;
  {
    absl::MutexLock lock(&mu_);
    if (!recovering_.load()) return;
    if (clock_.NowMs() >= recovery_ends_ms_) {
      why = "grace passed";
    } else if (options_.recovery_edges > 0 &&
               resynced_.size() >= static_cast<size_t>(options_.recovery_edges) &&
               owing_resync_.empty()) {
      why = "expected edges resynced";
    } else {
      return;
    }
    resynced = resynced_.size();
    recovering_.store(false);
    owing_resync_.clear();
    resynced_.clear();
  }
  common::Log(common::LogLevel::kInfo, "recovery_ended",
              {{"why", why}, {"edges_resynced", absl::StrCat(resynced)}});
}

// --- EdgeLink side ---------------------------------------------------------------------------

absl::Status Registry::AttachEdge(const std::string& edge_id, const std::string& epoch,
                                  std::shared_ptr<EdgeSink> sink) {
  // Attaches check and install routes in one step, also when decisions run side by side.
  absl::MutexLock attaching(&attach_mu_);
  Effects effects;
  {
    Decision decision(*this, &effects);
    const int64_t now = clock_.NowMs();
    {
      absl::MutexLock lock(&mu_);
      auto it = routes_.find(edge_id);
      if (it != routes_.end() && it->second.epoch != epoch &&
          now - it->second.renewed_ms < options_.lease_ttl_ms) {
        common::Log(common::LogLevel::kWarn, "edge_id_in_use",
                    {{"edge_id", edge_id}, {"epoch", epoch}, {"live_epoch", it->second.epoch}});
        return absl::FailedPreconditionError(
            "edge id in use: edge '" + edge_id +
            "' is attached with another epoch on a live stream; give every edge process its "
            "own --edge_id (a restarted edge is accepted once its old stream ended or its lease "
            "lapsed)");
      }
    }
    RETURN_IF_ERROR(store_.AttachEdge(edge_id, epoch, now, &effects));
    // Before the decision's commands are queued: they go out on this new stream.
    absl::MutexLock lock(&mu_);
    Route route{epoch, std::make_shared<Outbox>(std::move(sink)), now};
    auto old = routes_.find(edge_id);
    if (old != routes_.end() && old->second.epoch == epoch) {
      // The same edge on a new stream: continue its outbox where the old stream was.
      route.position = old->second.position;
      route.recorded = old->second.recorded;
    }
    routes_[edge_id] = std::move(route);
    stats_.edges_attached.store(static_cast<int64_t>(routes_.size()));
    if (recovering_.load() && !resynced_.contains(edge_id)) owing_resync_.insert(edge_id);
  }
  common::Log(common::LogLevel::kInfo, "edge_attached", {{"edge_id", edge_id}, {"epoch", epoch}});
  Apply(effects);
  return absl::OkStatus();
}

void Registry::DetachEdge(const std::string& edge_id, const EdgeSink* sink) {
  std::vector<std::string> lost;
  std::optional<Route> released;
  {
    absl::MutexLock lock(&mu_);
    auto it = routes_.find(edge_id);
    if (it != routes_.end() && it->second.outbox->sink() == sink) {
      released = std::move(it->second);
      routes_.erase(it);
      stats_.edges_attached.store(static_cast<int64_t>(routes_.size()));
    }
    for (const auto& [invoke_id, via] : sent_via_) {
      if (via == sink) lost.push_back(invoke_id);
    }
  }
  // Invokes for the edge now fail at once instead of queueing for a stream no one reads; the
  // next holder continues after what this one delivered.
  if (routed_ && released.has_value() && released->held) {
    store_.ReleaseEdge(edge_id, released->epoch, released->position);
  }
  common::Log(common::LogLevel::kWarn, "edge_link_lost",
              {{"edge_id", edge_id}, {"invokes_failed", absl::StrCat(lost.size())}});
  Effects effects;
  const InvokeOutcome failure = Failure(InvokeCode::kDisconnected, "edge link lost");
  {
    Decision decision(*this, &effects);
    for (const std::string& invoke_id : lost) {
      store_.FailInvoke(invoke_id, "", "", failure, clock_.NowMs(), &effects);
    }
  }
  Apply(effects);
}

absl::Status Registry::Heartbeat(const std::string& edge_id, const std::string& epoch) {
  const int64_t now = clock_.NowMs();
  absl::Status s = store_.RenewLease(edge_id, epoch, now);
  if (s.ok()) {
    MarkRenewed(edge_id, epoch, now);
    return s;
  }
  if (absl::IsFailedPrecondition(s)) return s;
  // The store did not answer. Once the lease's TTL has passed since the last renewal here,
  // another replica may have lapsed it and closed the edge's connections (edge_lost) without
  // this replica, cut off from the store, being able to tell the edge: the edge must attach
  // again (through a replica that reaches the store) and resync.
  int64_t renewed = now;
  {
    absl::MutexLock lock(&mu_);
    if (const Route* route = FindRoute(edge_id, epoch)) renewed = route->renewed_ms;
  }
  if (now - renewed > options_.lease_ttl_ms) {
    return absl::FailedPreconditionError(absl::StrCat("the edge's lease could not be renewed for ",
                                                      now - renewed, " ms, longer than its TTL (",
                                                      std::string(s.message()), "): attach again"));
  }
  return s;
}

Registry::Route* Registry::FindRoute(const std::string& edge_id, const std::string& epoch) {
  auto it = routes_.find(edge_id);
  return it != routes_.end() && it->second.epoch == epoch ? &it->second : nullptr;
}

void Registry::MarkRenewed(const std::string& edge_id, const std::string& epoch, int64_t now) {
  absl::MutexLock lock(&mu_);
  if (Route* route = FindRoute(edge_id, epoch)) route->renewed_ms = now;
}

void Registry::EdgeAlive(const std::string& edge_id, const EdgeSink* sink) {
  const int64_t now = clock_.NowMs();
  absl::MutexLock lock(&mu_);
  auto it = routes_.find(edge_id);
  if (it != routes_.end() && it->second.outbox->sink() == sink) it->second.last_read_ms = now;
}

void Registry::RenewLiveLeases() {
  const int64_t now = clock_.NowMs();
  const int64_t every = std::max<int64_t>(options_.lease_ttl_ms / 4, 50);
  std::vector<std::pair<std::string, std::string>> due;  // edge id, epoch
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [edge_id, route] : routes_) {
      // (A resync stops reading the stream, heartbeats included, for as long as it runs.)
      const bool live = now - route.last_read_ms < every || route.resyncing > 0;
      if (live && now - route.renewed_ms >= every) {
        due.emplace_back(edge_id, route.epoch);
      }
    }
  }
  for (const auto& [edge_id, epoch] : due) {
    // A refusal (the lease is gone or has another epoch) is the explicit heartbeat's to act on.
    if (store_.RenewLease(edge_id, epoch, now).ok()) MarkRenewed(edge_id, epoch, now);
  }
}

absl::Status Registry::DrainEdge(const std::string& edge_id, const std::string& epoch) {
  Effects effects;
  absl::Status status;
  {
    Decision decision(*this, &effects);
    status = store_.DrainEdge(edge_id, epoch, clock_.NowMs(), &effects);
  }
  common::Log(common::LogLevel::kInfo, "edge_draining", {{"edge_id", edge_id}});
  Apply(effects);
  return status;
}

absl::StatusOr<RegisterResult> Registry::Register(const ConnectionSpec& spec) {
  if (absl::Status serving = ServingStatus(); !serving.ok()) {
    // A generation granted now could be lower than one an edge has yet to report.
    stats_.registrations_refused.Add();
    return serving;
  }
  Effects effects;
  absl::StatusOr<RegisterResult> result;
  {
    Decision decision(*this, &effects);
    result = store_.Register(spec, clock_.NowMs(), &effects);
  }
  if (result.ok() && result->granted) {
    stats_.registrations_granted.Add();
    if (common::LogEnabled(common::LogLevel::kDebug)) {
      const std::string gen = absl::StrCat(result->generation);
      common::Log(common::LogLevel::kDebug, "registered",
                  {{"node_id", spec.node_id},
                   {"conn_id", spec.conn_id},
                   {"edge_id", spec.edge_id},
                   {"generation", gen}});
    }
  } else {
    stats_.registrations_refused.Add();
    common::Log(common::LogLevel::kInfo, "register_refused",
                {{"node_id", spec.node_id},
                 {"conn_id", spec.conn_id},
                 {"edge_id", spec.edge_id},
                 {"reason", result.ok() ? result->details_code : result.status().message()}});
  }
  Apply(effects);
  return result;
}

CloseResult Registry::Close(const std::string& edge_id, const std::string& conn_id) {
  Effects effects;
  CloseResult result;
  {
    Decision decision(*this, &effects);
    result = store_.Close(edge_id, conn_id, clock_.NowMs(), &effects);
  }
  if (result.was_owner) {
    stats_.closes_of_owner.Add();
  } else if (result.known) {
    // The bug family Tether exists for: a replaced socket's late close changes nothing.
    stats_.stale_closes_ignored.Add();
    // Debug: a reconnect storm makes one per node; the counter is the operator's view.
    common::Log(common::LogLevel::kDebug, "stale_close_ignored",
                {{"node_id", result.node_id}, {"conn_id", conn_id}, {"edge_id", edge_id}});
  }
  Apply(effects);
  return result;
}

bool Registry::AcceptResult(const std::string& conn_id, const std::string& invoke_id,
                            const std::string& node_id, const InvokeOutcome& outcome,
                            const std::string& edge_id) {
  Effects effects;
  bool settled = false;
  {
    Decision decision(*this, &effects);
    settled = store_.SettleInvoke(invoke_id, node_id, conn_id, edge_id, outcome, clock_.NowMs(),
                                  &effects);
  }
  if (!settled) stats_.results_ignored.Add();
  Apply(effects);
  return settled;
}

void Registry::Undeliverable(const std::string& edge_id, const std::string& conn_id,
                             const std::string& invoke_id, const std::string& reason) {
  Effects effects;
  {
    Decision decision(*this, &effects);
    store_.FailInvoke(invoke_id, conn_id, edge_id,
                      Failure(InvokeCode::kDisconnected, "could not deliver: " + reason),
                      clock_.NowMs(), &effects);
  }
  Apply(effects);
}

void Registry::Seen(const std::string& conn_id) { store_.Touch(conn_id, clock_.NowMs()); }

absl::StatusOr<ResyncResult> Registry::Resync(const std::string& edge_id, const std::string& epoch,
                                              const std::vector<LiveConnection>& live) {
  Effects effects;
  absl::StatusOr<ResyncResult> result;
  auto resyncing = [&](int delta) {
    absl::MutexLock lock(&mu_);
    if (Route* route = FindRoute(edge_id, epoch)) route->resyncing += delta;
  };
  resyncing(1);  // the tick renews its lease meanwhile (RenewLiveLeases)
  {
    Decision decision(*this, &effects);
    result = store_.Resync(edge_id, epoch, live, clock_.NowMs(), &effects);
  }
  resyncing(-1);
  stats_.resyncs.Add();
  if (result.ok()) {
    common::Log(common::LogLevel::kInfo, "edge_resynced",
                {{"edge_id", edge_id},
                 {"kept", absl::StrCat(result->kept)},
                 {"closed", absl::StrCat(result->closed)}});
    if (recovering_.load()) {
      absl::MutexLock lock(&mu_);
      owing_resync_.erase(edge_id);
      resynced_.insert(edge_id);
    }
  }
  Apply(effects);
  MaybeEndRecovery();
  return result;
}

// --- Invokes ---------------------------------------------------------------------------------

std::string Registry::InvalidInvoke(const InvokeParams& params) const {
  if (params.node_id.empty() || params.command.empty()) {
    return "node_id and command are required";
  }
  if (params.timeout_ms < 0) {
    return "timeout_ms must be >= 0 (0 means the default, " +
           std::to_string(options_.default_invoke_timeout_ms) + " ms)";
  }
  if (static_cast<int64_t>(params.params_json.size()) > options_.max_params_bytes) {
    return "params_json is " + std::to_string(params.params_json.size()) + " bytes; the limit is " +
           std::to_string(options_.max_params_bytes) + " bytes";
  }
  // The node parses it; a caller's typo must not reach it (or be blamed on it).
  if (!params.params_json.empty() && !nlohmann::json::accept(params.params_json)) {
    return "params_json is not valid JSON";
  }
  return "";
}

InvokeTicket Registry::Invoke(const InvokeParams& params, InvokeDone done) {
  return Start(Admit(params, std::move(done)), params);
}

InvokeTicket Registry::Admit(const InvokeParams& params, InvokeDone done) {
  const int64_t now = clock_.NowMs();
  Waiter w;
  w.done = std::move(done);
  w.base.idempotency_key =
      params.idempotency_key.empty() ? common::UniqueId() : params.idempotency_key;
  int64_t timeout = params.timeout_ms > 0 ? params.timeout_ms : options_.default_invoke_timeout_ms;
  timeout = std::min(timeout, options_.max_invoke_timeout_ms);
  w.base.effective_timeout_ms = timeout;
  w.deadline_ms = now + timeout;
  if (params.caller_remaining_ms >= 0) {
    const int64_t margin = std::min(options_.answer_margin_ms, params.caller_remaining_ms / 4);
    w.deadline_ms = std::min(w.deadline_ms, now + params.caller_remaining_ms - margin);
  }
  // The waiter exists before the store can settle the invoke, so no completion is missed.
  InvokeTicket ticket{common::UniqueId(), 0};
  absl::MutexLock lock(&mu_);
  w.id = ticket.waiter_id = next_waiter_id_++;
  waiters_[ticket.invoke_id].push_back(std::move(w));
  return ticket;
}

bool Registry::AnyoneWaits(const std::string& invoke_id) {
  absl::MutexLock lock(&mu_);
  auto it = waiters_.find(invoke_id);
  return it != waiters_.end() && !it->second.empty();
}

std::optional<Registry::Waiter> Registry::TakeWaiter(const InvokeTicket& ticket, bool* last) {
  absl::MutexLock lock(&mu_);
  auto it = waiters_.find(ticket.invoke_id);
  if (it == waiters_.end()) return std::nullopt;
  auto& list = it->second;
  auto w = std::find_if(list.begin(), list.end(),
                        [&](const Waiter& x) { return x.id == ticket.waiter_id; });
  if (w == list.end()) return std::nullopt;
  std::optional<Waiter> taken(std::move(*w));
  list.erase(w);
  const bool none_left = list.empty();
  if (none_left) waiters_.erase(it);
  if (last != nullptr) *last = none_left;
  return taken;
}

InvokeTicket Registry::Start(const InvokeTicket& admitted, const InvokeParams& params) {
  InvokeResult base;
  int64_t deadline = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = waiters_.find(admitted.invoke_id);
    if (it == waiters_.end() || it->second.empty() || it->second.front().id != admitted.waiter_id) {
      return InvokeTicket{};  // answered already (expired or cancelled before it started)
    }
    Waiter& w = it->second.front();
    w.started = true;
    base = w.base;
    deadline = w.deadline_ms;
  }
  // Answers this call unless someone else already did (the waiter expiry of a tick that ran
  // meanwhile): `done` runs exactly once.
  const auto answer = [&](InvokeResult result, bool count) {
    std::optional<Waiter> mine = TakeWaiter(admitted);
    if (!mine.has_value()) return;
    if (count) stats_.invokes[static_cast<int>(result.outcome.code)].Add();
    mine->done(result);
  };
  const int64_t now = clock_.NowMs();
  if (std::string invalid = InvalidInvoke(params); !invalid.empty()) {
    InvokeResult result = base;
    result.outcome = Failure(InvokeCode::kInvalid, std::move(invalid));
    answer(std::move(result), true);
    return InvokeTicket{};
  }
  // (A caller that asked for less than kMinStartMs in the first place still gets its try.)
  if (deadline - now < std::min(kMinStartMs, base.effective_timeout_ms)) {
    // Too late to reach the node and back: a typed answer while the caller still listens.
    InvokeResult result = base;
    result.outcome = Failure(InvokeCode::kTimeout,
                             "the invoke's deadline passed before it could start "
                             "(registry overloaded)");
    answer(std::move(result), true);
    return InvokeTicket{};
  }

  InvokeStart start;
  start.invoke_id = admitted.invoke_id;
  start.node_id = params.node_id;
  start.command = params.command;
  start.params_json = params.params_json;
  start.idempotency_key = params.idempotency_key.empty()
                              ? base.idempotency_key
                              : IdempotencyScope(params) + base.idempotency_key;
  start.remember_outcome = !params.idempotency_key.empty();
  start.node_idempotency_key = base.idempotency_key;
  if (!params.idempotency_key.empty()) {
    start.key_claim = absl::StrCat(absl::Hex(StableHash(params.caller)), ":", base.idempotency_key);
    start.fingerprint =
        absl::StrCat(params.command, ":", absl::Hex(StableHash(params.params_json)));
  }
  start.timeout_ms = base.effective_timeout_ms;
  start.deadline_ms = deadline;

  // A join can lose a race with the joined invoke's end; then the next try replays it or
  // starts afresh, so more than a couple of rounds means something is badly wrong.
  for (int attempt = 0; attempt < 16; ++attempt) {
    Effects effects;
    InvokeStartResult r;
    {
      Decision decision(*this, &effects);
      r = store_.StartInvoke(start, now, &effects);
      // Queued before any later decision (a supersede, the expiry's cancel) can queue its own.
      // The node sees the caller's own key, not the scope the store matches it in.
      Dispatch to_node = r.dispatch;
      to_node.idempotency_key = base.idempotency_key;
      // (A store that routes queued it in the edge's outbox itself, or failed it.)
      if (!routed_ && r.kind == InvokeStartResult::Kind::kDispatched &&
          !decision.SendInvoke(to_node, std::max<int64_t>(deadline - clock_.NowMs(), 1))) {
        store_.FailInvoke(r.dispatch.invoke_id, "", "",
                          Failure(InvokeCode::kDisconnected, "edge link down"), now, &effects);
      }
    }
    switch (r.kind) {
      case InvokeStartResult::Kind::kDispatched: {
        Apply(effects);
        if (routed_) (void)PumpRouted(0);
        if (AnyoneWaits(admitted.invoke_id)) return admitted;
        // The caller was answered while the store decided (it cancelled, or its deadline
        // passed: the store call can take seconds on an overloaded Redis) and no one joined
        // it since (as CancelInvoke's last waiter). Nobody waits for this invoke: the node must
        // stop, not run it. (Already settled: a no-op.)
        FailInStore(admitted.invoke_id,
                    Failure(InvokeCode::kCancelled,
                            "the caller was answered before the invoke was dispatched"));
        return InvokeTicket{};
      }
      case InvokeStartResult::Kind::kFailed:
      case InvokeStartResult::Kind::kReplayed: {
        InvokeResult result = base;
        result.outcome = r.outcome;
        result.replayed = r.kind == InvokeStartResult::Kind::kReplayed;
        result.invoke_id = result.replayed ? r.dispatch.invoke_id : "";
        Apply(effects);
        const bool count = !result.replayed;
        answer(std::move(result), count);
        return InvokeTicket{};
      }
      case InvokeStartResult::Kind::kJoined: {
        absl::MutexLock lock(&mu_);
        auto joined = waiters_.find(r.dispatch.invoke_id);
        if (joined == waiters_.end()) {
          // A store that routes recorded this replica as waiting: the outcome comes to its
          // inbox, even if the invoke was started (and is awaited) on another replica.
          if (!routed_) break;  // it just ended here: try again (replay)
          joined = waiters_.try_emplace(r.dispatch.invoke_id).first;
        }
        auto mine = waiters_.find(start.invoke_id);
        if (mine == waiters_.end()) return InvokeTicket{};  // answered already (expired)
        Waiter w = std::move(mine->second.front());
        w.base.effective_timeout_ms = r.dispatch.timeout_ms;
        // Each caller ends by its own deadline; a later one is capped by the joined invoke's
        // (whose end answers it anyway).
        if (r.dispatch.deadline_ms > 0) {
          w.ends_before_invoke = w.deadline_ms > 0 && w.deadline_ms < r.dispatch.deadline_ms;
          w.deadline_ms = w.deadline_ms > 0 ? std::min(w.deadline_ms, r.dispatch.deadline_ms)
                                            : r.dispatch.deadline_ms;
        }
        waiters_.erase(mine);
        joined->second.push_back(std::move(w));
        return InvokeTicket{r.dispatch.invoke_id, admitted.waiter_id};
      }
    }
  }
  InvokeResult result = base;
  result.outcome = Failure(InvokeCode::kDisconnected, "invoke could not be joined; retry");
  answer(std::move(result), false);
  return InvokeTicket{};
}

void Registry::CancelInvoke(const InvokeTicket& ticket) {
  bool last = false;
  std::optional<Waiter> mine = TakeWaiter(ticket, &last);
  if (!mine.has_value()) return;
  InvokeResult result = std::move(mine->base);
  result.invoke_id = ticket.invoke_id;
  result.outcome = Failure(InvokeCode::kCancelled, "cancelled by the caller");
  // The last caller gone: the invoke itself ends (never started: no store holds it).
  if (last && mine->started) FailInStore(ticket.invoke_id, result.outcome);
  mine->done(result);
}

void Registry::FailInStore(const std::string& invoke_id, const InvokeOutcome& outcome) {
  Effects effects;
  {
    Decision decision(*this, &effects);
    store_.FailInvoke(invoke_id, "", "", outcome, clock_.NowMs(), &effects);
  }
  Apply(effects);
}

// --- Presence --------------------------------------------------------------------------------

absl::StatusOr<uint64_t> Registry::Watch(uint64_t from_revision, PresenceFn fn,
                                         PresenceErrorFn on_error) {
  absl::MutexLock lock(&publish_mu_);
  Watcher w;
  w.after = published_;
  if (from_revision != 0) {
    w.after = from_revision;
    // Backlog up to what has been published; later events come from PumpPresence.
    uint64_t cursor = from_revision;
    while (cursor < published_) {
      auto events = store_.ReadPresence(cursor, kPumpBatch);
      if (!events.ok()) return events.status();
      if (events->empty()) break;
      for (const PresenceEvent& e : *events) {
        if (e.revision > published_) break;
        fn(e);
        w.after = cursor = e.revision;
      }
    }
    if (from_revision > published_) {
      auto check = store_.ReadPresence(from_revision, 0);
      if (!check.ok()) return check.status();
    }
  }
  w.fn = std::move(fn);
  w.on_error = std::move(on_error);
  const uint64_t id = next_watch_id_++;
  watchers_[id] = std::move(w);
  stats_.watchers.store(static_cast<int64_t>(watchers_.size()));
  return id;
}

void Registry::Unwatch(uint64_t watch_id) {
  absl::MutexLock lock(&publish_mu_);
  watchers_.erase(watch_id);
  stats_.watchers.store(static_cast<int64_t>(watchers_.size()));
}

void Registry::Publish(const std::vector<PresenceEvent>& events) {
  {
    absl::MutexLock lock(&publish_mu_);
    if (watchers_.empty()) {
      // Nobody to tell: no read of the history (a watcher that comes later starts from here
      // or reads its backlog from the store).
      published_ = std::max(published_, events.back().revision);
      return;
    }
    // The common case: this decision's events follow what was published. Deliver them as
    // they are instead of reading them back from the store.
    size_t i = 0;
    while (i < events.size() && events[i].revision <= published_) ++i;
    bool next = i < events.size() && events[i].revision == published_ + 1;
    for (size_t j = i + 1; next && j < events.size(); ++j) {
      next = events[j].revision == events[j - 1].revision + 1;
    }
    if (next || i == events.size()) {
      for (; i < events.size(); ++i) DeliverLocked(events[i]);
      return;
    }
  }
  PumpPresence();  // a gap: another decision (here or on another replica) came in between
}

void Registry::PumpPresence() {
  absl::MutexLock lock(&publish_mu_);
  for (;;) {
    auto events = store_.ReadPresence(published_, kPumpBatch);
    if (!events.ok() && events.status().code() != absl::StatusCode::kOutOfRange) {
      return;  // the store is unreachable: nothing was missed, the next pump continues
    }
    if (!events.ok()) {
      // More changes than the history holds happened since the last pump (one huge decision,
      // or a burst): no watcher can be served in order any more. End every watch with the
      // error instead of letting them miss events silently; they re-list and watch again.
      common::Log(common::LogLevel::kWarn, "presence_watchers_reset",
                  {{"watchers", absl::StrCat(watchers_.size())}});
      for (auto& [id, w] : watchers_) {
        if (w.on_error) w.on_error(events.status());
      }
      watchers_.clear();
      stats_.watchers.store(0);
      published_ = store_.HeadRevision();
      return;
    }
    if (events->empty()) return;
    for (const PresenceEvent& e : *events) DeliverLocked(e);
  }
}

void Registry::DeliverLocked(const PresenceEvent& e) {
  for (auto& [id, w] : watchers_) {
    if (e.revision <= w.after) continue;
    w.after = e.revision;
    w.fn(e);
  }
  published_ = e.revision;
}

// --- Plumbing --------------------------------------------------------------------------------

absl::StatusOr<Device> Registry::ApprovePairing(const std::string& request_id,
                                                const std::string& approved_by) {
  return store_.ApprovePairing(request_id, approved_by, clock_.NowMs());
}

absl::StatusOr<int> Registry::RevokeDevice(const std::string& node_id) {
  Effects effects;
  absl::StatusOr<int> result;
  {
    Decision decision(*this, &effects);
    result = store_.RevokeDevice(node_id, clock_.NowMs(), &effects);
  }
  Apply(effects);
  return result;
}

void Registry::Tick() {
  MaybeEndRecovery();
  // No expiry while recovering: a lease, deadline or grace must not end a connection that an
  // edge has not reported yet. What is due runs at the first tick after recovery.
  if (recovering_.load()) return;
  RenewLiveLeases();  // before expiry: a stream read from within the TTL is not lost
  Effects effects;
  {
    Decision decision(*this, &effects);
    store_.Expire(clock_.NowMs(), &effects);
  }
  Apply(effects);
  if (routed_) MarkDelivered();
  // Changes decided by other replicas sharing the store reach this replica's watchers from the
  // shared history, in revision order, at most a tick late.
  CatchUpPresence();
}

void Registry::ExpireWaiters() {
  const int64_t now = clock_.NowMs();
  std::vector<std::pair<InvokeDone, InvokeResult>> calls;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      auto& list = it->second;
      for (auto w = list.begin(); w != list.end();) {
        const bool slack = w->started && !w->ends_before_invoke;
        if (w->deadline_ms <= 0 || now < w->deadline_ms + (slack ? kWaiterSlackMs : 0)) {
          ++w;
          continue;
        }
        InvokeResult r = std::move(w->base);
        r.invoke_id = it->first;
        r.outcome = Failure(
            InvokeCode::kTimeout,
            !w->started             ? "the registry could not start the invoke before its deadline "
                                      "(overloaded)"
            : w->ends_before_invoke ? "this caller's deadline passed (the invoke it joined goes on "
                                      "for its other callers)"
                                    : "no outcome reached this registry replica by the deadline");
        calls.emplace_back(std::move(w->done), std::move(r));
        w = list.erase(w);
      }
      if (list.empty()) {
        sent_via_.erase(it->first);
        waiters_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  for (auto& [done, result] : calls) {
    stats_.invokes[static_cast<int>(InvokeCode::kTimeout)].Add();
    done(result);
  }
}

void Registry::CatchUpPresence() {
  const uint64_t head = store_.HeadRevision();  // 0 when the store is unreachable
  {
    absl::MutexLock lock(&publish_mu_);
    if (head <= published_) return;
    if (watchers_.empty()) {  // nobody to tell: skip the reads
      published_ = head;
      return;
    }
  }
  PumpPresence();
}

std::shared_ptr<Registry::Outbox> Registry::OutboxFor(const std::string& edge_id) {
  absl::MutexLock lock(&mu_);
  auto it = routes_.find(edge_id);
  return it == routes_.end() ? nullptr : it->second.outbox;
}

// --- Ordered delivery to edges ---------------------------------------------------------------

void Registry::Outbox::PushInvoke(const Dispatch& dispatch, int64_t remaining_ms) {
  absl::MutexLock lock(&mu_);
  Item item;
  item.invoke = true;
  item.dispatch = dispatch;
  item.remaining_ms = remaining_ms;
  queue_.push_back(std::move(item));
}

void Registry::Outbox::PushCommand(const EdgeCommand& command) {
  absl::MutexLock lock(&mu_);
  Item item;
  item.command = command;
  queue_.push_back(std::move(item));
}

void Registry::Outbox::Drain() {
  for (;;) {
    std::deque<Item> batch;
    {
      absl::MutexLock lock(&mu_);
      if (draining_ || queue_.empty()) return;  // the drainer at work sends ours too
      draining_ = true;
      batch.swap(queue_);
    }
    for (const Item& item : batch) {
      if (item.invoke) {
        sink_->SendInvoke(item.dispatch, item.remaining_ms);
      } else {
        sink_->SendCommand(item.command);
      }
    }
    absl::MutexLock lock(&mu_);
    draining_ = false;
  }
}

Registry::Decision::Decision(Registry& registry, Effects* effects)
    : registry_(registry), effects_(effects) {
  // A store that routes keeps the decision order itself (each decision appends to the edges'
  // outboxes atomically): decisions then run side by side.
  if (!registry_.routed_) registry_.decide_mu_.Lock();
}

bool Registry::Decision::SendInvoke(const Dispatch& dispatch, int64_t remaining_ms) {
  std::shared_ptr<Outbox> outbox;
  {
    absl::MutexLock lock(&registry_.mu_);
    auto it = registry_.routes_.find(dispatch.edge_id);
    if (it == registry_.routes_.end()) return false;
    outbox = it->second.outbox;
    registry_.sent_via_[dispatch.invoke_id] = outbox->sink();
  }
  outbox->PushInvoke(dispatch, remaining_ms);
  touched_.push_back(std::move(outbox));
  return true;
}

Registry::Decision::~Decision() {
  if (registry_.routed_) {
    // The store queued them in the edges' outboxes, in decision order across replicas.
    if (!effects_->to_edges.empty()) (void)registry_.PumpRouted(0);
    return;
  }
  for (const EdgeCommand& c : effects_->to_edges) {
    std::shared_ptr<Outbox> outbox = registry_.OutboxFor(c.edge_id);
    if (outbox == nullptr) continue;  // no stream: the edge's resync repairs it
    outbox->PushCommand(c);
    touched_.push_back(std::move(outbox));
  }
  registry_.decide_mu_.Unlock();
  for (const std::shared_ptr<Outbox>& outbox : touched_) outbox->Drain();
}

// --- Routing between replicas ----------------------------------------------------------------

absl::Status Registry::PumpRouted(int64_t wait_ms) {
  if (!routed_) return absl::OkStatus();
  {
    absl::MutexLock lock(&mu_);
    if (pumping_) {
      pump_again_ = true;
      return absl::OkStatus();
    }
    pumping_ = true;
  }
  for (;;) {
    std::vector<OutboxPosition> positions;
    absl::flat_hash_map<std::string, std::shared_ptr<Outbox>> outboxes;
    std::string inbox_after;
    {
      absl::MutexLock lock(&mu_);
      pump_again_ = false;
      for (const auto& [edge_id, route] : routes_) {
        if (!route.held) continue;
        positions.push_back(OutboxPosition{edge_id, route.position});
        outboxes[edge_id] = route.outbox;
      }
      inbox_after = inbox_position_;
    }
    absl::StatusOr<RoutedBatch> batch = store_.ReadRouted(positions, inbox_after, wait_ms);
    if (batch.ok()) {
      const int64_t now = clock_.NowMs();
      absl::flat_hash_map<std::string, std::string> last;  // edge -> last position read
      std::vector<std::shared_ptr<Outbox>> touched;
      for (const RoutedMessage& m : batch->to_edges) {
        last[m.edge_id] = m.position;
        auto it = outboxes.find(m.edge_id);
        if (it == outboxes.end()) continue;
        const std::shared_ptr<Outbox>& outbox = it->second;
        {
          absl::MutexLock lock(&mu_);
          if (m.invoke) {
            sent_via_[m.dispatch.invoke_id] = outbox->sink();
          } else if (m.command.kind == EdgeCommand::Kind::kCancel) {
            sent_via_.erase(m.command.invoke_id);
          }
        }
        if (m.invoke) {
          outbox->PushInvoke(m.dispatch, std::max<int64_t>(m.dispatch.deadline_ms - now, 1));
        } else {
          outbox->PushCommand(m.command);
        }
        if (touched.empty() || touched.back() != outbox) touched.push_back(outbox);
      }
      {
        absl::MutexLock lock(&mu_);
        for (const auto& [edge_id, position] : last) {
          auto it = routes_.find(edge_id);
          // Only the stream it was read for: a route replaced meanwhile reads on its own.
          if (it != routes_.end() && it->second.outbox == outboxes[edge_id]) {
            it->second.position = position;
          }
        }
        inbox_position_ = batch->inbox_position;
      }
      for (const std::shared_ptr<Outbox>& outbox : touched) outbox->Drain();
      CompleteWaiters(batch->settled);
    }
    absl::MutexLock lock(&mu_);
    if (!batch.ok() || !pump_again_) {
      pumping_ = false;
      return batch.status();
    }
    wait_ms = 0;  // someone queued more while this pump read: read again at once
  }
}

void Registry::CompleteWaiters(std::vector<SettledInvoke>& settled) {
  std::vector<std::pair<InvokeDone, InvokeResult>> calls;
  {
    absl::MutexLock lock(&mu_);
    for (SettledInvoke& s : settled) {
      sent_via_.erase(s.dispatch.invoke_id);
      auto it = waiters_.find(s.dispatch.invoke_id);
      if (it == waiters_.end()) continue;
      for (Waiter& w : it->second) {
        InvokeResult r = std::move(w.base);
        r.invoke_id = s.dispatch.invoke_id;
        r.outcome = s.outcome;
        calls.emplace_back(std::move(w.done), std::move(r));
      }
      waiters_.erase(it);
    }
  }
  for (auto& [done, result] : calls) done(result);
}

void Registry::MarkDelivered() {
  std::vector<OutboxPosition> delivered;
  std::string inbox;
  {
    absl::MutexLock lock(&mu_);
    // Every held edge, moved or not: the answer also says which ones another replica took.
    for (const auto& [edge_id, route] : routes_) {
      if (!route.held) continue;
      delivered.push_back(OutboxPosition{
          edge_id, route.position != route.recorded ? route.position : std::string()});
    }
    if (inbox_position_ != inbox_recorded_) inbox = inbox_position_;
  }
  if (delivered.empty() && inbox.empty()) return;
  auto lost = store_.MarkDelivered(delivered, inbox);
  if (!lost.ok()) return;  // recorded at a later tick
  absl::MutexLock lock(&mu_);
  if (!inbox.empty()) inbox_recorded_ = inbox;
  for (const OutboxPosition& d : delivered) {
    auto it = routes_.find(d.edge_id);
    if (it != routes_.end() && !d.position.empty()) it->second.recorded = d.position;
  }
  for (const std::string& edge_id : *lost) {
    auto it = routes_.find(edge_id);
    if (it == routes_.end() || !it->second.held) continue;
    // The edge attached through another replica: its stream here is stale. Stop delivering to
    // it (two holders would deliver twice); its end will detach it.
    it->second.held = false;
    common::Log(common::LogLevel::kWarn, "edge_held_elsewhere", {{"edge_id", edge_id}});
  }
}

void Registry::Count(const Effects& effects) {
  const int64_t now = clock_.NowMs();
  for (const SettledInvoke& s : effects.settled) {
    stats_.invokes[static_cast<int>(s.outcome.code)].Add();
    if (s.dispatch.started_ms > 0) {
      stats_.invoke_latency_ms.Observe(static_cast<double>(now - s.dispatch.started_ms));
    }
  }
  for (const EdgeCommand& c : effects.to_edges) {
    if (c.kind == EdgeCommand::Kind::kClose && c.reason == kReasonSuperseded) {
      stats_.superseded_retired.Add();
    }
  }
  for (const PresenceEvent& e : effects.presence) {
    const std::string gen = absl::StrCat(e.generation);
    switch (e.kind) {
      case PresenceKind::kConnected:
        stats_.connected_nodes.fetch_add(1);
        common::Log(common::LogLevel::kDebug, "node_connected",
                    {{"node_id", e.node_id},
                     {"conn_id", e.conn_id},
                     {"edge_id", e.edge_id},
                     {"generation", gen}});
        break;
      case PresenceKind::kReplaced:
        common::Log(common::LogLevel::kDebug, "node_replaced",
                    {{"node_id", e.node_id},
                     {"conn_id", e.conn_id},
                     {"edge_id", e.edge_id},
                     {"generation", gen}});
        break;
      case PresenceKind::kDisconnected:
        stats_.connected_nodes.fetch_sub(1);
        for (int i = 0; i < 4; ++i) {
          if (e.reason == kDisconnectReasons[i]) stats_.disconnects[i].Add();
        }
        common::Log(common::LogLevel::kInfo, "node_disconnected",
                    {{"node_id", e.node_id},
                     {"conn_id", e.conn_id},
                     {"edge_id", e.edge_id},
                     {"generation", gen},
                     {"reason", e.reason}});
        break;
    }
  }
}

void Registry::Apply(Effects& effects) {
  Count(effects);
  // Edge messages were queued and sent by the decision (see Decision), in decision order.
  // (With a store that routes, callers on other replicas get theirs through their inbox.)
  CompleteWaiters(effects.settled);
  if (!effects.presence.empty()) Publish(effects.presence);
}

}  // namespace tether::registry
