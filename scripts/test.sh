#!/usr/bin/env bash
# Installs what is missing, builds everything and runs every test.
# Ends with one line "N passed, N failed"; exits non-zero when anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh test || { echo "0 passed, 1 failed"; exit 1; }

log=$(mktemp)
trap 'rm -f "$log"' EXIT
bazel test --jobs=2 //... 2>&1 | tee "$log"
bazel_rc=${PIPESTATUS[0]}

passed=$(grep -cE '^//[^ ]+ +(\(cached\) )?PASSED' "$log")
failed=$(grep -cE '^//[^ ]+ +(\(cached\) )?(FAILED|TIMEOUT|FLAKY|NO STATUS|INCOMPLETE)' "$log")
# A build failure runs no test at all: count it as a failure.
if [[ $bazel_rc -ne 0 && $failed -eq 0 ]]; then failed=1; fi

# Tests outside Bazel: real libFuzzer, bounded in time.
if tests/ws_edge/protocol/fuzz/run_libfuzzer.sh 20; then
  passed=$((passed + 1))
else
  echo "FAILED: libFuzzer run" >&2
  failed=$((failed + 1))
fi

bazel shutdown >/dev/null 2>&1 || true
echo "${passed} passed, ${failed} failed"
[[ $failed -eq 0 ]]
