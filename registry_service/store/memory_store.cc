#include "registry_service/store/memory_store.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/ids.h"

namespace tether::registry {
namespace {

// Queues a command for the edge holding a connection; returns it for the optional fields.
EdgeCommand& Tell(Effects* effects, EdgeCommand::Kind kind, const std::string& edge_id,
                  const std::string& conn_id, const std::string& node_id,
                  const std::string& reason) {
  EdgeCommand& cmd = effects->to_edges.emplace_back();
  cmd.kind = kind;
  cmd.edge_id = edge_id;
  cmd.conn_id = conn_id;
  cmd.node_id = node_id;
  cmd.reason = reason;
  return cmd;
}

bool Contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

}  // namespace

MemoryStore::MemoryStore(const StoreOptions& options, int64_t start_ms)
    : options_(options),
      last_generation_(static_cast<uint64_t>(start_ms) * 1000),
      head_revision_(static_cast<uint64_t>(start_ms) * 1000) {}

std::string MemoryStore::IdemKey(const std::string& node_id, const std::string& key) {
  std::string k = node_id;
  k.push_back('\0');
  k += key;
  return k;
}

uint64_t MemoryStore::NextGeneration() {
  last_generation_ += 1;
  return last_generation_;
}

void MemoryStore::Publish(PresenceEvent event, int64_t now_ms, Effects* effects) {
  event.revision = ++head_revision_;
  event.time_ms = now_ms;
  history_.push_back(event);
  while (history_.size() > options_.presence_history) history_.pop_front();
  effects->presence.push_back(std::move(event));
}

bool MemoryStore::Paired(const std::string& node_id) const { return devices_.contains(node_id); }

MemoryStore::List MemoryStore::Intern(const std::vector<std::string>& list) {
  static const auto* const kEmpty = new List(std::make_shared<const std::vector<std::string>>());
  if (list.empty()) return *kEmpty;
  // Length-prefixed: a node may put any byte in a command name (a NUL-joined key let one
  // node's ["a\0b"] stand for another's ["a", "b"]).
  std::string key;
  for (const std::string& x : list) absl::StrAppend(&key, x.size(), ":", x);
  List& shared = lists_[key];
  if (shared == nullptr) shared = std::make_shared<const std::vector<std::string>>(list);
  List result = shared;
  if (lists_.size() >= 2 * lists_swept_at_) {
    for (auto it = lists_.begin(); it != lists_.end();) {
      if (it->second.use_count() == 1) {
        lists_.erase(it++);
      } else {
        ++it;
      }
    }
    lists_swept_at_ = std::max<size_t>(lists_.size(), 64);
  }
  return result;
}

NodeView MemoryStore::View(const std::string& node_id, const NodeRecord& node) const {
  NodeView v;
  v.node_id = node_id;
  v.client = node.client;
  if (node.caps != nullptr) v.client.caps = *node.caps;  // (null until first owned)
  if (node.commands != nullptr) v.client.commands = *node.commands;
  v.public_key = node.public_key;
  v.remote_addr = node.remote_addr;
  v.connected = !node.owner.empty();
  v.conn_id = node.owner;
  v.edge_id = node.edge_id;
  v.generation = node.generation;
  v.connected_at_ms = node.connected_at_ms;
  v.last_seen_ms = node.last_seen_ms;
  v.paired = Paired(node_id);
  return v;
}

MemoryStore::Conn& MemoryStore::AddConn(const ConnectionSpec& spec, const std::string& edge_id,
                                        uint64_t generation, Lease& lease) {
  auto entry = conns_.try_emplace(spec.conn_id).first;
  Conn& conn = entry->second;
  conn.id = &entry->first;
  conn.node_id = spec.node_id;
  conn.edge_id = edge_id;
  conn.generation = generation;
  lease.conns.insert(spec.conn_id);
  return conn;
}

void MemoryStore::InstallOwner(const std::string& node_id, NodeRecord& node, Conn& conn,
                               const ConnectionSpec& spec, int64_t now_ms, Effects* effects) {
  if (node.idle_since_ms != 0) {  // owned again: no longer up for pruning
    idle_.erase({node.idle_since_ms, node_id});
    node.idle_since_ms = 0;
  }
  PresenceEvent event;
  event.node_id = node_id;
  event.kind = PresenceKind::kConnected;
  if (!node.owner.empty()) {
    auto old = conns_.find(node.owner);
    if (old != conns_.end()) SupersedeConn(old->second, now_ms, effects);
    event.kind = PresenceKind::kReplaced;
  }
  node.owner = conn.conn_id();
  node.edge_id = conn.edge_id;
  node.generation = conn.generation;
  const ClientMetadata& c = spec.client;
  node.client.client_id = c.client_id;
  node.client.display_name = c.display_name;
  node.client.version = c.version;
  node.client.platform = c.platform;
  node.client.device_family = c.device_family;
  node.client.mode = c.mode;
  node.client.instance_id = c.instance_id;
  node.caps = Intern(c.caps);
  node.commands = Intern(c.commands);
  node.public_key = spec.public_key;
  node.remote_addr = spec.remote_addr;
  node.connected_at_ms = now_ms;
  node.last_seen_ms = now_ms;
  event.conn_id = conn.conn_id();
  event.edge_id = conn.edge_id;
  event.generation = conn.generation;
  Publish(std::move(event), now_ms, effects);
}

void MemoryStore::SupersedeConn(Conn& conn, int64_t now_ms, Effects* effects) {
  conn.superseded = true;
  if (conn.pending.empty()) {
    MaybeRetire(conn, effects);
    return;
  }
  conn.retire_at_ms = now_ms + options_.superseded_grace_ms;
  retire_at_.insert({conn.retire_at_ms, conn.conn_id()});
  EdgeCommand& cmd = Tell(effects, EdgeCommand::Kind::kSuperseded, conn.edge_id, conn.conn_id(),
                          conn.node_id, kReasonSuperseded);
  cmd.grace_ms = options_.superseded_grace_ms;
}

void MemoryStore::MaybeRetire(Conn& conn, Effects* effects) {
  if (!conn.superseded || conn.retire_sent || !conn.pending.empty()) return;
  conn.retire_sent = true;
  retire_at_.erase({conn.retire_at_ms, conn.conn_id()});
  Tell(effects, EdgeCommand::Kind::kClose, conn.edge_id, conn.conn_id(), conn.node_id,
       kReasonSuperseded);
}

bool MemoryStore::Finish(const std::string& invoke_id, InvokeOutcome outcome, int64_t now_ms,
                         Effects* effects) {
  auto it = pending_.find(invoke_id);
  if (it == pending_.end()) return false;
  Dispatch dispatch = std::move(it->second.dispatch);
  pending_.erase(it);
  deadlines_.erase({dispatch.deadline_ms, invoke_id});
  const std::string key = IdemKey(dispatch.node_id, dispatch.idempotency_key);
  inflight_keys_.erase(key);
  outcome.conn_id = dispatch.conn_id;
  outcome.generation = dispatch.generation;
  // Replay only what the node itself answered: a cancel or a delivery failure must not block a
  // retry under the same key.
  const bool answered = outcome.code == InvokeCode::kOk || outcome.code == InvokeCode::kNodeError;
  if (dispatch.remember_outcome && answered &&
      outcome.payload_json.size() <= kMaxRememberedPayloadBytes) {
    auto old = finished_keys_.find(key);
    if (old != finished_keys_.end()) finished_bytes_ -= old->second.outcome.payload_json.size();
    finished_keys_[key] = Finished{outcome, invoke_id, now_ms + options_.idempotency_window_ms};
    finished_order_.push_back({now_ms + options_.idempotency_window_ms, key});
    finished_bytes_ += outcome.payload_json.size();
    // Bounded by bytes too, not only by time: the oldest outcomes are forgotten first (a retry
    // of one of those runs again instead of replaying).
    while (finished_bytes_ > options_.idempotency_max_bytes && !finished_order_.empty()) {
      auto it = finished_keys_.find(finished_order_.front().second);
      // A key finished again has a newer entry further back: this one is stale.
      if (it != finished_keys_.end() && it->second.expires_ms == finished_order_.front().first) {
        finished_bytes_ -= it->second.outcome.payload_json.size();
        finished_keys_.erase(it);
        ++drops_.outcomes_forgotten;
      }
      finished_order_.pop_front();
    }
  }
  auto conn = conns_.find(dispatch.conn_id);
  if (conn != conns_.end()) {
    conn->second.pending.erase(invoke_id);
    MaybeRetire(conn->second, effects);
  }
  effects->settled.push_back(SettledInvoke{std::move(dispatch), std::move(outcome)});
  return true;
}

CloseResult MemoryStore::RemoveConn(const std::string& conn_id, const std::string& reason,
                                    int64_t now_ms, Effects* effects) {
  CloseResult result;
  auto it = conns_.find(conn_id);
  if (it == conns_.end()) return result;
  result.known = true;
  Conn& conn = it->second;
  result.node_id = conn.node_id;
  conn.retire_sent = true;  // it is going away: no retirement command
  retire_at_.erase({conn.retire_at_ms, conn_id});
  auto pending = std::exchange(conn.pending, {});
  for (const std::string& invoke_id : pending) {
    Finish(invoke_id, Failure(InvokeCode::kDisconnected, "connection closed (" + reason + ")"),
           now_ms, effects);
  }
  auto node = nodes_.find(conn.node_id);
  if (node != nodes_.end() && node->second.owner == conn_id) {
    result.was_owner = true;
    node->second.owner.clear();
    node->second.last_seen_ms = now_ms;
    node->second.idle_since_ms = now_ms;
    idle_.insert({now_ms, node->first});
    PresenceEvent event;
    event.node_id = conn.node_id;
    event.kind = PresenceKind::kDisconnected;
    event.reason = reason;
    event.conn_id = conn_id;
    event.edge_id = conn.edge_id;
    event.generation = conn.generation;
    Publish(std::move(event), now_ms, effects);
  }
  auto lease = leases_.find(conn.edge_id);
  if (lease != leases_.end()) lease->second.conns.erase(conn_id);
  conns_.erase(it);
  return result;
}

// --- Edges -----------------------------------------------------------------------------------

absl::Status MemoryStore::AttachEdge(const std::string& edge_id, const std::string& epoch,
                                     int64_t now_ms, Effects* effects) {
  if (edge_id.empty() || epoch.empty()) {
    return absl::InvalidArgumentError("attach needs an edge id and an epoch");
  }
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(edge_id);
  if (it != leases_.end() && it->second.epoch != epoch) {
    // The edge restarted: its previous process's sockets are gone.
    auto old = std::exchange(it->second.conns, {});
    for (const std::string& conn_id : old) RemoveConn(conn_id, kReasonEdgeLost, now_ms, effects);
  }
  Lease& lease = leases_[edge_id];
  lease.epoch = epoch;
  lease.expires_ms = now_ms + options_.lease_ttl_ms;
  return absl::OkStatus();
}

absl::Status MemoryStore::RenewLease(const std::string& edge_id, const std::string& epoch,
                                     int64_t now_ms) {
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(edge_id);
  if (it == leases_.end() || it->second.epoch != epoch) {
    return absl::FailedPreconditionError("edge lease lapsed or replaced: attach again");
  }
  it->second.expires_ms = now_ms + options_.lease_ttl_ms;
  return absl::OkStatus();
}

absl::Status MemoryStore::DrainEdge(const std::string& edge_id, const std::string& epoch,
                                    int64_t now_ms, Effects* effects) {
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(edge_id);
  if (it == leases_.end() || it->second.epoch != epoch) {
    return absl::FailedPreconditionError("edge not attached with this epoch");
  }
  auto conns = std::exchange(it->second.conns, {});
  for (const std::string& conn_id : conns) {
    RemoveConn(conn_id, kReasonEdgeDrain, now_ms, effects);
  }
  leases_.erase(edge_id);
  return absl::OkStatus();
}

absl::StatusOr<ResyncResult> MemoryStore::Resync(const std::string& edge_id,
                                                 const std::string& epoch,
                                                 const std::vector<LiveConnection>& live,
                                                 int64_t now_ms, Effects* effects) {
  absl::MutexLock lock(&mu_);
  auto lease_it = leases_.find(edge_id);
  if (lease_it == leases_.end() || lease_it->second.epoch != epoch) {
    return absl::FailedPreconditionError("resync before attach");
  }
  ResyncResult result;
  absl::flat_hash_set<std::string> reported;
  for (const LiveConnection& l : live) reported.insert(l.spec.conn_id);
  // Connections we hold for this edge that it no longer has died while the link was down.
  std::vector<std::string> gone;
  for (const std::string& conn_id : lease_it->second.conns) {
    if (!reported.contains(conn_id)) gone.push_back(conn_id);
  }
  for (const std::string& conn_id : gone) {
    RemoveConn(conn_id, kReasonDisconnect, now_ms, effects);
    ++result.closed;
  }
  for (const LiveConnection& l : live) {
    auto close_it = [&](const char* reason) {
      Tell(effects, EdgeCommand::Kind::kClose, edge_id, l.spec.conn_id, l.spec.node_id, reason);
      ++result.closed;
    };
    auto known = conns_.find(l.spec.conn_id);
    if (known != conns_.end()) {
      if (known->second.edge_id == edge_id) {
        ++result.kept;
        Conn& c = known->second;
        if (c.superseded) {
          // Its retirement may have been lost with the link: say it again.
          if (c.pending.empty()) {
            c.retire_sent = true;
            Tell(effects, EdgeCommand::Kind::kClose, edge_id, c.conn_id(), c.node_id,
                 kReasonSuperseded);
          } else {
            EdgeCommand& cmd = Tell(effects, EdgeCommand::Kind::kSuperseded, edge_id, c.conn_id(),
                                    c.node_id, kReasonSuperseded);
            cmd.grace_ms = std::max<int64_t>(c.retire_at_ms - now_ms, 0);
          }
        }
      } else {
        close_it(kReasonSuperseded);  // a conn id claimed by two edges: trust neither copy
      }
      continue;
    }
    last_generation_ = std::max(last_generation_, l.generation);
    if (l.superseded) {
      close_it(kReasonSuperseded);  // replaced before; never an owner again
      continue;
    }
    // The generation proves an earlier grant; after a restart of an in-memory registry that
    // grant (and its pairing) is only known from the edge's report.
    if (!Paired(l.spec.node_id)) {
      if (l.generation == 0 || l.generation <= revoked_floor_ ||
          revoked_.contains(l.spec.node_id)) {
        close_it(kReasonRevoked);
        continue;
      }
      devices_[l.spec.node_id].Approve(l.spec.public_key, now_ms, "resync");
    }
    NodeRecord& node = nodes_[l.spec.node_id];
    uint64_t newest = node.generation;
    if (!node.owner.empty()) newest = conns_[node.owner].generation;
    if (newest > l.generation) {
      close_it(kReasonSuperseded);  // a newer connection was granted since
      continue;
    }
    Conn& conn = AddConn(l.spec, edge_id, l.generation, lease_it->second);
    InstallOwner(l.spec.node_id, node, conn, l.spec, now_ms, effects);
    ++result.kept;
  }
  return result;
}

// --- Connections -----------------------------------------------------------------------------

absl::StatusOr<RegisterResult> MemoryStore::Register(const ConnectionSpec& spec, int64_t now_ms,
                                                     Effects* effects) {
  if (spec.conn_id.empty() || spec.node_id.empty()) {
    return absl::InvalidArgumentError("register needs a conn id and a node id");
  }
  absl::MutexLock lock(&mu_);
  auto lease = leases_.find(spec.edge_id);
  if (lease == leases_.end() || lease->second.epoch != spec.edge_epoch) {
    return absl::FailedPreconditionError("edge not attached with this epoch");
  }
  if (conns_.contains(spec.conn_id)) {
    return absl::AlreadyExistsError("conn id already registered");
  }
  RegisterResult result;
  auto device = devices_.find(spec.node_id);
  if (!spec.shared_token_ok) {
    if (device == devices_.end() || spec.device_token.empty() ||
        device->second.token != spec.device_token) {
      result.error_code = "INVALID_REQUEST";
      result.error_message = "unauthorized: device token mismatch";
      result.details_code = "AUTH_DEVICE_TOKEN_MISMATCH";
      return result;
    }
  }
  if (device == devices_.end()) {
    if (options_.auto_approve_all || (options_.auto_approve_loopback && spec.loopback)) {
      devices_[spec.node_id].Approve(spec.public_key, now_ms, "auto");
      revoked_.erase(spec.node_id);
      device = devices_.find(spec.node_id);
    } else {
      std::string request_id;
      if (auto known = pairing_by_node_.find(spec.node_id); known != pairing_by_node_.end()) {
        request_id = known->second;
      } else if (pairing_.size() >= options_.max_pairing_requests) {
        // Anyone with the shared token can mint keys: bound what they can make us keep.
        ++drops_.pairing_refused;
        result.error_code = "UNAVAILABLE";
        result.error_message = "too many pending pairing requests; try again later";
        return result;
      } else {
        request_id = common::RandomUuid();
        pairing_by_node_[spec.node_id] = request_id;
      }
      PairingRequest& req = pairing_[request_id];
      req.request_id = request_id;
      req.node_id = spec.node_id;
      req.public_key = spec.public_key;
      req.display_name = spec.client.display_name;
      req.platform = spec.client.platform;
      req.commands = spec.client.commands;
      req.remote_addr = spec.remote_addr;
      if (req.created_at_ms == 0) req.created_at_ms = now_ms;
      result.error_code = "NOT_PAIRED";
      result.error_message = "pairing required";
      result.details_code = "PAIRING_REQUIRED";
      result.pairing_request_id = request_id;
      return result;
    }
  }
  if (device->second.token.empty()) device->second.token = common::RandomToken();

  Conn& conn = AddConn(spec, spec.edge_id, NextGeneration(), lease->second);
  InstallOwner(spec.node_id, nodes_[spec.node_id], conn, spec, now_ms, effects);

  result.granted = true;
  result.generation = conn.generation;
  result.device_token = device->second.token;
  return result;
}

CloseResult MemoryStore::Close(const std::string& edge_id, const std::string& conn_id,
                               int64_t now_ms, Effects* effects) {
  absl::MutexLock lock(&mu_);
  auto it = conns_.find(conn_id);
  if (it == conns_.end() || it->second.edge_id != edge_id) return CloseResult{};
  return RemoveConn(conn_id, kReasonDisconnect, now_ms, effects);
}

void MemoryStore::Touch(const std::string& conn_id, int64_t now_ms) {
  absl::MutexLock lock(&mu_);
  auto it = conns_.find(conn_id);
  if (it == conns_.end()) return;
  auto node = nodes_.find(it->second.node_id);
  if (node != nodes_.end() && node->second.owner == conn_id) node->second.last_seen_ms = now_ms;
}

// --- Invokes ---------------------------------------------------------------------------------

InvokeStartResult MemoryStore::StartInvoke(const InvokeStart& start, int64_t now_ms,
                                           Effects* effects) {
  absl::MutexLock lock(&mu_);
  InvokeStartResult result;
  const std::string key = IdemKey(start.node_id, start.idempotency_key);
  const std::string claim = IdemKey(start.node_id, start.key_claim);
  if (!start.key_claim.empty()) {
    auto c = claims_.find(claim);
    if (c != claims_.end() && c->second.expires_ms > now_ms &&
        c->second.fingerprint != start.fingerprint) {
      result.outcome = Failure(InvokeCode::kInvalid, KeyReusedMessage(options_));
      return result;
    }
  }
  if (auto it = inflight_keys_.find(key); it != inflight_keys_.end()) {
    result.kind = InvokeStartResult::Kind::kJoined;
    result.dispatch = pending_.at(it->second).dispatch;
    return result;
  }
  if (auto it = finished_keys_.find(key);
      it != finished_keys_.end() && it->second.expires_ms > now_ms) {
    result.kind = InvokeStartResult::Kind::kReplayed;
    result.dispatch.invoke_id = it->second.invoke_id;
    result.outcome = it->second.outcome;
    return result;
  }
  auto node = nodes_.find(start.node_id);
  if (node == nodes_.end() || node->second.owner.empty()) {
    result.outcome = Failure(InvokeCode::kNotConnected, "node is not connected");
    return result;
  }
  Conn& conn = conns_.at(node->second.owner);
  if (!Contains(*node->second.commands, start.command)) {  // the owner's declaration
    result.outcome = Failure(InvokeCode::kCommandNotAllowed,
                             "node did not declare command '" + start.command + "'");
    return result;
  }
  Dispatch& d = result.dispatch;
  d.invoke_id = start.invoke_id;
  d.node_id = start.node_id;
  d.conn_id = conn.conn_id();
  d.edge_id = conn.edge_id;
  d.generation = conn.generation;
  d.command = start.command;
  d.params_json = start.params_json;
  d.idempotency_key = start.idempotency_key;
  d.remember_outcome = start.remember_outcome;
  d.started_ms = now_ms;
  d.deadline_ms = start.deadline_ms;
  d.timeout_ms = start.timeout_ms;
  // The params go out with this dispatch and are not kept: a pending invoke holds no more than
  // its bookkeeping, however large its params (joins and settlements carry none).
  pending_[d.invoke_id] = Pending{d};
  pending_[d.invoke_id].dispatch.params_json.clear();
  deadlines_.insert({d.deadline_ms, d.invoke_id});
  conn.pending.insert(d.invoke_id);
  inflight_keys_[key] = d.invoke_id;
  if (!start.key_claim.empty()) {
    const int64_t expires = now_ms + start.timeout_ms + options_.idempotency_window_ms;
    claims_[claim] = Claim{start.fingerprint, expires};
    claims_order_.emplace_back(expires, claim);
  }
  result.kind = InvokeStartResult::Kind::kDispatched;
  return result;
}

bool MemoryStore::SettleInvoke(const std::string& invoke_id, const std::string& node_id,
                               const std::string& conn_id, const std::string& edge_id,
                               const InvokeOutcome& outcome, int64_t now_ms, Effects* effects) {
  absl::MutexLock lock(&mu_);
  auto it = pending_.find(invoke_id);
  if (it == pending_.end() || it->second.dispatch.node_id != node_id ||
      it->second.dispatch.conn_id != conn_id ||
      (!edge_id.empty() && it->second.dispatch.edge_id != edge_id)) {
    return false;
  }
  auto node = nodes_.find(node_id);
  if (node != nodes_.end() && node->second.owner == conn_id) node->second.last_seen_ms = now_ms;
  return Finish(invoke_id, outcome, now_ms, effects);
}

bool MemoryStore::FailInvoke(const std::string& invoke_id, const std::string& conn_id,
                             const std::string& edge_id, const InvokeOutcome& outcome,
                             int64_t now_ms, Effects* effects) {
  absl::MutexLock lock(&mu_);
  auto it = pending_.find(invoke_id);
  if (it == pending_.end()) return false;
  if (!conn_id.empty() && it->second.dispatch.conn_id != conn_id) return false;
  if (!edge_id.empty() && it->second.dispatch.edge_id != edge_id) return false;
  const Dispatch d = it->second.dispatch;
  if (!Finish(invoke_id, outcome, now_ms, effects)) return false;
  if (outcome.code == InvokeCode::kCancelled) {
    EdgeCommand& cmd =
        Tell(effects, EdgeCommand::Kind::kCancel, d.edge_id, d.conn_id, d.node_id, "");
    cmd.invoke_id = invoke_id;
  }
  return true;
}

// --- Time ------------------------------------------------------------------------------------

void MemoryStore::Expire(int64_t now_ms, Effects* effects) {
  absl::MutexLock lock(&mu_);
  // Records of nodes disconnected for longer than the retention are dropped (their pairing is
  // not); a bounded batch per call.
  for (int i = 0;
       i < 1000 && !idle_.empty() && idle_.begin()->first + options_.node_retention_ms <= now_ms;
       ++i) {
    auto [since, node_id] = *idle_.begin();
    idle_.erase(idle_.begin());
    auto node = nodes_.find(node_id);
    if (node != nodes_.end() && node->second.owner.empty() && node->second.idle_since_ms == since) {
      nodes_.erase(node);
      ++drops_.nodes_pruned;
    }
  }
  while (!claims_order_.empty() && claims_order_.front().first <= now_ms) {
    auto c = claims_.find(claims_order_.front().second);
    if (c != claims_.end() && c->second.expires_ms <= now_ms) claims_.erase(c);
    claims_order_.pop_front();
  }
  while (!deadlines_.empty() && deadlines_.begin()->first <= now_ms) {
    const std::string invoke_id = deadlines_.begin()->second;
    const Dispatch d = pending_.at(invoke_id).dispatch;
    Finish(invoke_id, Failure(InvokeCode::kTimeout, "node did not answer in time"), now_ms,
           effects);
    EdgeCommand& cmd =
        Tell(effects, EdgeCommand::Kind::kCancel, d.edge_id, d.conn_id, d.node_id, "");
    cmd.invoke_id = invoke_id;
  }
  std::vector<std::string> lapsed;
  for (const auto& [edge_id, lease] : leases_) {
    if (lease.expires_ms <= now_ms) lapsed.push_back(edge_id);
  }
  for (const std::string& edge_id : lapsed) {
    auto conns = std::exchange(leases_[edge_id].conns, {});
    for (const std::string& conn_id : conns) {
      auto c = conns_.find(conn_id);
      if (c == conns_.end()) continue;
      // If the edge is alive after all (a stuck link), its sockets must not linger unowned.
      Tell(effects, EdgeCommand::Kind::kClose, edge_id, conn_id, c->second.node_id,
           kReasonEdgeLost);
      RemoveConn(conn_id, kReasonEdgeLost, now_ms, effects);
    }
    leases_.erase(edge_id);
  }
  while (!retire_at_.empty() && retire_at_.begin()->first <= now_ms) {
    const std::string conn_id = retire_at_.begin()->second;
    retire_at_.erase(retire_at_.begin());
    auto it = conns_.find(conn_id);
    if (it == conns_.end() || it->second.retire_sent) continue;
    it->second.retire_sent = true;
    Tell(effects, EdgeCommand::Kind::kClose, it->second.edge_id, conn_id, it->second.node_id,
         kReasonSuperseded);
  }
  if (now_ms >= next_pairing_prune_ms_) {
    next_pairing_prune_ms_ = now_ms + 10'000;
    for (auto it = pairing_.begin(); it != pairing_.end();) {
      if (it->second.created_at_ms + options_.pairing_request_ttl_ms <= now_ms) {
        pairing_by_node_.erase(it->second.node_id);
        it = pairing_.erase(it);
      } else {
        ++it;
      }
    }
  }
  while (!finished_order_.empty() && finished_order_.front().first <= now_ms) {
    auto it = finished_keys_.find(finished_order_.front().second);
    if (it != finished_keys_.end() && it->second.expires_ms <= now_ms) {
      finished_bytes_ -= it->second.outcome.payload_json.size();
      finished_keys_.erase(it);
    }
    finished_order_.pop_front();
  }
}

// --- Reads -----------------------------------------------------------------------------------

absl::StatusOr<NodePage> MemoryStore::ListNodes(const NodeFilter& filter,
                                                const std::string& page_token, int page_size) {
  if (page_size <= 0) page_size = 100;
  page_size = std::min(page_size, 1000);
  absl::MutexLock lock(&mu_);
  NodePage page;
  for (auto it = nodes_.upper_bound(page_token); it != nodes_.end(); ++it) {
    const NodeRecord& n = it->second;
    const bool connected = !n.owner.empty();
    if (filter.connected == NodeFilter::Connected::kOnly && !connected) continue;
    if (filter.connected == NodeFilter::Connected::kNot && connected) continue;
    const bool paired = Paired(it->first);
    if (filter.paired == NodeFilter::Paired::kOnly && !paired) continue;
    if (filter.paired == NodeFilter::Paired::kNot && paired) continue;
    if (static_cast<int>(page.nodes.size()) == page_size) {
      page.next_page_token = page.nodes.back().node_id;
      break;
    }
    page.nodes.push_back(View(it->first, n));
  }
  return page;
}

absl::StatusOr<NodeView> MemoryStore::GetNode(const std::string& node_id) {
  absl::MutexLock lock(&mu_);
  auto it = nodes_.find(node_id);
  if (it == nodes_.end()) return absl::NotFoundError("unknown node id");
  return View(it->first, it->second);
}

absl::StatusOr<PresenceSnapshot> MemoryStore::GetPresence() {
  absl::MutexLock lock(&mu_);
  PresenceSnapshot snap;
  for (const auto& [id, node] : nodes_) {
    if (!node.owner.empty()) snap.nodes.push_back(View(id, node));
  }
  snap.revision = head_revision_;
  return snap;
}

absl::StatusOr<std::vector<PresenceEvent>> MemoryStore::ReadPresence(uint64_t after, size_t max) {
  absl::MutexLock lock(&mu_);
  if (after > head_revision_) {
    return absl::OutOfRangeError(
        "revision is ahead of the registry's history (the registry restarted): re-list");
  }
  const uint64_t first = history_.empty() ? head_revision_ + 1 : history_.front().revision;
  if (after + 1 < first) {
    return absl::OutOfRangeError("presence history compacted past that revision: re-list");
  }
  std::vector<PresenceEvent> out;
  for (size_t i = after + 1 - first; i < history_.size() && out.size() < max; ++i) {
    out.push_back(history_[i]);
  }
  return out;
}

uint64_t MemoryStore::HeadRevision() {
  absl::MutexLock lock(&mu_);
  return head_revision_;
}

// --- Pairing ---------------------------------------------------------------------------------

std::vector<PairingRequest> MemoryStore::ListPairingRequests() {
  absl::MutexLock lock(&mu_);
  std::vector<PairingRequest> out;
  for (const auto& [id, req] : pairing_) out.push_back(req);
  return out;
}

std::vector<Device> MemoryStore::ListDevices() {
  absl::MutexLock lock(&mu_);
  std::vector<Device> out;
  for (const auto& [id, d] : devices_) out.push_back(DeviceOf(id, d));
  std::sort(out.begin(), out.end(),
            [](const Device& a, const Device& b) { return a.node_id < b.node_id; });
  return out;
}

absl::StatusOr<Device> MemoryStore::ApprovePairing(const std::string& request_id,
                                                   const std::string& approved_by, int64_t now_ms) {
  absl::MutexLock lock(&mu_);
  auto it = pairing_.find(request_id);
  if (it == pairing_.end()) return absl::NotFoundError("unknown pairing request id");
  DeviceRecord& d = devices_[it->second.node_id];
  d.Approve(it->second.public_key, now_ms, approved_by);
  const Device approved = DeviceOf(it->second.node_id, d);
  revoked_.erase(it->second.node_id);
  pairing_by_node_.erase(it->second.node_id);
  pairing_.erase(it);
  return approved;
}

absl::Status MemoryStore::RejectPairing(const std::string& request_id) {
  absl::MutexLock lock(&mu_);
  auto it = pairing_.find(request_id);
  if (it == pairing_.end()) return absl::NotFoundError("unknown pairing request id");
  pairing_by_node_.erase(it->second.node_id);
  pairing_.erase(it);
  return absl::OkStatus();
}

absl::StatusOr<int> MemoryStore::RevokeDevice(const std::string& node_id, int64_t now_ms,
                                              Effects* effects) {
  absl::MutexLock lock(&mu_);
  if (devices_.erase(node_id) == 0) return absl::NotFoundError("device is not paired");
  revoked_[node_id] = last_generation_;
  revoked_order_.push_back({last_generation_, node_id});
  while (revoked_.size() > options_.max_revocations && !revoked_order_.empty()) {
    auto [generation, oldest] = revoked_order_.front();
    revoked_order_.pop_front();
    auto it = revoked_.find(oldest);
    if (it == revoked_.end() || it->second != generation) continue;  // approved since
    revoked_.erase(it);
    revoked_floor_ = std::max(revoked_floor_, generation);
    ++drops_.revocations_forgotten;
  }
  if (revoked_order_.size() > 2 * revoked_.size() + 1024) {  // approvals left stale entries
    std::deque<std::pair<uint64_t, std::string>> live;
    for (auto& entry : revoked_order_) {
      auto it = revoked_.find(entry.second);
      if (it != revoked_.end() && it->second == entry.first) live.push_back(std::move(entry));
    }
    revoked_order_.swap(live);
  }
  std::vector<std::pair<std::string, std::string>> doomed;  // (conn id, edge id)
  for (const auto& [conn_id, conn] : conns_) {
    if (conn.node_id == node_id) doomed.push_back({conn_id, conn.edge_id});
  }
  for (const auto& [conn_id, edge_id] : doomed) {
    RemoveConn(conn_id, kReasonRevoked, now_ms, effects);
    Tell(effects, EdgeCommand::Kind::kClose, edge_id, conn_id, node_id, kReasonRevoked);
  }
  return static_cast<int>(doomed.size());
}

StoreDrops MemoryStore::Dropped() {
  absl::MutexLock lock(&mu_);
  return drops_;
}

size_t MemoryStore::ConnectionCountForTest() {
  absl::MutexLock lock(&mu_);
  return conns_.size();
}

size_t MemoryStore::PendingInvokeCountForTest() {
  absl::MutexLock lock(&mu_);
  return pending_.size();
}

size_t MemoryStore::InternedListCountForTest() {
  absl::MutexLock lock(&mu_);
  return lists_.size();
}

}  // namespace tether::registry
