// Random identifiers: conn ids, invoke ids, nonces, tokens.
#ifndef TETHER_COMMON_IDS_H_
#define TETHER_COMMON_IDS_H_

#include <string>

namespace tether::common {

// 128 random bits as 32 lowercase hex characters. Thread-safe.
std::string RandomHexId();

// A process-unique id, unique across processes too (a random 64-bit prefix drawn once per
// process, then a counter), as 32 lowercase hex characters. Much cheaper than RandomHexId; for
// ids that must be unique but need not be unguessable (conn ids, invoke ids). Thread-safe.
std::string UniqueId();

// A random RFC 4122 version-4 UUID string (as OpenClaw uses for nonces and invoke ids).
std::string RandomUuid();

// `n` random bytes from the OS's CSPRNG, base64url without padding (for secrets).
std::string RandomToken(int n = 32);

}  // namespace tether::common

#endif  // TETHER_COMMON_IDS_H_
