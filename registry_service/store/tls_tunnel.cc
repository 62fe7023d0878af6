#include "registry_service/store/tls_tunnel.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace tether::registry {
namespace {

std::string SslError() {
  unsigned long e = ERR_get_error();
  if (e == 0) return "unknown TLS error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  ERR_clear_error();
  return buf;
}

void SetNonBlocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

int RemainingMs(absl::Time deadline) {
  return static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now())));
}

// Waits for `events` on `fd` until `deadline`; false on timeout or error.
bool WaitFor(int fd, short events, absl::Time deadline) {
  pollfd p{fd, events, 0};
  for (;;) {
    int r = poll(&p, 1, RemainingMs(deadline));
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) return false;
  }
}

absl::StatusOr<int> ConnectTcp(const std::string& host, int port, absl::Time deadline) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  if (int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &res); rc != 0) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", host, ": ", gai_strerror(rc)));
  }
  std::string last = "no address";
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    SetNonBlocking(fd);
    int rc = connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS && WaitFor(fd, POLLOUT, deadline)) {
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      rc = err == 0 ? 0 : -1;
      errno = err != 0 ? err : ETIMEDOUT;
    } else if (rc != 0 && errno == EINPROGRESS) {
      errno = ETIMEDOUT;
    }
    if (rc == 0) {
      freeaddrinfo(res);
      return fd;
    }
    last = strerror(errno);
    close(fd);
  }
  freeaddrinfo(res);
  return absl::UnavailableError(absl::StrCat("cannot connect: ", last));
}

bool IsIpAddress(const std::string& s) {
  unsigned char buf[sizeof(in6_addr)];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TlsTunnel>> TlsTunnel::Open(const std::string& host, int port,
                                                           const RedisTlsOptions& options,
                                                           absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::unique_ptr<TlsTunnel> t(new TlsTunnel());
  t->ctx_ = SSL_CTX_new(TLS_client_method());
  if (t->ctx_ == nullptr) return absl::InternalError("TLS: " + SslError());
  SSL_CTX_set_min_proto_version(t->ctx_, TLS1_2_VERSION);
  SSL_CTX_set_verify(t->ctx_, SSL_VERIFY_PEER, nullptr);
  const bool cas = options.ca_file.empty() ? SSL_CTX_set_default_verify_paths(t->ctx_) == 1
                                           : SSL_CTX_load_verify_locations(
                                                 t->ctx_, options.ca_file.c_str(), nullptr) == 1;
  if (!cas) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS: cannot load CA certificates '", options.ca_file, "': ", SslError()));
  }
  if (!options.cert_file.empty()) {
    if (SSL_CTX_use_certificate_chain_file(t->ctx_, options.cert_file.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(t->ctx_, options.key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(t->ctx_) != 1) {
      return absl::InvalidArgumentError(absl::StrCat("TLS: cannot use client certificate '",
                                                     options.cert_file, "': ", SslError()));
    }
  }
  auto fd = ConnectTcp(host, port, deadline);
  if (!fd.ok()) return fd.status();
  t->tcp_fd_ = *fd;
  t->ssl_ = SSL_new(t->ctx_);
  if (t->ssl_ == nullptr) return absl::InternalError("TLS: " + SslError());
  // The application writes from a buffer that grows between retries; partial writes are fine.
  SSL_set_mode(t->ssl_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_set_fd(t->ssl_, t->tcp_fd_);
  const std::string name = options.server_name.empty() ? host : options.server_name;
  X509_VERIFY_PARAM* param = SSL_get0_param(t->ssl_);
  if (IsIpAddress(name)) {
    X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str());
  } else {
    SSL_set_tlsext_host_name(t->ssl_, name.c_str());
    X509_VERIFY_PARAM_set1_host(param, name.c_str(), 0);
  }
  for (;;) {
    int rc = SSL_connect(t->ssl_);
    if (rc == 1) break;
    int e = SSL_get_error(t->ssl_, rc);
    if ((e == SSL_ERROR_WANT_READ && WaitFor(t->tcp_fd_, POLLIN, deadline)) ||
        (e == SSL_ERROR_WANT_WRITE && WaitFor(t->tcp_fd_, POLLOUT, deadline))) {
      continue;
    }
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      return absl::UnavailableError("TLS handshake timed out");
    }
    const long verify = SSL_get_verify_result(t->ssl_);
    if (verify != X509_V_OK) {
      return absl::UnavailableError(absl::StrCat("TLS: server certificate not accepted for '", name,
                                                 "': ", X509_verify_cert_error_string(verify)));
    }
    return absl::UnavailableError("TLS handshake failed: " + SslError());
  }
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0 ||
      pipe2(t->wake_, O_CLOEXEC | O_NONBLOCK) != 0) {
    return absl::InternalError(absl::StrCat("TLS tunnel: ", strerror(errno)));
  }
  t->local_fd_ = pair[0];
  t->pump_fd_ = pair[1];
  SetNonBlocking(t->pump_fd_);
  TlsTunnel* raw = t.get();
  t->thread_ = std::thread([raw] { raw->Pump(); });
  return t;
}

