#include "registry_service/server/auth.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/log.h"

namespace tether::registry {
namespace {

std::string Digest(absl::string_view token) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), d);
  return std::string(reinterpret_cast<char*>(d), sizeof(d));
}

std::optional<Scope> ParseScope(absl::string_view s) {
  for (Scope scope : {Scope::kRead, Scope::kWrite, Scope::kPairing, Scope::kAdmin}) {
    if (s == ScopeName(scope)) return scope;
  }
  return std::nullopt;
}

unsigned Bit(Scope s) { return 1u << static_cast<unsigned>(s); }

}  // namespace

const char* ScopeName(Scope scope) {
  switch (scope) {
    case Scope::kRead:
      return "read";
    case Scope::kWrite:
      return "write";
    case Scope::kPairing:
      return "pairing";
    case Scope::kAdmin:
      return "admin";
  }
  return "?";
}

ApiAuth::ApiAuth(std::string path, bool open) : path_(std::move(path)), open_(open) {}

absl::Status ApiAuth::Reload() {
  if (path_.empty()) return absl::OkStatus();
  std::ifstream in(path_);
  if (!in) return absl::NotFoundError("cannot read token file " + path_);
  absl::flat_hash_map<std::string, Grant> fresh;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    line.resize(std::min(line.size(), line.find('#')));
    absl::string_view l = absl::StripAsciiWhitespace(line);
    if (l.empty()) continue;
    std::vector<absl::string_view> parts = absl::StrSplit(l, ' ', absl::SkipEmpty());
    if (parts.size() < 2) {
      return absl::InvalidArgumentError(path_ + ":" + std::to_string(n) +
                                        ": expected '<token> <scopes> [name]'");
    }
    Grant g;
    for (absl::string_view s : absl::StrSplit(parts[1], ',', absl::SkipEmpty())) {
      auto scope = ParseScope(s);
      if (!scope) {
        return absl::InvalidArgumentError(path_ + ":" + std::to_string(n) + ": unknown scope '" +
                                          std::string(s) + "' (read, write, pairing, admin)");
      }
      g.scopes |= Bit(*scope);
    }
    g.name = parts.size() > 2 ? std::string(parts[2]) : "line " + std::to_string(n);
    fresh[Digest(parts[0])] = std::move(g);
  }
  absl::MutexLock lock(&mu_);
  by_digest_ = std::move(fresh);
  common::Log(common::LogLevel::kInfo, "api_tokens_loaded",
              {{"path", path_}, {"tokens", std::to_string(by_digest_.size())}});
  return absl::OkStatus();
}

grpc::Status ApiAuth::Authorize(const grpc::ServerContextBase& ctx, Scope needed,
                                std::string* caller) const {
  if (open_) return grpc::Status::OK;
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing 'authorization: Bearer <token>' metadata");
  }
  absl::string_view value(it->second.data(), it->second.size());
  if (!absl::ConsumePrefix(&value, "Bearer ") && !absl::ConsumePrefix(&value, "bearer ")) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "authorization must be 'Bearer <token>'");
  }
  const std::string digest = Digest(absl::StripAsciiWhitespace(value));
  absl::MutexLock lock(&mu_);
  auto grant = by_digest_.find(digest);
  if (grant == by_digest_.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown API token");
  }
  const unsigned have = grant->second.scopes;
  if ((have & Bit(Scope::kAdmin)) != 0 || (have & Bit(needed)) != 0) {
    if (caller != nullptr) *caller = digest;
    return grpc::Status::OK;
  }
  return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                      std::string("this call needs the '") + ScopeName(needed) + "' scope");
}

grpc::Status EdgeAuth::Authorize(const grpc::ServerContextBase& ctx) const {
  if (secret_.empty()) return grpc::Status::OK;
  const auto& md = ctx.client_metadata();
  auto it = md.find(kEdgeSecretHeader);
  if (it == md.end() || it->second.size() != secret_.size() ||
      CRYPTO_memcmp(it->second.data(), secret_.data(), secret_.size()) != 0) {
    common::Log(common::LogLevel::kWarn, "edge_auth_failed",
                {{"peer", ctx.peer()}, {"had_secret", it == md.end() ? "no" : "yes"}});
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "edge secret missing or wrong");
  }
  return grpc::Status::OK;
}

}  // namespace tether::registry
