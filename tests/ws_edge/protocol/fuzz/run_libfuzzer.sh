#!/usr/bin/env bash
# Builds the frame/handshake fuzz target with clang's libFuzzer and AddressSanitizer (no Bazel)
# and runs it for SECONDS (default 60) on a seed corpus written to a temp dir.
# Exits non-zero if the fuzzer finds a crash, a leak or a violated property; the reproducer is
# then kept in the printed directory.
#
#   tests/ws_edge/protocol/fuzz/run_libfuzzer.sh 30
set -euo pipefail

seconds="${1:-60}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/../../../.." && pwd)"
cxx="${CXX:-clang++-14}"
absl_modules=(absl_status absl_statusor absl_strings absl_str_format)

work="$(mktemp -d "${TMPDIR:-/tmp}/tether-frame-fuzz.XXXXXX")"
mkdir -p "${work}/corpus"

echo "building ${work}/frame_fuzzer with ${cxx}"
# shellcheck disable=SC2046  # pkg-config output is a list of flags
"${cxx}" -std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address \
  -I"${root}" $(pkg-config --cflags "${absl_modules[@]}") \
  "${root}/ws_edge/protocol/frame.cc" \
  "${root}/ws_edge/protocol/connect_params.cc" \
  "${root}/ws_edge/protocol/device_identity.cc" \
  "${root}/ws_edge/protocol/handshake.cc" \
  "${root}/ws_edge/protocol/hello.cc" \
  "${here}/frame_fuzzer.cc" \
  -o "${work}/frame_fuzzer" \
  -lcrypto $(pkg-config --libs "${absl_modules[@]}")

# One seed per line of seeds.txt (the same seeds the Bazel driver uses).
n=0
while IFS= read -r line || [[ -n "${line}" ]]; do
  [[ -z "${line}" ]] && continue
  printf '%s' "${line}" > "${work}/corpus/seed_${n}"
  n=$((n + 1))
done < "${here}/seeds.txt"

# A dictionary of protocol words helps the mutator build plausible frames.
cat > "${work}/frame.dict" <<'DICT'
"\"type\""
"\"req\""
"\"res\""
"\"event\""
"\"id\""
"\"method\""
"\"connect\""
"\"params\""
"\"payload\""
"\"payloadJSON\""
"\"error\""
"\"ok\""
"\"seq\""
"\"minProtocol\""
"\"maxProtocol\""
"\"client\""
"\"node-host\""
"\"mode\""
"\"node\""
"\"role\""
"\"scopes\""
"\"device\""
"\"publicKey\""
"\"signature\""
"\"signedAt\""
"\"nonce\""
"\"auth\""
"\"token\""
"\"deviceToken\""
"-----BEGIN PUBLIC KEY-----"
"null"
"true"
"false"
DICT

echo "fuzzing for ${seconds}s with ${n} seeds"
status=0
"${work}/frame_fuzzer" -max_total_time="${seconds}" -timeout=10 -max_len=65536 \
  -dict="${work}/frame.dict" -artifact_prefix="${work}/" -print_final_stats=1 \
  "${work}/corpus" || status=$?

if [[ ${status} -ne 0 ]]; then
  echo "FUZZER FAILED (exit ${status}); reproducer and binary kept in ${work}" >&2
  exit "${status}"
fi
rm -rf "${work}"
echo "no crash in ${seconds}s"