int TlsTunnel::TakeLocalFd() { return std::exchange(local_fd_, -1); }

void TlsTunnel::Pump() {
  constexpr size_t kMaxBuffered = 1 << 20;
  std::string to_tls, to_local;
  char buf[16384];
  for (;;) {
    bool progress = true;
    while (progress) {
      progress = false;
      if (to_local.size() < kMaxBuffered) {  // server -> hiredis
        int n = SSL_read(ssl_, buf, sizeof(buf));
        if (n > 0) {
          to_local.append(buf, static_cast<size_t>(n));
          progress = true;
        } else {
          int e = SSL_get_error(ssl_, n);
          if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) goto done;  // closed
        }
      }
      if (!to_local.empty()) {
        ssize_t w = write(pump_fd_, to_local.data(), to_local.size());
        if (w > 0) {
          to_local.erase(0, static_cast<size_t>(w));
          progress = true;
        } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
          goto done;
        }
      }
      if (to_tls.size() < kMaxBuffered) {  // hiredis -> server
        ssize_t r = read(pump_fd_, buf, sizeof(buf));
        if (r > 0) {
          to_tls.append(buf, static_cast<size_t>(r));
          progress = true;
        } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
          goto done;  // hiredis dropped the connection
        }
      }
      if (!to_tls.empty()) {
        int n = SSL_write(ssl_, to_tls.data(),
                          static_cast<int>(std::min<size_t>(to_tls.size(), INT_MAX)));
        if (n > 0) {
          to_tls.erase(0, static_cast<size_t>(n));
          progress = true;
        } else {
          int e = SSL_get_error(ssl_, n);
          if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) goto done;
        }
      }
    }
    pollfd p[3] = {
        {pump_fd_,
         static_cast<short>((to_tls.size() < kMaxBuffered ? POLLIN : 0) |
                            (to_local.empty() ? 0 : POLLOUT)),
         0},
        {tcp_fd_, static_cast<short>(POLLIN | (to_tls.empty() ? 0 : POLLOUT)), 0},
        {wake_[0], POLLIN, 0},
    };
    if (poll(p, 3, -1) < 0 && errno != EINTR) goto done;
    if (p[2].revents != 0) goto done;
  }
done:
  // Both directions end: hiredis reads EOF (the server went away), the server sees the close.
  shutdown(pump_fd_, SHUT_RDWR);
  shutdown(tcp_fd_, SHUT_RDWR);
}

TlsTunnel::~TlsTunnel() {
  if (thread_.joinable()) {
    char c = 1;
    (void)!write(wake_[1], &c, 1);
    thread_.join();
  }
  if (ssl_ != nullptr) SSL_free(ssl_);
  if (ctx_ != nullptr) SSL_CTX_free(ctx_);
  for (int fd : {tcp_fd_, pump_fd_, local_fd_, wake_[0], wake_[1]}) {
    if (fd >= 0) close(fd);
  }
}

}  // namespace tether::registry
