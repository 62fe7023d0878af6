// RedisServer: a throw-away redis-server on 127.0.0.1 for tests that need a real Redis.
#ifndef TETHER_TESTS_TESTING_REDIS_SERVER_H_
#define TETHER_TESTS_TESTING_REDIS_SERVER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "registry_service/store/redis_client.h"
#include "tests/testing/process.h"

namespace tether::testing {

// Owns one redis-server child process with no persistence (--save "" --appendonly no), its
// working directory under TEST_TMPDIR, on a free loopback port. Killed (SIGKILL) and reaped on
// destruction or Kill(). Not thread-safe. Ignores SIGPIPE for the test process (a client
// writing to a killed server must get an error, not a signal).
class RedisServer {
 public:
  // Starts redis-server and waits (bounded, 10 s) until it answers PING.
  static absl::StatusOr<std::unique_ptr<RedisServer>> Start();
  // The same, serving only TLS (--tls-port; plain connections are not accepted) with the
  // server certificate and key given. With `client_cert`, clients must present a certificate
  // signed by `ca` (--tls-auth-clients yes). ClientOptions() and Command() then speak TLS,
  // trusting `ca` and presenting `client_cert`/`client_key` if given.
  static absl::StatusOr<std::unique_ptr<RedisServer>> StartTls(const std::string& cert,
                                                               const std::string& key,
                                                               const std::string& ca,
                                                               const std::string& client_cert = "",
                                                               const std::string& client_key = "");
  ~RedisServer();

  int port() const { return port_; }
  std::string url() const {
    return (tls_.enabled ? "rediss://127.0.0.1:" : "redis://127.0.0.1:") + std::to_string(port_);
  }
  registry::RedisClientOptions ClientOptions() const;
  // Runs one command on a fresh connection (FLUSHALL, HGETALL, ...).
  absl::StatusOr<registry::RedisValue> Command(const std::vector<std::string>& argv);
  // SIGKILLs the server and waits for it to exit.
  void Kill();
  // Kills it and starts a new redis-server on the same port: with no persistence, an empty one
  // (a Redis that lost its data).
  absl::Status Restart();
  std::string Log() const { return process_ ? process_->Log() : ""; }

 private:
  RedisServer() = default;
  absl::Status Launch();  // starts process_ on port_ and waits for PING
  int port_ = 0;
  std::vector<std::string> tls_args_;  // redis-server flags for TLS; empty: plain
  registry::RedisTlsOptions tls_;      // what clients use
  std::unique_ptr<ChildProcess> process_;
};

}  // namespace tether::testing

#endif  // TETHER_TESTS_TESTING_REDIS_SERVER_H_
