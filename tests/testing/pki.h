// Test certificates, generated at test time with the openssl command (no keys are committed).
#ifndef TETHER_TESTS_TESTING_PKI_H_
#define TETHER_TESTS_TESTING_PKI_H_

#include <string>

namespace tether::testing {

// Files under `dir`: ca.pem/ca.key (CA 1), server.pem/server.key (CN localhost, SAN
// 127.0.0.1 and localhost, signed by CA 1), edge.pem/edge.key (client cert signed by CA 1),
// rogue-ca.pem and rogue.pem/rogue.key (a client cert signed by another CA).
struct Pki {
  std::string dir;
  std::string Path(const std::string& name) const { return dir + "/" + name; }
};

// Creates the files; returns false (after printing the failing command) on error.
bool MakePki(const std::string& dir, Pki* out);

std::string ReadFile(const std::string& path);

}  // namespace tether::testing

#endif  // TETHER_TESTS_TESTING_PKI_H_
