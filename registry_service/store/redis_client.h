// RedisClient: one synchronous hiredis connection with fail-fast timeouts and Lua scripts run
// by SHA (EVALSHA), for RedisStore.
#ifndef TETHER_REGISTRY_SERVICE_STORE_REDIS_CLIENT_H_
#define TETHER_REGISTRY_SERVICE_STORE_REDIS_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "registry_service/store/tls_tunnel.h"

struct redisContext;

namespace tether::registry {

// Where a Redis server is, parsed from `redis://HOST:PORT[/DB]` (or `rediss://...`: TLS).
struct RedisAddress {
  std::string host;
  int port = 6379;
  int db = 0;
  bool tls = false;
};

// kInvalidArgument with a message naming what is wrong with `url`.
absl::StatusOr<RedisAddress> ParseRedisUrl(const std::string& url);

struct RedisClientOptions {
  RedisAddress address;
  std::string password;  // empty: no AUTH
  // TLS (used when address.tls): through a TlsTunnel, since Debian's hiredis has no TLS.
  RedisTlsOptions tls;
  absl::Duration connect_timeout = absl::Seconds(1);
  absl::Duration command_timeout = absl::Seconds(1);
  // After a failed connect or a command timeout, calls fail at once for this long (so callers
  // do not queue behind one timeout after another); a closed connection is retried at once.
  absl::Duration reconnect_backoff = absl::Milliseconds(500);
};

// A reply, copied out of hiredis's reply tree so it owns its data.
struct RedisValue {
  enum class Type { kNil, kString, kInteger, kArray, kStatus, kError };
  Type type = Type::kNil;
  std::string str;  // kString, kStatus, kError
  int64_t integer = 0;
  std::vector<RedisValue> elements;

  bool is_nil() const { return type == Type::kNil; }
  // The value as text: a string, or an integer printed in decimal; "" for anything else.
  std::string AsString() const;
  // The value as an integer: an integer reply, or a string holding a decimal; 0 otherwise.
  int64_t AsInt() const;
};

// Owns one connection to one Redis server. Thread-safe: one mutex serializes every command
// over the single connection (enough for now; a pool comes when one connection is the limit).
//
// Connects lazily and again on the next call after any I/O error or timeout; every failure to
// reach the server or to get a reply in time is kUnavailable, never a hang (connect and command
// timeouts apply, and after a failed connect or a timeout calls fail at once for a short
// backoff, so a caller waits at most about one timeout for the call ahead of it). A command whose
// reply was lost may or may not have run: it is not retried. Scripts registered with AddScript are
// loaded (SCRIPT LOAD) at every connect and run with EVALSHA; a NOSCRIPT answer (the server
// restarted or flushed its script cache) reloads the script and runs it once more (it had not run).
// An optional connect script runs after every connect (RedisStore repairs its counters with it).
// The process must ignore SIGPIPE (the binaries' main does): hiredis writes to the socket with
// write(2).
class RedisClient {
 public:
  explicit RedisClient(const RedisClientOptions& options);
  ~RedisClient();
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  // Registers a script; returns its handle for Eval. Call before the first command.
  int AddScript(std::string body) ABSL_LOCKS_EXCLUDED(mu_);
  // Runs script `handle` with ARGV from `args` right after every connect (after the scripts
  // are loaded) and passes its reply to `done`; a failure fails the connect. At most one; call
  // before the first command. `args` and `done` must not call back into this client.
  void SetConnectScript(int handle, std::function<std::vector<std::string>()> args,
                        std::function<void(const RedisValue&)> done) ABSL_LOCKS_EXCLUDED(mu_);

  // Connects now (and loads the scripts), for a clear start-up error.
  absl::Status Connect() ABSL_LOCKS_EXCLUDED(mu_);

  // Runs one command. An error reply is kUnavailable carrying the server's message.
  absl::StatusOr<RedisValue> Command(const std::vector<std::string>& argv) ABSL_LOCKS_EXCLUDED(mu_);

  // The same with its own command timeout (a blocking read: XREAD BLOCK).
  absl::StatusOr<RedisValue> Command(const std::vector<std::string>& argv, absl::Duration timeout)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Runs script `handle` with no KEYS and `args` as ARGV.
  absl::StatusOr<RedisValue> Eval(int handle, const std::vector<std::string>& args)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The same with its own command timeout, for a script whose work grows with the fleet. The
  // store no longer needs it (its resync and expiry run as bounded steps instead); it stays
  // for one-off maintenance scripts, beside Command(argv, timeout) which the routed reads use.
  absl::StatusOr<RedisValue> Eval(int handle, const std::vector<std::string>& args,
                                  absl::Duration timeout) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Script {
    std::string body;
    std::string sha;
  };
  absl::Status EnsureConnectedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ConnectLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<RedisValue> CommandLocked(const std::vector<std::string>& argv)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status LoadScriptLocked(Script& script) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<RedisValue> EvalLocked(int handle, const std::vector<std::string>& args)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DropConnectionLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs `call` (a command on the connection) with `timeout` in place of the command timeout.
  absl::StatusOr<RedisValue> WithTimeoutLocked(
      absl::Duration timeout, const std::function<absl::StatusOr<RedisValue>()>& call)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const RedisClientOptions options_;
  absl::Mutex mu_;
  redisContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;    // owned; null when disconnected
  std::unique_ptr<TlsTunnel> tunnel_ ABSL_GUARDED_BY(mu_);  // with TLS: under context_
  absl::Duration timeout_ ABSL_GUARDED_BY(mu_) = options_.command_timeout;  // of the command now
  std::vector<Script> scripts_ ABSL_GUARDED_BY(mu_);
  absl::Time retry_after_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::string last_error_ ABSL_GUARDED_BY(mu_);
  int connect_script_ ABSL_GUARDED_BY(mu_) = -1;
  std::function<std::vector<std::string>()> connect_args_ ABSL_GUARDED_BY(mu_);
  std::function<void(const RedisValue&)> connect_done_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tether::registry

#endif  // TETHER_REGISTRY_SERVICE_STORE_REDIS_CLIENT_H_
