// Property test: random interleavings of register, close, invoke, result, timeout, lease
// expiry, link partition + resync and edge restart across several nodes and edges, checked
// after every step against a deliberately simple reference model of architecture.md's rules.
//
// Runs once per store: the MemoryStore and a RedisStore on a redis-server the test starts.
// Steps: TETHER_PROPERTY_STEPS (default 200000; for Redis TETHER_PROPERTY_REDIS_STEPS, default
// 20000) spread over seeds starting at TETHER_PROPERTY_SEED (default 1). A failure names its
// seed and step.
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "registry_service/store/redis_store.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/registry_harness.h"

namespace tether::registry {
namespace {

using ::tether::testing::RedisServer;
using ::tether::testing::RegistryHarness;
using ::tether::testing::StoreFactory;

constexpr int kNodes = 5;
constexpr int kEdges = 3;
constexpr int64_t kLeaseMs = 10'000;

struct ModelConn {
  std::string node;
  int edge = 0;
  uint64_t gen = 0;
  bool in_registry = true;  // the registry still holds it
};

struct ModelInvoke {
  std::string node;
  std::string conn;
  int64_t deadline = 0;
  std::string invoke_id;
};

struct Expected {
  std::string node;
  PresenceKind kind;
  std::string reason;
};

// The reference model: plain maps, no cleverness.
class Model {
 public:
  std::map<std::string, std::string> owner;      // node -> conn
  std::map<std::string, uint64_t> newest;        // node -> highest generation ever owned
  std::map<std::string, ModelConn> conns;        // conns the registry holds or sockets hold
  std::map<int, std::set<std::string>> sockets;  // edge -> sockets alive on it
  std::map<std::string, ModelInvoke> pending;    // tag -> invoke
  std::map<std::string, InvokeCode> ended;       // tag -> expected outcome
  std::vector<std::string> newly_ended;          // since the last check
  std::set<std::string> open;                    // tags not yet ended

  void End(const std::string& tag, InvokeCode code) {
    if (ended.count(tag)) return;
    ended[tag] = code;
    newly_ended.push_back(tag);
    open.erase(tag);
  }
  std::vector<Expected> events;
  std::map<int, int64_t> lease_expiry;
  std::set<int> partitioned;

  void Grant(const std::string& conn_id) {
    ModelConn& c = conns[conn_id];
    bool had = owner.count(c.node) > 0;
    owner[c.node] = conn_id;
    newest[c.node] = std::max(newest[c.node], c.gen);
    events.push_back({c.node, had ? PresenceKind::kReplaced : PresenceKind::kConnected, ""});
  }

  void RemoveFromRegistry(const std::string& conn_id, const std::string& reason) {
    ModelConn& c = conns[conn_id];
    if (!c.in_registry) return;
    c.in_registry = false;
    std::vector<std::string> doomed;
    for (const std::string& tag : open) {
      if (pending[tag].conn == conn_id) doomed.push_back(tag);
    }
    for (const std::string& tag : doomed) End(tag, InvokeCode::kDisconnected);
    if (owner.count(c.node) && owner[c.node] == conn_id) {
      owner.erase(c.node);
      events.push_back({c.node, PresenceKind::kDisconnected, reason});
    }
  }

  void FailEdgeInvokes(int edge) {
    std::vector<std::string> doomed;
    for (const std::string& tag : open) {
      if (conns[pending[tag].conn].edge == edge) doomed.push_back(tag);
    }
    for (const std::string& tag : doomed) End(tag, InvokeCode::kDisconnected);
  }
};

class PropertyRun {
 public:
  PropertyRun(uint32_t seed, const StoreFactory& factory)
      : h_(RegistryHarness::DefaultOptions(), factory), rng_(seed) {
    for (int e = 0; e < kEdges; ++e) {
      h_.Attach(Edge(e), Epoch(e));
      m_.lease_expiry[e] = h_.clock().NowMs() + kLeaseMs;
    }
  }

  static std::string Edge(int e) { return "edge" + std::to_string(e); }
  std::string Epoch(int e) { return "ep" + std::to_string(e) + "-" + std::to_string(epochs_[e]); }
  static std::string Node(int n) { return "n" + std::to_string(n); }

