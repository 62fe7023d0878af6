// ws_edge: terminates node WebSockets and forwards their lifecycle to the registry.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>
#include <tuple>

#include "absl/flags/flag.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/clock.h"
#include "common/env_flags.h"
#include "common/files.h"
#include "common/http_server.h"
#include "common/ids.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/signals.h"
#include "ws_edge/core/edge_core.h"
#include "ws_edge/link/edge_link_client.h"
#include "ws_edge/transport/worker_pool.h"
#include "ws_edge/transport/ws_server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:18789",
          "WebSocket listen address host:port (port 0: any)");
ABSL_FLAG(std::string, registry, "127.0.0.1:7000",
          "registry gRPC address: HOST:PORT, a gRPC target (dns:///NAME:PORT resolving to every "
          "replica), or a comma-separated list of IP:PORT replicas; the edge uses the first that "
          "answers and moves to the next when it fails (failover, not load balancing: replicas "
          "do not route edge messages to each other yet)");
ABSL_FLAG(std::string, edge_id, "", "this edge's stable id (default: edge-<hostname>)");
ABSL_FLAG(std::string, shared_token_file, "",
          "file holding the shared gateway token nodes must present (or set TETHER_SHARED_TOKEN "
          "or OPENCLAW_GATEWAY_TOKEN in the environment)");
ABSL_FLAG(bool, allow_no_token, false,
          "development only: accept nodes without a shared token when none is configured");
ABSL_FLAG(int64_t, handshake_timeout_ms, 15'000,
          "close sockets that do not finish the handshake (as the Gateway: 15 s; also read from "
          "OPENCLAW_HANDSHAKE_TIMEOUT_MS)");
