// The frame/handshake fuzz target, shared by libFuzzer (run_libfuzzer.sh) and the deterministic
// driver that runs it in the normal test suite (fuzz_driver_main.cc).
#ifndef TETHER_TESTS_WS_EDGE_PROTOCOL_FUZZ_FRAME_FUZZER_H_
#define TETHER_TESTS_WS_EDGE_PROTOCOL_FUZZ_FRAME_FUZZER_H_

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace tether::edge::protocol::fuzz {

// How many inputs the handshake accepted so far, so a driver can tell the seeds reach the
// deepest path (a valid signature) rather than bouncing off the parser.
int64_t AcceptedHandshakes();

}  // namespace tether::edge::protocol::fuzz

#endif  // TETHER_TESTS_WS_EDGE_PROTOCOL_FUZZ_FRAME_FUZZER_H_
