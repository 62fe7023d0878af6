#!/usr/bin/env bash
# bench/run.sh [--store redis|memory] [SCENARIO...] [-- BENCH_FLAGS...]
#
# --store redis (the default, as in production) starts a redis-server on loopback for the run
# (no persistence, so the figure is the registry's, not the disk's) and points the registry at
# it; --store memory runs the registry on its in-process store.
#
# Builds the benchmark and the servers with -c opt, then for each scenario starts a registry,
# edge(s) and fleet process(es) on loopback, runs it, prints its results table and appends it to
# bench/RESULTS.md with the date, the machine and the exact command.
#
# Scenarios: idle, handshake, invoke, storm, core (default: all five, in that order).
# BENCH_FLAGS go to bazel-out/k8-opt/bin/bench/bench (see its --help), e.g.
#   bench/run.sh storm -- --nodes=5000 --invoke_rate=1000
# Exit status: 0 if every scenario ran without a correctness problem.
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/redis.sh

scenarios=()
extra=()
store=redis
while [[ $# -gt 0 ]]; do
  if [[ $1 == "--" ]]; then
    shift
    extra=("$@")
    break
  fi
  case $1 in
    --store) store="${2:?--store needs redis or memory}"; shift ;;
    --store=*) store="${1#--store=}" ;;
    idle | handshake | invoke | storm | core) scenarios+=("$1") ;;
    *) echo "usage: bench/run.sh [idle|handshake|invoke|storm|core ...] [-- bench flags]" >&2; exit 2 ;;
  esac
  shift
done
[[ ${#scenarios[@]} -eq 0 ]] && scenarios=(idle handshake invoke storm core)

# Sockets: every process may hold as many files as the hard limit allows (the edge inherits it).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

bazel build --jobs=2 -c opt //bench:bench //bench:fleet //bench:core_bench \
  //registry_service/server:registry_service //ws_edge:ws_edge || exit 2
bin=bazel-out/k8-opt/bin

work=$(mktemp -d "${TMPDIR:-/tmp}/tether-bench.XXXXXX")
cpu_model=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
mem_gib=$(awk '/MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)
machine="$(nproc) cores (${cpu_model:-unknown CPU}), ${mem_gib} GiB RAM, $(uname -sr), open-file limit $(ulimit -n) per process"
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- . ':(exclude)bench/RESULTS.md' 2>/dev/null || rev="$rev + uncommitted changes"  # (its own appends do not count)

redis_pid=""
store_flags=()
if [[ $store == redis ]]; then
  start_bench_redis "$work"
  trap '[[ -n $redis_pid ]] && kill $redis_pid 2>/dev/null' EXIT
elif [[ $store != memory ]]; then
  echo "--store is redis or memory" >&2
  exit 2
fi

status=0
for s in "${scenarios[@]}"; do
  # A fresh database per scenario: each starts from an empty registry.
  [[ -n $redis_pid ]] && redis-cli -p "$redis_port" flushall >/dev/null
  cmd="bench/run.sh --store $store $s"
  [[ ${#extra[@]} -gt 0 ]] && cmd+=" --$(printf ' %q' "${extra[@]}")"
  # How busy the machine was just before (other work on the two cores skews every figure).
  read -r _ u1 n1 s1 i1 w1 q1 sq1 _ </proc/stat
  sleep 2
  read -r _ u2 n2 s2 i2 w2 q2 sq2 _ </proc/stat
  busy1=$((u1 + n1 + s1 + q1 + sq1)) busy2=$((u2 + n2 + s2 + q2 + sq2))
  idle_d=$((i2 + w2 - i1 - w1))
  busy_pct=$(( 100 * (busy2 - busy1) / (busy2 - busy1 + idle_d + 1) ))
  echo "=== $cmd (logs in $work)" >&2
  out="$work/$s.md"
  "$bin/bench/bench" --scenario="$s" --bin_dir="$bin" --work_dir="$work" "${store_flags[@]}" \
    "${extra[@]}" >"$out" 2>"$work/$s.stderr" &
  pid=$!
  # The fleets' progress lines, as they come.
  tail -f --pid=$pid "$work/$s.stderr" >&2 2>/dev/null
  wait $pid
  rc=$?
  [[ $rc -ne 0 ]] && status=1
  {
    echo
    echo "## $(date -u '+%Y-%m-%d %H:%M') UTC — \`$s\` (bench/run.sh)"
    echo
    echo "Machine: $machine; CPU ${busy_pct} % busy in the 2 s before the run. Commit $rev, \`-c opt\`, store: $store."
    if [[ -n $redis_pid ]]; then
      echo "Redis memory after the run: $(redis-cli -p "$redis_port" info memory | sed -n 's/^used_memory_human://p' | tr -d '\r'), $(redis-cli -p "$redis_port" dbsize | tr -d '\r') keys; redis-server CPU seconds so far (this and earlier scenarios): $(redis-cli -p "$redis_port" info cpu | awk -F: '/^used_cpu_(user|sys):/ {t += $2} END {printf "%.1f", t}')."
    fi
    echo "Command: \`$cmd\`"
    echo
    if [[ $rc -eq 2 ]]; then
      echo "Did not run: $(grep -v '^fleet' "$work/$s.stderr" | tail -5)"
    else
      sed '1{/^### /d}' "$out"
    fi
  } | tee -a bench/RESULTS.md
done
exit $status