ABSL_FLAG(int64_t, tick_interval_ms, 30'000, "tick event period (advertised in hello-ok)");
ABSL_FLAG(int64_t, max_payload, 26'214'400, "largest frame accepted after the handshake");
ABSL_FLAG(int64_t, max_send_buffer_bytes, 52'428'800,
          "unsent bytes per socket before it is closed as a slow consumer (1008)");
ABSL_FLAG(int64_t, ping_interval_ms, 25'000, "WebSocket ping period");
ABSL_FLAG(int64_t, pong_timeout_ms, 25'000, "a socket silent this long after a ping is dropped");
ABSL_FLAG(int64_t, drain_timeout_ms, 5'000,
          "on SIGTERM, wait this long for sockets to close (in-flight invokes get until 1 s "
          "before it)");
ABSL_FLAG(int64_t, max_connections, 0,
          "sockets held at once; more are refused at open with 1013 (0: the open-file limit "
          "minus 256 for the registry link, metrics and logs)");
ABSL_FLAG(int64_t, max_pending_handshakes, 8'192,
          "sockets not yet past hello-ok held at once (each may cost up to 64 KiB of frame "
          "buffer); more are refused at open with 1013; 0: no limit");
ABSL_FLAG(int64_t, max_registrations_in_flight, 1'024,
          "handshakes being verified or waiting for the registry's decision; past this a new "
          "connect is refused unverified (UNAVAILABLE, retryAfterMs 1-2 s, close 1013) so that "
          "a reconnect storm cannot make the edge verify more than the registry can decide; "
          "0: no limit");
ABSL_FLAG(int64_t, drain_spread_ms, 2'000,
          "on SIGTERM, spread the 1012 closes over this long (at most half the drain timeout) "
          "so nodes do not reconnect as one herd");
ABSL_FLAG(std::string, port_file, "", "if set, write the bound port here once listening");
ABSL_FLAG(int, metrics_port, -1,
          "HTTP port for /metrics (Prometheus), /healthz and /readyz; -1 off, 0 any free port");
ABSL_FLAG(std::string, metrics_host, "127.0.0.1", "address the metrics listener binds");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warn or error");
ABSL_FLAG(std::string, edge_secret_file, "",
          "file with the secret this edge presents to the registry (or env TETHER_EDGE_SECRET)");
ABSL_FLAG(std::string, registry_ca_file, "", "PEM CA to verify the registry (TLS to the registry)");
ABSL_FLAG(std::string, registry_cert_file, "",
          "PEM client certificate this edge presents to the registry (mutual TLS)");
ABSL_FLAG(std::string, registry_key_file, "", "PEM private key for --registry_cert_file");
ABSL_FLAG(std::string, registry_tls_name, "",
          "name to expect in the registry's certificate (default: the --registry host)");
ABSL_FLAG(double, handshake_rate_per_ip, 100,
          "handshake attempts per second allowed from one source address (0: unlimited)");
ABSL_FLAG(double, handshake_burst, 200, "handshake attempts one source address may burst");
ABSL_FLAG(double, failed_handshake_cost, 5,
          "extra attempts a failed device proof or token check costs its source address");
ABSL_FLAG(bool, trust_x_forwarded_for, false,
          "take the node's address from X-Forwarded-For (only behind a proxy that overwrites it)");
ABSL_FLAG(std::string, tls_cert_file, "",
          "serve wss://: PEM certificate chain (re-read with the key on SIGHUP)");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key for --tls_cert_file");
ABSL_FLAG(int, verify_threads, 1,
          "threads that check device signatures off the event loop (0: on the loop)");

namespace {

std::string Hostname() {
  char buf[256] = {0};
  gethostname(buf, sizeof(buf) - 1);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  // The Gateway's own variable for this timer; TETHER_HANDSHAKE_TIMEOUT_MS and the flag win.
  if (const char* v = std::getenv("OPENCLAW_HANDSHAKE_TIMEOUT_MS");
      v != nullptr && *v && std::getenv("TETHER_HANDSHAKE_TIMEOUT_MS") == nullptr) {
    setenv("TETHER_HANDSHAKE_TIMEOUT_MS", v, 1);
  }
  tether::common::ParseFlags(argc, argv,
                             "Tether WebSocket edge. Flags also read TETHER_<FLAG> env vars.");

  std::vector<std::string> hp = absl::StrSplit(absl::GetFlag(FLAGS_listen), ':');
  int port = -1;
  if (hp.size() != 2 || !absl::SimpleAtoi(hp[1], &port) || port < 0 || port > 65535) {
    std::fprintf(stderr, "ws_edge: --listen must be host:port\n");
    return 2;
  }
  tether::edge::EdgeOptions eo;
  eo.edge_id = absl::GetFlag(FLAGS_edge_id);
  if (eo.edge_id.empty()) eo.edge_id = "edge-" + Hostname();
  std::string token;
  if (const std::string f = absl::GetFlag(FLAGS_shared_token_file); !f.empty()) {
    auto content = tether::common::ReadTrimmedFile(f);
    if (!content.ok()) {
      std::fprintf(stderr, "ws_edge: --shared_token_file: %s\n",
                   std::string(content.status().message()).c_str());
      return 2;
    }
    token = *content;
  } else if (const char* t = std::getenv("TETHER_SHARED_TOKEN"); t != nullptr && *t) {
    token = t;
  } else if (const char* t2 = std::getenv("OPENCLAW_GATEWAY_TOKEN"); t2 != nullptr && *t2) {
    token = t2;
  }
  if (!token.empty()) {
    eo.shared_token = token;
  } else if (!absl::GetFlag(FLAGS_allow_no_token)) {
    std::fprintf(stderr,
                 "ws_edge: no shared token configured (TETHER_SHARED_TOKEN or "
                 "--shared_token_file); pass --allow_no_token for local development\n");
    return 2;
  } else {
    std::fprintf(stderr, "ws_edge: WARNING --allow_no_token: nodes connect without a token\n");
  }
  eo.handshake_timeout_ms = absl::GetFlag(FLAGS_handshake_timeout_ms);
  eo.handshake_limits.rate_per_sec = absl::GetFlag(FLAGS_handshake_rate_per_ip);
  eo.handshake_limits.burst = absl::GetFlag(FLAGS_handshake_burst);
  eo.handshake_limits.failure_cost = absl::GetFlag(FLAGS_failed_handshake_cost);
  eo.tick_interval_ms = absl::GetFlag(FLAGS_tick_interval_ms);
  if (const int64_t max = absl::GetFlag(FLAGS_max_connections); max > 0) {
    eo.max_connections = static_cast<size_t>(max);
  } else {
    rlimit files{};
    if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur != RLIM_INFINITY &&
        files.rlim_cur > 512) {
      eo.max_connections = static_cast<size_t>(files.rlim_cur - 256);
    }
  }
  eo.max_pending_handshakes =
      static_cast<size_t>(std::max<int64_t>(0, absl::GetFlag(FLAGS_max_pending_handshakes)));
  eo.max_registrations_in_flight =
      static_cast<size_t>(std::max<int64_t>(0, absl::GetFlag(FLAGS_max_registrations_in_flight)));
  eo.drain_timeout_ms = std::max<int64_t>(0, absl::GetFlag(FLAGS_drain_timeout_ms) - 1'000);
  eo.drain_spread_ms =
      std::clamp<int64_t>(absl::GetFlag(FLAGS_drain_spread_ms), 0, eo.drain_timeout_ms / 2);
  eo.max_payload = absl::GetFlag(FLAGS_max_payload);
  eo.max_buffered_bytes = absl::GetFlag(FLAGS_max_send_buffer_bytes);
  if (eo.max_payload > (48 << 20)) {
    // The registry accepts EdgeLink messages up to 64 MiB; a frame must fit in one with room.
    std::fprintf(stderr, "ws_edge: --max_payload must be at most 50331648 (48 MiB)\n");
    return 2;
  }
  if (eo.tick_interval_ms < 100 || eo.handshake_timeout_ms < 100 || eo.max_payload < 1024) {
    std::fprintf(stderr,
                 "ws_edge: --tick_interval_ms, --handshake_timeout_ms >= 100 and "
                 "--max_payload >= 1024 required\n");
    return 2;
  }

  tether::common::LogLevel level;
  if (!tether::common::ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    std::fprintf(stderr, "ws_edge: --log_level must be debug, info, warn or error\n");
    return 2;
  }
  tether::common::SetLogLevel(level);

  tether::edge::WsServerOptions wo;
  wo.host = hp[0];
  wo.port = port;
  wo.max_send_buffer_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_max_send_buffer_bytes));
  wo.ping_interval_ms = absl::GetFlag(FLAGS_ping_interval_ms);
  wo.pong_timeout_ms = absl::GetFlag(FLAGS_pong_timeout_ms);
  wo.trust_x_forwarded_for = absl::GetFlag(FLAGS_trust_x_forwarded_for);
  wo.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  wo.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  if (wo.tls_cert_file.empty() != wo.tls_key_file.empty()) {
    std::fprintf(stderr, "ws_edge: --tls_cert_file and --tls_key_file go together\n");
    return 2;
  }

  // Before any thread starts, so only the signal thread below sees them.
  sigset_t stop = tether::common::BlockStopSignals();

  tether::common::RealClock clock;
  std::unique_ptr<tether::edge::WsServer> server_owner = tether::edge::WsServer::Create(wo);
  tether::edge::WsServer& server = *server_owner;
  tether::edge::EdgeCore* core_ptr = nullptr;
  tether::edge::LinkOptions lo;
  lo.target = absl::GetFlag(FLAGS_registry);
  if (lo.target.find(',') != std::string::npos && lo.target.find(':') != 0 &&
      lo.target.rfind("ipv4:", 0) != 0 && lo.target.rfind("ipv6:", 0) != 0) {
    // gRPC's ipv4 resolver takes "ipv4:A:P,B:P"; pick_first (the default) keeps one stream
    // on the first address that answers and moves on when it fails.
    for (absl::string_view part : absl::StrSplit(lo.target, ',')) {
      const size_t colon = part.rfind(':');
      if (colon == absl::string_view::npos ||
          part.substr(0, colon).find_first_not_of("0123456789.") != absl::string_view::npos) {
        std::fprintf(stderr,
                     "ws_edge: --registry: a list must hold IPv4:PORT addresses (got '%s'); for "
                     "host names use one DNS name, dns:///NAME:PORT\n",
                     std::string(part).c_str());
        return 2;
      }
    }
    lo.target = "ipv4:" + lo.target;
  }
  lo.edge_id = eo.edge_id;
  lo.epoch = tether::common::RandomHexId();
  lo.tls_server_name = absl::GetFlag(FLAGS_registry_tls_name);
  for (auto [flag, path, out] :
       {std::tuple<const char*, std::string, std::string*>{
            "--edge_secret_file", absl::GetFlag(FLAGS_edge_secret_file), &lo.secret},
        {"--registry_ca_file", absl::GetFlag(FLAGS_registry_ca_file), &lo.ca_pem},
        {"--registry_cert_file", absl::GetFlag(FLAGS_registry_cert_file), &lo.cert_pem},
        {"--registry_key_file", absl::GetFlag(FLAGS_registry_key_file), &lo.key_pem}}) {
    if (path.empty()) continue;
    auto content = tether::common::ReadTrimmedFile(path);
    if (!content.ok()) {
      std::fprintf(stderr, "ws_edge: %s: %s\n", flag,
                   std::string(content.status().message()).c_str());
      return 2;
    }
    *out = *content;
    if (out != &lo.secret) *out += "\n";  // PEM
  }
  if (lo.secret.empty()) {
    if (const char* s = std::getenv("TETHER_EDGE_SECRET"); s != nullptr) lo.secret = s;
  }
  tether::edge::LinkCallbacks cb;
  cb.post = [&server](std::function<void()> fn) { server.Post(std::move(fn)); };
  cb.on_up = [&core_ptr] {
    tether::common::Log(tether::common::LogLevel::kInfo, "registry_link_up",
                        {{"detail", "attached, resyncing"}});
    core_ptr->OnLinkUp();
  };
  cb.on_down = [&core_ptr] {
    tether::common::Log(tether::common::LogLevel::kWarn, "registry_link_down",
                        {{"detail", "reconnecting"}});
    core_ptr->OnLinkDown();
  };
  cb.on_message = [&core_ptr](const tether::v1::RegistryMessage& m) {
    core_ptr->OnRegistryMessage(m);
  };
  tether::edge::EdgeLinkClient link(lo, cb);
  std::unique_ptr<tether::edge::WorkerPool> verifiers;
  if (const int n = absl::GetFlag(FLAGS_verify_threads); n > 0) {
    verifiers = std::make_unique<tether::edge::WorkerPool>(
        n, [&server](std::function<void()> fn) { server.Post(std::move(fn)); });
  }
  tether::edge::EdgeCore core(eo, server, link, clock, verifiers.get());
  core_ptr = &core;
  server.set_core(&core);

  auto bound = server.Listen();
  if (!bound.ok()) {
    std::fprintf(stderr, "ws_edge: %s\n", std::string(bound.status().message()).c_str());
    return 1;
  }
  std::atomic<bool> draining{false};
  tether::common::MetricsRegistry metrics;
  tether::common::HttpServer http;
  if (const int mport = absl::GetFlag(FLAGS_metrics_port); mport >= 0) {
    const tether::edge::EdgeStats& s = core.stats();
    auto expose = [&metrics](const std::string& name, const std::string& help,
                             const tether::common::Counter& c) { metrics.Expose(name, help, &c); };
    expose("tether_edge_handshakes_total{outcome=\"ok\"}", "Node handshakes by outcome",
           s.handshakes_ok);
    expose("tether_edge_handshakes_total{outcome=\"rejected\"}", "", s.handshakes_rejected);
    expose("tether_edge_handshakes_total{outcome=\"unavailable\"}", "", s.handshakes_unavailable);
    expose("tether_edge_invokes_delivered_total", "Invoke requests written to node sockets",
           s.invokes_delivered);
    expose("tether_edge_invokes_undeliverable_total",
           "Invokes for connections already gone on this edge", s.invokes_undeliverable);
    expose("tether_edge_invokes_duplicate_total",
           "Invokes sent again after a registry replica takeover, dropped (delivered once)",
           s.invokes_duplicate);
    expose("tether_edge_results_forwarded_total", "Invoke results forwarded to the registry",
           s.results_forwarded);
    expose("tether_edge_superseded_closed_total", "Replaced connections closed with 4001",
           s.superseded_closed);
    expose("tether_edge_handshakes_rate_limited_total",
           "Sockets refused at open because their source address was over its limit",
           s.handshakes_rate_limited);
    expose("tether_edge_handshakes_busy_total",
           "Connects refused before verification: --max_registrations_in_flight reached",
           s.handshakes_busy);
    expose("tether_edge_connections_refused_total",
           "Sockets refused at open because --max_connections was reached", s.connections_refused);
    expose("tether_edge_send_queue_drops_total",
           "Sockets closed as slow consumers (send queue over its bound)", s.slow_consumers_closed);
    metrics.AddGauge("tether_edge_connections", "Open node sockets (any state)",
                     [&s] { return static_cast<double>(s.sockets.load()); });
    metrics.AddGauge("tether_edge_live_connections", "Sockets past hello-ok",
                     [&s] { return static_cast<double>(s.live.load()); });
    metrics.AddGauge("tether_edge_link_reconnects_total", "EdgeLink stream reconnects",
                     [&link] { return static_cast<double>(link.reconnects()); });
    metrics.AddGauge("tether_edge_link_overflows_total",
                     "EdgeLink streams cancelled because the registry read too slowly",
                     [&link] { return static_cast<double>(link.overflows()); });
    metrics.AddGauge("tether_edge_link_attached", "1 when the registry link is attached",
                     [&link] { return link.attached() ? 1.0 : 0.0; });
    http.Handle("/metrics", [&metrics] {
      return tether::common::HttpResponse{200, "text/plain; version=0.0.4", metrics.Render()};
    });
    http.Handle("/healthz", [] { return tether::common::HttpResponse{200, "text/plain", "ok\n"}; });
    // Ready to take new nodes: attached to the registry and not draining.
    http.Handle("/readyz", [&link, &draining] {
      if (draining.load()) return tether::common::HttpResponse{503, "text/plain", "draining\n"};
      if (!link.attached()) {
        return tether::common::HttpResponse{503, "text/plain", "registry link down\n"};
      }
      return tether::common::HttpResponse{200, "text/plain", "ready\n"};
    });
    auto bound_metrics = http.Start(absl::GetFlag(FLAGS_metrics_host), mport);
    if (!bound_metrics.ok()) {
      std::fprintf(stderr, "ws_edge: %s\n", std::string(bound_metrics.status().message()).c_str());
      return 1;
    }
    std::printf("ws_edge metrics on http://%s:%d/metrics\n",
                absl::GetFlag(FLAGS_metrics_host).c_str(), *bound_metrics);
  }
  link.Start();
  std::printf("ws_edge %s listening on %s:%d (registry %s)\n", eo.edge_id.c_str(), wo.host.c_str(),
              *bound, lo.target.c_str());
  std::fflush(stdout);
  if (const std::string f = absl::GetFlag(FLAGS_port_file); !f.empty()) {
    std::ofstream(f) << *bound << "\n";
  }

  std::thread signals([&] {
    int sig = 0;
    for (;;) {
      sigwait(&stop, &sig);
      if (sig != SIGHUP) break;
      absl::Status s = server.ReloadTls();  // new sockets use the new certificate
      tether::common::Log(
          s.ok() ? tether::common::LogLevel::kInfo : tether::common::LogLevel::kError, "tls_reload",
          {{"result", s.ok() ? "ok" : s.message()}});
    }
    std::fprintf(stderr, "ws_edge: signal %d, draining\n", sig);
    draining = true;
    server.Post([&] {
      server.StopListening();
      core.Drain();
    });
    const int64_t deadline = clock.NowMs() + absl::GetFlag(FLAGS_drain_timeout_ms);
    while (clock.NowMs() < deadline) {
      // Shared with the posted task, which may run after this thread gave up waiting.
      auto left = std::make_shared<std::atomic<int64_t>>(-1);
      server.Post([&core, left] { left->store(static_cast<int64_t>(core.connection_count())); });
      while (left->load() < 0 && clock.NowMs() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      if (left->load() == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    link.Stop();
    server.Stop();
    http.Stop();
  });
  server.Run();
  signals.join();
  return 0;
}
