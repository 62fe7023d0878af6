#include "registry_service/store/redis_client.h"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace tether::registry {
namespace {

RedisValue Copy(const redisReply* r) {
  RedisValue v;
  switch (r->type) {
    case REDIS_REPLY_STRING:
      v.type = RedisValue::Type::kString;
      v.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_STATUS:
      v.type = RedisValue::Type::kStatus;
      v.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ERROR:
      v.type = RedisValue::Type::kError;
      v.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      v.type = RedisValue::Type::kInteger;
      v.integer = r->integer;
      break;
    case REDIS_REPLY_ARRAY:
      v.type = RedisValue::Type::kArray;
      v.elements.reserve(r->elements);
      for (size_t i = 0; i < r->elements; ++i) v.elements.push_back(Copy(r->element[i]));
      break;
    default:
      v.type = RedisValue::Type::kNil;
      break;
  }
  return v;
}

}  // namespace

std::string RedisValue::AsString() const {
  switch (type) {
    case Type::kString:
    case Type::kStatus:
      return str;
    case Type::kInteger:
      return absl::StrCat(integer);
    default:
      return "";
  }
}

int64_t RedisValue::AsInt() const {
  if (type == Type::kInteger) return integer;
  int64_t v = 0;
  if (type == Type::kString && absl::SimpleAtoi(str, &v)) return v;
  return 0;
}

absl::StatusOr<RedisAddress> ParseRedisUrl(const std::string& url) {
  absl::string_view rest(url);
  RedisAddress a;
  if (absl::ConsumePrefix(&rest, "rediss://")) {
    a.tls = true;
  } else if (!absl::ConsumePrefix(&rest, "redis://")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "store URL '", url, "' must be memory, redis://HOST:PORT[/DB] or rediss:// (TLS)"));
  }
  absl::string_view hostport = rest;
  if (size_t slash = rest.find('/'); slash != absl::string_view::npos) {
    hostport = rest.substr(0, slash);
    absl::string_view db = rest.substr(slash + 1);
    if (!db.empty() && (!absl::SimpleAtoi(db, &a.db) || a.db < 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("store URL '", url, "': database must be a number >= 0"));
    }
  }
  if (hostport.find('@') != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "store URL '", url, "': no credentials in the URL; use --redis_password_file"));
  }
  size_t colon = hostport.rfind(':');
  if (colon == absl::string_view::npos) {
    a.host = std::string(hostport);
  } else {
    a.host = std::string(hostport.substr(0, colon));
    if (!absl::SimpleAtoi(hostport.substr(colon + 1), &a.port) || a.port <= 0 || a.port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("store URL '", url, "': port must be a number 1..65535"));
    }
  }
  if (a.host.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("store URL '", url, "' names no host"));
  }
  return a;
}

RedisClient::RedisClient(const RedisClientOptions& options) : options_(options) {}

RedisClient::~RedisClient() {
  absl::MutexLock lock(&mu_);
  DropConnectionLocked();
}

int RedisClient::AddScript(std::string body) {
  absl::MutexLock lock(&mu_);
  scripts_.push_back(Script{std::move(body), ""});
  return static_cast<int>(scripts_.size()) - 1;
}

void RedisClient::SetConnectScript(int handle, std::function<std::vector<std::string>()> args,
                                   std::function<void(const RedisValue&)> done) {
  absl::MutexLock lock(&mu_);
  connect_script_ = handle;
  connect_args_ = std::move(args);
  connect_done_ = std::move(done);
}

absl::Status RedisClient::Connect() {
  absl::MutexLock lock(&mu_);
  return EnsureConnectedLocked();
}

void RedisClient::DropConnectionLocked() {
  if (context_ != nullptr) redisFree(context_);  // closes hiredis's end of a TLS tunnel
  context_ = nullptr;
  tunnel_.reset();
}

absl::Status RedisClient::EnsureConnectedLocked() {
  if (context_ != nullptr) return absl::OkStatus();
  const absl::Time now = absl::Now();
  if (now < retry_after_) {
    // Redis did not answer a moment ago: fail at once instead of queueing every caller behind
    // another timeout.
    return absl::UnavailableError(
        absl::StrCat("redis ", options_.address.host, ":", options_.address.port, ": ", last_error_,
                     " (next attempt in ", absl::FormatDuration(retry_after_ - now), ")"));
  }
  absl::Status s = ConnectLocked();
  if (!s.ok()) {
    retry_after_ = absl::Now() + options_.reconnect_backoff;
    last_error_ = std::string(s.message());
  }
  return s;
}