  // Runs `steps` random steps; returns false (after reporting) at the first violation.
  bool Run(int steps) {
    for (step_ = 0; step_ < steps; ++step_) {
      Step();
      if (!Check()) return false;
    }
    // Flush: every invoke must end.
    for (int e = 0; e < kEdges; ++e) Heal(e);
    Advance(400'000);
    if (!Check()) return false;
    for (const auto& [tag, inv] : m_.pending) {
      if (!h_.results().count(tag)) {
        ADD_FAILURE() << "invoke " << tag << " never ended";
        return false;
      }
    }
    return true;
  }

 private:
  int Pick(int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng_); }

  std::vector<std::string> LiveConnsOn(int edge) {
    return std::vector<std::string>(m_.sockets[edge].begin(), m_.sockets[edge].end());
  }

  void Step() {
    const int op = Pick(100);
    const int edge = Pick(kEdges);
    const bool reachable = !m_.partitioned.count(edge);
    if (op < 20) {  // register a new connection
      if (!reachable) return;
      const std::string conn = "c" + std::to_string(next_conn_++);
      const std::string node = Node(Pick(kNodes));
      const uint64_t gen = h_.Register(conn, node, Edge(edge));
      if (gen == 0) {
        ADD_FAILURE() << "register refused";
        return;
      }
      m_.conns[conn] = ModelConn{node, edge, gen, true};
      m_.sockets[edge].insert(conn);
      if (m_.owner.count(node)) {
        if (gen <= m_.conns[m_.owner[node]].gen) ADD_FAILURE() << "generation did not increase";
      }
      m_.Grant(conn);
    } else if (op < 35) {  // a socket closes (its edge reports it)
      auto live = LiveConnsOn(edge);
      if (!reachable || live.empty()) return;
      const std::string conn = live[Pick(live.size())];
      m_.sockets[edge].erase(conn);
      CloseResult r = h_.Close(Edge(edge), conn);
      const bool owner =
          m_.owner.count(m_.conns[conn].node) && m_.owner[m_.conns[conn].node] == conn;
      if (r.was_owner != owner) ADD_FAILURE() << "close was_owner mismatch for " << conn;
      m_.RemoveFromRegistry(conn, kReasonDisconnect);
    } else if (op < 60) {  // invoke
      const std::string tag = "i" + std::to_string(next_invoke_++);
      const std::string node = Node(Pick(kNodes));
      const int64_t timeout = 100 + Pick(3000);
      auto ticket = h_.Invoke(tag, node, timeout, tag);
      ModelInvoke inv{node, "", h_.clock().NowMs() + timeout, ticket.invoke_id};
      m_.pending[tag] = inv;
      m_.open.insert(tag);
      if (!m_.owner.count(node)) {
        m_.End(tag, InvokeCode::kNotConnected);
      } else {
        m_.pending[tag].conn = m_.owner[node];
        if (m_.partitioned.count(m_.conns[m_.owner[node]].edge)) {
          m_.End(tag, InvokeCode::kDisconnected);
        }
      }
    } else if (op < 80) {  // a result arrives, sometimes on the wrong connection
      if (m_.pending.empty()) return;
      auto it = m_.pending.begin();
      std::advance(it, Pick(m_.pending.size()));
      const auto& [tag, inv] = *it;
      if (inv.conn.empty()) return;
      std::string on = inv.conn;
      if (Pick(10) < 3 && !m_.conns.empty()) {
        auto c = m_.conns.begin();
        std::advance(c, Pick(m_.conns.size()));
        on = c->first;
      }
      // Only a socket alive on a reachable edge can deliver a result.
      const ModelConn& via = m_.conns[on];
      if (!m_.sockets[via.edge].count(on) || m_.partitioned.count(via.edge)) return;
      std::string node = inv.node;
      if (Pick(10) == 0) node = Node(Pick(kNodes));
      InvokeOutcome ok;
      ok.payload_json = "{}";
      const bool accepted = h_.registry().AcceptResult(on, inv.invoke_id, node, ok);
      const bool expect = !m_.ended.count(tag) && on == inv.conn && node == inv.node;
      if (accepted != expect) {
        ADD_FAILURE() << "result for " << tag << " accepted=" << accepted << " expected=" << expect;
      }
      if (expect) m_.End(tag, InvokeCode::kOk);
    } else if (op < 92) {
      Advance(Pick(1500));
    } else if (op < 96) {  // partition or heal an edge's link
      if (reachable) {
        m_.partitioned.insert(edge);
        h_.Detach(Edge(edge));
        m_.FailEdgeInvokes(edge);
      } else {
        Heal(edge);
      }
    } else if (op < 98) {  // the edge process restarts: new epoch, all its sockets die
      if (!reachable) return;
      ++epochs_[edge];
      for (const std::string& conn : LiveConnsOn(edge)) {
        m_.RemoveFromRegistry(conn, kReasonEdgeLost);
      }
      for (auto& [id, c] : m_.conns) {
        if (c.edge == edge) m_.RemoveFromRegistry(id, kReasonEdgeLost);
      }
      m_.sockets[edge].clear();
      h_.Detach(Edge(edge));  // the old process died: its stream ended first
      m_.FailEdgeInvokes(edge);
      h_.Attach(Edge(edge), Epoch(edge));
      m_.lease_expiry[edge] = h_.clock().NowMs() + kLeaseMs;
    } else {  // cancel nothing; a read-only step exercising List
      (void)h_.store().ListNodes(NodeFilter{}, "", 2);
    }
  }

