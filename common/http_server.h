// HttpServer: a minimal HTTP/1.0 GET listener for /metrics and health probes.
#ifndef TETHER_COMMON_HTTP_SERVER_H_
#define TETHER_COMMON_HTTP_SERVER_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace tether::common {

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; version=0.0.4";
  std::string body;
};

// Serves GET requests for registered paths on its own thread, one short request per
// connection (Prometheus scrapes and kubelet probes need no more). Owns its thread and socket;
// handlers run on that thread and must be thread-safe with the rest of the process.
class HttpServer {
 public:
  using Handler = std::function<HttpResponse()>;
  HttpServer();
  ~HttpServer();

  void Handle(const std::string& path, Handler handler);  // before Start
  // Binds host:port (port 0: any) and starts serving; returns the bound port.
  absl::StatusOr<int> Start(const std::string& host, int port);
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::map<std::string, Handler> handlers_;
  std::thread thread_;
};

}  // namespace tether::common

#endif  // TETHER_COMMON_HTTP_SERVER_H_