absl::Status RedisClient::ConnectLocked() {
  const std::string where = absl::StrCat(options_.address.host, ":", options_.address.port);
  redisContext* c = nullptr;
  if (options_.address.tls) {
    auto tunnel = TlsTunnel::Open(options_.address.host, options_.address.port, options_.tls,
                                  options_.connect_timeout);
    if (!tunnel.ok()) {
      return absl::Status(tunnel.status().code(),
                          absl::StrCat("redis ", where, ": ", tunnel.status().message()));
    }
    tunnel_ = std::move(*tunnel);
    c = redisConnectFd(tunnel_->TakeLocalFd());
  } else {
    c = redisConnectWithTimeout(options_.address.host.c_str(), options_.address.port,
                                absl::ToTimeval(options_.connect_timeout));
  }
  if (c == nullptr) return absl::UnavailableError("redis " + where + ": out of memory");
  if (c->err != 0) {
    std::string why = c->errstr;
    redisFree(c);
    return absl::UnavailableError("redis " + where + ": " + why);
  }
  if (redisSetTimeout(c, absl::ToTimeval(options_.command_timeout)) != REDIS_OK) {
    redisFree(c);
    return absl::UnavailableError("redis " + where + ": cannot set the command timeout");
  }
  context_ = c;
  absl::Status s;
  if (!options_.password.empty()) {
    auto r = CommandLocked({"AUTH", options_.password});
    if (!r.ok()) {
      s = absl::UnavailableError(
          absl::StrCat("redis ", where, ": AUTH failed: ", r.status().message()));
    }
  }
  if (s.ok() && options_.address.db != 0) {
    auto r = CommandLocked({"SELECT", absl::StrCat(options_.address.db)});
    if (!r.ok()) s = r.status();
  }
  for (Script& script : scripts_) {
    if (!s.ok()) break;
    s = LoadScriptLocked(script);
  }
  if (s.ok() && connect_script_ >= 0) {
    auto r = EvalLocked(connect_script_, connect_args_());
    if (r.ok()) {
      connect_done_(*r);
    } else {
      s = r.status();
    }
  }
  if (!s.ok()) DropConnectionLocked();
  return s;
}

absl::Status RedisClient::LoadScriptLocked(Script& script) {
  auto r = CommandLocked({"SCRIPT", "LOAD", script.body});
  if (!r.ok()) return r.status();
  script.sha = r->AsString();
  return absl::OkStatus();
}

absl::StatusOr<RedisValue> RedisClient::CommandLocked(const std::vector<std::string>& argv) {
  if (context_ == nullptr) return absl::UnavailableError("redis: not connected");
  std::vector<const char*> args;
  std::vector<size_t> lens;
  args.reserve(argv.size());
  lens.reserve(argv.size());
  for (const std::string& a : argv) {
    args.push_back(a.data());
    lens.push_back(a.size());
  }
  const absl::Time start = absl::Now();
  void* raw = redisCommandArgv(context_, static_cast<int>(args.size()), args.data(), lens.data());
  if (raw == nullptr) {
    // I/O error or timeout: the connection is unusable (a late reply would be misread).
    std::string why = context_->errstr;
    DropConnectionLocked();
    if (absl::Now() - start >= timeout_ * 0.9) {
      // A timeout, not a closed connection: Redis (or the way to it) is stuck; back off.
      retry_after_ = absl::Now() + options_.reconnect_backoff;
      last_error_ = "timed out: " + why;
      why = last_error_;
    }
    return absl::UnavailableError("redis: " + why);
  }
  auto* reply = static_cast<redisReply*>(raw);
  RedisValue v = Copy(reply);
  freeReplyObject(reply);
  if (v.type == RedisValue::Type::kError) return absl::UnavailableError("redis: " + v.str);
  return v;
}

absl::StatusOr<RedisValue> RedisClient::Command(const std::vector<std::string>& argv) {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = EnsureConnectedLocked(); !s.ok()) return s;
  return CommandLocked(argv);
}

absl::StatusOr<RedisValue> RedisClient::Command(const std::vector<std::string>& argv,
                                                absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = EnsureConnectedLocked(); !s.ok()) return s;
  return WithTimeoutLocked(timeout, [&] { return CommandLocked(argv); });
}

absl::StatusOr<RedisValue> RedisClient::Eval(int handle, const std::vector<std::string>& args) {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = EnsureConnectedLocked(); !s.ok()) return s;
  return EvalLocked(handle, args);
}

absl::StatusOr<RedisValue> RedisClient::Eval(int handle, const std::vector<std::string>& args,
                                             absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = EnsureConnectedLocked(); !s.ok()) return s;
  return WithTimeoutLocked(timeout, [&] { return EvalLocked(handle, args); });
}

absl::StatusOr<RedisValue> RedisClient::WithTimeoutLocked(
    absl::Duration timeout, const std::function<absl::StatusOr<RedisValue>()>& call) {
  redisSetTimeout(context_, absl::ToTimeval(timeout));
  timeout_ = timeout;
  auto r = call();
  timeout_ = options_.command_timeout;
  if (context_ != nullptr) redisSetTimeout(context_, absl::ToTimeval(options_.command_timeout));
  return r;
}

absl::StatusOr<RedisValue> RedisClient::EvalLocked(int handle,
                                                   const std::vector<std::string>& args) {
  Script& script = scripts_.at(handle);
  std::vector<std::string> argv;
  argv.reserve(args.size() + 3);
  argv.push_back("EVALSHA");
  argv.push_back(script.sha);
  argv.push_back("0");
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = CommandLocked(argv);
  if (!r.ok() && absl::StrContains(r.status().message(), "NOSCRIPT")) {
    if (absl::Status s = LoadScriptLocked(script); !s.ok()) return s;
    argv[1] = script.sha;
    r = CommandLocked(argv);
  }
  return r;
}

}  // namespace tether::registry
