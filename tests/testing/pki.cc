#include "tests/testing/pki.h"

#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

namespace tether::testing {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool MakePki(const std::string& dir, Pki* out) {
  mkdir(dir.c_str(), 0700);
  const std::string d = dir;
  std::ofstream(d + "/server.ext") << "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                      "extendedKeyUsage=serverAuth\n";
  std::ofstream(d + "/client.ext") << "extendedKeyUsage=clientAuth\n";
  auto key = [&](const std::string& name) {
    return "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out " + d + "/" + name +
           ".key";
  };
  auto ca = [&](const std::string& name, const std::string& cn) {
    return key(name) + " && openssl req -x509 -new -key " + d + "/" + name +
           ".key -days 2 -subj /CN=" + cn + " -out " + d + "/" + name + ".pem";
  };
  auto leaf = [&](const std::string& name, const std::string& cn, const std::string& ca_name,
                  const std::string& ext) {
    return key(name) + " && openssl req -new -key " + d + "/" + name + ".key -subj /CN=" + cn +
           " -out " + d + "/" + name + ".csr && openssl x509 -req -in " + d + "/" + name +
           ".csr -CA " + d + "/" + ca_name + ".pem -CAkey " + d + "/" + ca_name +
           ".key -CAcreateserial -days 2 -extfile " + d + "/" + ext + " -out " + d + "/" + name +
           ".pem";
  };
  const std::vector<std::string> steps = {
      ca("ca", "tether-test-ca"),
      ca("rogue-ca", "rogue-ca"),
      leaf("server", "localhost", "ca", "server.ext"),
      leaf("edge", "edge-1", "ca", "client.ext"),
      leaf("rogue", "edge-rogue", "rogue-ca", "client.ext"),
  };
  for (const std::string& step : steps) {
    const std::string cmd = "(" + step + ") >/dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0) {
      std::fprintf(stderr, "pki step failed: %s\n", step.c_str());
      return false;
    }
  }
  out->dir = dir;
  return true;
}

}  // namespace tether::testing