  void Heal(int edge) {
    if (!m_.partitioned.count(edge)) return;
    m_.partitioned.erase(edge);
    const bool lapsed = m_.lease_expiry[edge] <= h_.clock().NowMs();
    h_.Attach(Edge(edge), Epoch(edge));
    m_.lease_expiry[edge] = h_.clock().NowMs() + kLeaseMs;
    std::vector<LiveConnection> live;
    for (const std::string& conn : LiveConnsOn(edge)) {
      live.push_back({RegistryHarness::Spec(conn, m_.conns[conn].node, Edge(edge), Epoch(edge)),
                      m_.conns[conn].gen});
    }
    (void)lapsed;
    auto r = h_.registry().Resync(Edge(edge), Epoch(edge), live);
    if (!r.ok()) ADD_FAILURE() << r.status();
    // Model: known conns stay; forgotten ones come back unless something newer was granted.
    for (const LiveConnection& l : live) {
      ModelConn& c = m_.conns[l.spec.conn_id];
      if (c.in_registry) continue;
      uint64_t newest = m_.newest[c.node];
      if (newest > c.gen) {
        m_.sockets[edge].erase(l.spec.conn_id);  // the registry told the edge to close it
        continue;
      }
      c.in_registry = true;
      m_.Grant(l.spec.conn_id);
    }
  }

  void Advance(int64_t ms) {
    while (ms > 0) {
      const int64_t step = std::min<int64_t>(ms, 500);
      ms -= step;
      h_.clock().Advance(step);
      const int64_t now = h_.clock().NowMs();
      for (int e = 0; e < kEdges; ++e) {
        if (m_.partitioned.count(e)) continue;
        (void)h_.registry().Heartbeat(Edge(e), Epoch(e));
        m_.lease_expiry[e] = now + kLeaseMs;
      }
      h_.registry().Tick();
      std::vector<std::string> late;
      for (const std::string& tag : m_.open) {
        if (m_.pending[tag].deadline <= now) late.push_back(tag);
      }
      for (const std::string& tag : late) m_.End(tag, InvokeCode::kTimeout);
      for (int e = 0; e < kEdges; ++e) {
        if (m_.lease_expiry[e] > now) continue;
        for (auto& [id, c] : m_.conns) {
          if (c.edge == e && c.in_registry) m_.RemoveFromRegistry(id, kReasonEdgeLost);
        }
      }
    }
  }

