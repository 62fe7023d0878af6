#!/usr/bin/env bash
# tests/chaos/run.sh [--seconds N | --minutes M] [--seed S] [-- CHAOS_FLAGS...]
#
# Builds the chaos soak and the servers with Bazel, then runs the soak: redis-server, a registry
# on it, three edges behind nginx (reaching the registry through a relay the soak can cut and
# stall), a node fleet, an invoke driver and a presence watcher, faults on a schedule drawn from
# the seed. Prints a table; exits 0 when no invariant was violated, 1 when one was (each printed
# with the seed and its timeline), 2 when the soak could not run. Every process it started is
# killed when it ends, whatever the reason. See tests/chaos/README.md.
#
# Runs of --minutes 5 or more append their table to bench/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/../.."

seconds=60 seed=1 extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --seconds) seconds=$2; shift ;;
    --minutes) seconds=$(($2 * 60)); shift ;;
    --seed) seed=$2; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "usage: tests/chaos/run.sh [--seconds N | --minutes M] [--seed S] [-- flags]" >&2; exit 2 ;;
  esac
  shift
done
[[ $seconds =~ ^[0-9]+$ && $seed =~ ^[0-9]+$ ]] || { echo "run.sh: numbers please" >&2; exit 2; }

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
for b in redis-server nginx; do
  command -v "$b" >/dev/null 2>&1 || [[ -x /usr/sbin/$b ]] || { echo "run.sh: $b is missing" >&2; exit 2; }
done

bazel build --jobs=2 //tests/chaos:chaos //registry_service/server:registry_service //ws_edge:ws_edge >&2 || exit 2
bin=$(bazel info bazel-bin 2>/dev/null)

work=$(mktemp -d "${TMPDIR:-/tmp}/tether-chaos.XXXXXX")
out="$work/table.md"
pid=
cleanup() {
  # The soak is its own process group (setpgid); this ends it and every child it started.
  if [[ -n $pid ]]; then kill -9 -- "-$pid" 2>/dev/null; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "=== chaos soak: ${seconds} s, seed ${seed}, logs in ${work}" >&2
"$bin/tests/chaos/chaos" --seconds="$seconds" --seed="$seed" --bin_dir="$bin" --work_dir="$work/run" \
  "${extra[@]}" >"$out" &
pid=$!
wait $pid
rc=$?
cleanup
pid=
cat "$out"

if [[ $seconds -ge 300 ]]; then
  rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  git diff --quiet HEAD 2>/dev/null || rev="$rev + uncommitted changes"
  {
    echo
    echo "## $(date -u '+%Y-%m-%d %H:%M') UTC — chaos soak (tests/chaos/run.sh)"
    echo
    echo "Machine: $(nproc) cores, $(uname -sr). Commit $rev. Exit status $rc."
    echo "Command: \`tests/chaos/run.sh --seconds $seconds --seed $seed${extra:+ -- ${extra[*]}}\`"
    sed '1{/^$/d}' "$out"
  } >>bench/RESULTS.md
fi
exit $rc
