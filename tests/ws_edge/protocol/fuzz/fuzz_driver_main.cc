// Runs the fuzz target without libFuzzer, so it is part of the normal (GCC) test suite: the seed
// corpus, then deterministic pseudo-random inputs and mutations of the seeds, bounded by an
// iteration count and a time budget. A crash or a violated property aborts the test; the failing
// input is printed first (hex) so it can be replayed.
//
// Usage: frame_fuzzer_test [seeds_file] [iterations] [seconds]
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "tests/ws_edge/protocol/fuzz/frame_fuzzer.h"

namespace {

// Fragments that steer mutations toward interesting JSON and protocol shapes.
const char* const kTokens[] = {"{",
                               "}",
                               "[",
                               "]",
                               ",",
                               ":",
                               "\"",
                               "\\",
                               "null",
                               "true",
                               "false",
                               "-1",
                               "0",
                               "1e309",
                               "1.5",
                               "18446744073709551616",
                               "\\u0000",
                               "\\ud800",
                               "\xff",
                               "\xc3\xa9",
                               "\"\"",
                               "{}",
                               "[]",
                               "\"type\":\"req\"",
                               "\"method\":\"connect\"",
                               "\"params\":",
                               "\"device\":",
                               "\"auth\":",
                               "\"role\":\"operator\"",
                               "\"signedAt\":",
                               "\"nonce\":\"  \"",
                               "\"payloadJSON\":null",
                               "\"error\":null",
                               "-----BEGIN PUBLIC KEY-----\n",
                               "=",
                               "_",
                               "-"};

std::vector<std::string> ReadSeeds(const char* path) {
  std::vector<std::string> seeds;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) seeds.push_back(line);
  }
  return seeds;
}

void Run(const std::string& input) {
  // Print before running: if it crashes, the last line names the culprit.
  static const bool verbose = std::getenv("FUZZ_VERBOSE") != nullptr;
  if (verbose) {
    std::fprintf(stderr, "input:");
    for (unsigned char c : input) std::fprintf(stderr, "%02x", c);
    std::fprintf(stderr, "\n");
  }
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
}

std::string Mutate(std::string s, const std::vector<std::string>& seeds, std::mt19937_64& rng) {
  const auto pick = [&](size_t n) { return n == 0 ? 0 : static_cast<size_t>(rng() % n); };
  const int rounds = 1 + static_cast<int>(pick(8));
  for (int r = 0; r < rounds; ++r) {
    const size_t pos = pick(s.size() + 1);
    switch (pick(7)) {
      case 0:  // flip a bit
        if (!s.empty()) {
          char& c = s[pick(s.size())];
          c = static_cast<char>(static_cast<unsigned char>(c) ^ (1u << pick(8)));
        }
        break;
      case 1:  // overwrite a byte
        if (!s.empty()) s[pick(s.size())] = static_cast<char>(rng());
        break;
      case 2:  // insert a protocol token
        s.insert(pos, kTokens[pick(sizeof(kTokens) / sizeof(kTokens[0]))]);
        break;
      case 3:  // delete a range
        s.erase(pos, pick(16) + 1);
        break;
      case 4:  // duplicate a range
        s.insert(pos, s.substr(pick(s.size() + 1), pick(32)));
        break;
      case 5: {  // splice in part of another seed
        const std::string& other = seeds[pick(seeds.size())];
        s.insert(pos, other.substr(pick(other.size() + 1), pick(64)));
        break;
      }
      default:  // truncate
        s.resize(pos);
    }
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  const char* seeds_path = argc > 1 ? argv[1] : "tests/ws_edge/protocol/fuzz/seeds.txt";
  const int64_t iterations = argc > 2 ? std::atoll(argv[2]) : 20000;
  const double seconds = argc > 3 ? std::atof(argv[3]) : 4.0;
  const std::vector<std::string> seeds = ReadSeeds(seeds_path);
  if (seeds.empty()) {
    std::fprintf(stderr, "no seeds in %s\n", seeds_path);
    return 1;
  }
  for (const std::string& seed : seeds) Run(seed);
  const int64_t accepted_seeds = tether::edge::protocol::fuzz::AcceptedHandshakes();
  // Three seeds are signed connects (v3, v2 with a padded std-base64 key, v3 with a PEM key),
  // each accepted with and without a configured token.
  if (accepted_seeds < 6) {
    std::fprintf(stderr, "only %lld seed handshakes accepted; the seeds went stale\n",
                 static_cast<long long>(accepted_seeds));
    return 1;
  }

  std::mt19937_64 rng(0x7e7e7e7e);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  int64_t runs = 0;
  for (; runs < iterations && std::chrono::steady_clock::now() < deadline; ++runs) {
    if (rng() % 8 == 0) {
      std::string random(rng() % 512, '\0');
      for (char& c : random) c = static_cast<char>(rng());
      Run(random);
    } else {
      Run(Mutate(seeds[rng() % seeds.size()], seeds, rng));
    }
  }
  std::printf("%zu seeds, %lld generated inputs, %lld handshakes accepted\n", seeds.size(),
              static_cast<long long>(runs),  // NOLINT(google-runtime-int): printf
              static_cast<long long>(tether::edge::protocol::fuzz::AcceptedHandshakes()));
  return 0;
}