  bool Check() {
    bool ok = true;
    auto fail = [&](const std::string& what) {
      ADD_FAILURE() << "step " << step_ << ": " << what;
      ok = false;
    };
    for (int n = 0; n < kNodes; ++n) {
      auto view = h_.store().GetNode(Node(n));
      const bool model_connected = m_.owner.count(Node(n)) > 0;
      const bool connected = view.ok() && view->connected;
      if (connected != model_connected) fail("connected mismatch for " + Node(n));
      if (connected && model_connected && view->conn_id != m_.owner[Node(n)]) {
        fail("owner mismatch for " + Node(n) + ": " + view->conn_id + " vs " + m_.owner[Node(n)]);
      }
    }
    auto& events = h_.events();
    if (events.size() != m_.events.size()) {
      fail("presence events: got " + std::to_string(events.size()) + " expected " +
           std::to_string(m_.events.size()));
    } else {
      // One decision may touch several nodes in an unspecified order; per node, the order of
      // events is what counts. Revisions are consecutive across all of them.
      std::map<std::string, std::vector<std::string>> got, want;
      auto describe = [](PresenceKind k, const std::string& reason) {
        return std::to_string(static_cast<int>(k)) + ":" + reason;
      };
      for (const auto& e : events) {
        got[e.node_id].push_back(describe(e.kind, e.reason));
        if (last_revision_ != 0 && e.revision != last_revision_ + 1) {
          fail("revisions not consecutive");
        }
        last_revision_ = e.revision;
      }
      for (const auto& e : m_.events) want[e.node].push_back(describe(e.kind, e.reason));
      for (const auto& [node, seq] : want) {
        if (got[node] != seq) {
          std::string g, w;
          for (const auto& x : got[node]) g += x + " ";
          for (const auto& x : seq) w += x + " ";
          fail("presence events for " + node + ": got [" + g + "] expected [" + w + "]");
        }
      }
    }
    events.clear();
    m_.events.clear();
    for (const std::string& tag : m_.newly_ended) {
      const InvokeCode code = m_.ended[tag];
      auto r = h_.results().find(tag);
      if (r == h_.results().end()) {
        fail("invoke " + tag + " should have ended as " + InvokeCodeName(code));
      } else if (r->second.outcome.code != code) {
        fail("invoke " + tag + " ended " + InvokeCodeName(r->second.outcome.code) + " expected " +
             InvokeCodeName(code));
      }
    }
    m_.newly_ended.clear();
    if (h_.results().size() != m_.ended.size()) {
      for (const auto& [tag, result] : h_.results()) {
        if (!m_.ended.count(tag)) fail("invoke " + tag + " ended unexpectedly");
      }
    }
    return ok;
  }

  RegistryHarness h_;
  Model m_;
  std::mt19937 rng_;
  std::map<int, int> epochs_;
  int next_conn_ = 0;
  int next_invoke_ = 0;
  int step_ = 0;
  uint64_t last_revision_ = 0;
};

int EnvInt(const char* name, int dflt) {
  const char* v = std::getenv(name);
  return v == nullptr ? dflt : std::atoi(v);
}

class OwnershipProperty : public ::testing::TestWithParam<std::string> {
 protected:
  static void TearDownTestSuite() { redis_.reset(); }

  // The store for one seed: a MemoryStore, or a RedisStore with its own key prefix.
  static StoreFactory Factory(int seed) {
    if (GetParam() != "redis") return ::tether::testing::MakeMemoryStore;
    return [seed](const StoreOptions& options, int64_t) -> std::unique_ptr<Store> {
      RedisStoreOptions redis;
      redis.client = redis_->ClientOptions();
      redis.key_prefix = "property" + std::to_string(seed) + ":";
      auto store = std::make_unique<RedisStore>(options, redis);
      EXPECT_TRUE(store->Connect().ok());
      return store;
    };
  }

  static std::unique_ptr<RedisServer> redis_;
};

std::unique_ptr<RedisServer> OwnershipProperty::redis_;

TEST_P(OwnershipProperty, RandomInterleavingsKeepTheInvariants) {
  const bool on_redis = GetParam() == "redis";
  if (on_redis) {
    auto server = RedisServer::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    redis_ = std::move(*server);
  }
  const char* steps_var = on_redis ? "TETHER_PROPERTY_REDIS_STEPS" : "TETHER_PROPERTY_STEPS";
  const int total = EnvInt(steps_var, on_redis ? 20'000 : 200'000);
  const int first_seed = EnvInt("TETHER_PROPERTY_SEED", 1);
  constexpr int kStepsPerSeed = 5'000;
  for (int done = 0, seed = first_seed; done < total; done += kStepsPerSeed, ++seed) {
    PropertyRun run(seed, Factory(seed));
    if (!run.Run(std::min(kStepsPerSeed, total - done))) {
      FAIL() << "failing seed: " << seed << " on the " << GetParam()
             << " store (rerun with TETHER_PROPERTY_SEED=" << seed << " " << steps_var << "="
             << kStepsPerSeed << ")";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Stores, OwnershipProperty, ::testing::Values("memory", "redis"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace tether::registry
