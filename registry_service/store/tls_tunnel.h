// TlsTunnel: TLS to a Redis server for hiredis, which Debian 12 ships without TLS (0.14).
#ifndef TETHER_REGISTRY_SERVICE_STORE_TLS_TUNNEL_H_
#define TETHER_REGISTRY_SERVICE_STORE_TLS_TUNNEL_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;

namespace tether::registry {

struct RedisTlsOptions {
  bool enabled = false;     // rediss:// URLs
  std::string ca_file;      // PEM CAs the server's certificate must chain to; empty: system's
  std::string cert_file;    // client certificate (PEM), when the server requires one
  std::string key_file;     // its private key (PEM)
  std::string server_name;  // name the certificate must carry; empty: the URL's host
};

// One TLS connection to host:port (the server verified against the CAs and its name), bridged
// to a plain socket pair: hiredis reads and writes one end (local_fd) as if it were the
// server's socket, and a thread of the tunnel moves bytes between the other end and the TLS
// connection. Either side closing closes the other, so hiredis sees the server go away as it
// would without TLS, and its timeouts apply unchanged.
//
// Owns its sockets, its SSL objects and its thread; the destructor stops the thread and closes
// everything (hiredis must have been freed, or must free the local end itself, before).
class TlsTunnel {
 public:
  // TCP connect and TLS handshake within `timeout`. kUnavailable with the reason (unreachable,
  // handshake failed, certificate not trusted or for another name).
  static absl::StatusOr<std::unique_ptr<TlsTunnel>> Open(const std::string& host, int port,
                                                         const RedisTlsOptions& options,
                                                         absl::Duration timeout);
  ~TlsTunnel();
  TlsTunnel(const TlsTunnel&) = delete;
  TlsTunnel& operator=(const TlsTunnel&) = delete;

  // The plain end for hiredis (redisConnectFd); whoever takes it closes it.
  int TakeLocalFd();

 private:
  TlsTunnel() = default;
  void Pump();  // the thread: until either side closes or Stop

  SSL_CTX* ctx_ = nullptr;  // owned
  SSL* ssl_ = nullptr;      // owned
  int tcp_fd_ = -1;         // owned
  int pump_fd_ = -1;        // owned: the tunnel's end of the pair
  int local_fd_ = -1;       // hiredis's end until taken
  int wake_[2] = {-1, -1};  // owned: the destructor wakes the pump through it
  std::thread thread_;
};

}  // namespace tether::registry

#endif  // TETHER_REGISTRY_SERVICE_STORE_TLS_TUNNEL_H_
