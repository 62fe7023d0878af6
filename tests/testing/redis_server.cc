#include "tests/testing/redis_server.h"

#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <thread>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tether::testing {
namespace {

std::string RedisServerBinary() {
  for (const char* path : {"/usr/bin/redis-server", "/usr/local/bin/redis-server"}) {
    if (access(path, X_OK) == 0) return path;
  }
  return "";
}

}  // namespace

absl::StatusOr<std::unique_ptr<RedisServer>> RedisServer::Start() {
  signal(SIGPIPE, SIG_IGN);
  const std::string binary = RedisServerBinary();
  if (binary.empty()) {
    return absl::FailedPreconditionError("redis-server not installed (scripts/install_deps.sh)");
  }
  std::unique_ptr<RedisServer> server(new RedisServer());
  server->port_ = FreePort();
  if (absl::Status s = server->Launch(); !s.ok()) return s;
  return server;
}

absl::StatusOr<std::unique_ptr<RedisServer>> RedisServer::StartTls(const std::string& cert,
                                                                   const std::string& key,
                                                                   const std::string& ca,
                                                                   const std::string& client_cert,
                                                                   const std::string& client_key) {
  signal(SIGPIPE, SIG_IGN);
  if (RedisServerBinary().empty()) {
    return absl::FailedPreconditionError("redis-server not installed (scripts/install_deps.sh)");
  }
  std::unique_ptr<RedisServer> server(new RedisServer());
  server->port_ = FreePort();
  server->tls_args_ = {
      "--tls-cert-file",    cert, "--tls-key-file",     key,
      "--tls-ca-cert-file", ca,   "--tls-auth-clients", client_cert.empty() ? "no" : "yes"};
  server->tls_.enabled = true;
  server->tls_.ca_file = ca;
  server->tls_.cert_file = client_cert;
  server->tls_.key_file = client_key;
  if (absl::Status s = server->Launch(); !s.ok()) return s;
  return server;
}

absl::Status RedisServer::Launch() {
  const std::string dir = TempPath("redis");
  mkdir(dir.c_str(), 0700);
  std::vector<std::string> args = {"--bind",       "127.0.0.1", "--save", "",
                                   "--appendonly", "no",        "--dir",  dir};
  if (tls_args_.empty()) {
    args.insert(args.end(), {"--port", std::to_string(port_)});
  } else {
    args.insert(args.end(), {"--port", "0", "--tls-port", std::to_string(port_)});
    args.insert(args.end(), tls_args_.begin(), tls_args_.end());
  }
  process_ = std::make_unique<ChildProcess>(RedisServerBinary(), args, std::vector<std::string>{},
                                            /*port_file_flag=*/false);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  absl::Status last;
  while (absl::Now() < deadline) {
    if (!process_->running()) {
      return absl::InternalError("redis-server exited:\n" + process_->Log());
    }
    auto pong = Command({"PING"});
    if (pong.ok()) return absl::OkStatus();
    last = pong.status();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return absl::DeadlineExceededError("redis-server did not answer PING: " + last.ToString() + "\n" +
                                     process_->Log());
}

absl::Status RedisServer::Restart() {
  Kill();
  return Launch();
}

RedisServer::~RedisServer() { Kill(); }

registry::RedisClientOptions RedisServer::ClientOptions() const {
  registry::RedisClientOptions o;
  o.address.host = "127.0.0.1";
  o.address.port = port_;
  o.address.tls = tls_.enabled;
  o.tls = tls_;
  return o;
}

absl::StatusOr<registry::RedisValue> RedisServer::Command(const std::vector<std::string>& argv) {
  registry::RedisClientOptions o = ClientOptions();
  o.connect_timeout = absl::Milliseconds(500);
  o.command_timeout = absl::Seconds(5);
  registry::RedisClient client(o);
  return client.Command(argv);
}

void RedisServer::Kill() {
  if (process_ == nullptr) return;
  process_->Signal(SIGKILL);
  process_->Wait(absl::Seconds(10));
}

}  // namespace tether::testing
