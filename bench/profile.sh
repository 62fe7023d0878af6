#!/usr/bin/env bash
# bench/profile.sh [--store redis|memory] [--delay S] [--seconds N] SCENARIO [-- BENCH_FLAGS...]
#
# Where the CPU goes: runs one bench scenario (as bench/run.sh does, -c opt, same processes) and,
# DELAY seconds after it starts (default 8), samples the registry, the first edge and (with
# --store redis) redis-server with
# `perf record -e cpu-clock` (a software clock: it works where the machine has no hardware
# counters) and DWARF call stacks for N seconds (default 8). Prints, for each process, the share
# of its samples by library, by function (self time) and by calling entry point, and keeps the
# perf.data files. The figures of a profiled run are not recorded: sampling costs CPU.
#   bench/profile.sh --store memory invoke -- --rates=none --concurrency=64 --duration_s=20
#   bench/profile.sh --store redis --delay 2 handshake -- --windows=256
# Needs perf (Debian: linux-perf; scripts/install_deps.sh bench installs it).
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/redis.sh

store=redis delay=8 seconds=8
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --store) store="${2:?}"; shift 2 ;;
    --delay) delay="${2:?}"; shift 2 ;;
    --seconds) seconds="${2:?}"; shift 2 ;;
    --) break ;;
    *) echo "usage: bench/profile.sh [--store S] [--delay S] [--seconds N] SCENARIO [-- flags]" >&2; exit 2 ;;
  esac
done
scenario=${1:?usage: bench/profile.sh [--store S] [--delay S] [--seconds N] SCENARIO [-- flags]}
shift
[[ ${1:-} == "--" ]] && shift
extra=("$@")
command -v perf >/dev/null || { echo "perf is missing: scripts/install_deps.sh bench" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

bazel build --jobs=2 -c opt //bench:bench //bench:fleet //bench:core_bench \
  //registry_service/server:registry_service //ws_edge:ws_edge || exit 2
bin=bazel-out/k8-opt/bin
work=$(mktemp -d "${TMPDIR:-/tmp}/tether-profile.XXXXXX")

redis_pid=""
store_flags=()
trap '[[ -n $redis_pid ]] && kill $redis_pid 2>/dev/null' EXIT
if [[ $store == redis ]]; then
  start_bench_redis "$work"
fi

echo "=== profiling $scenario (store $store), logs and perf data in $work" >&2
"$bin/bench/bench" --scenario="$scenario" --bin_dir="$bin" --work_dir="$work" --progress=false \
  "${store_flags[@]}" "${extra[@]}" >"$work/$scenario.md" 2>"$work/$scenario.stderr" &
bench_pid=$!
sleep "$delay"

# The bench starts every process as its own child; the first edge is the first ws_edge.
registry=$(pgrep -P "$bench_pid" -f "$bin/registry_service/server/registry_service" | head -1)
edge=$(pgrep -P "$bench_pid" -f "$bin/ws_edge/ws_edge" | head -1)
redis=$redis_pid
perf_pids=()
for who in registry edge redis; do
  [[ $who == redis && -z $redis ]] && continue
  pid=${!who}
  [[ -z $pid ]] && { echo "no $who process under the bench after ${delay}s" >&2; continue; }
  perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$pid" -o "$work/$who.data" \
    -- sleep "$seconds" >"$work/$who.perf.log" 2>&1 &
  perf_pids+=($!)
done
wait "${perf_pids[@]}"
wait "$bench_pid"
echo "bench exit status $? (figures of a profiled run are not recorded)" >&2

for who in registry edge redis; do
  [[ -f $work/$who.data ]] || continue
  samples=$(perf report -i "$work/$who.data" --stdio --no-children --sort dso 2>/dev/null |
    sed -n 's/^# Samples: \([0-9.]*[kKmM]*\).*/\1/p' | head -1)
  echo
  echo "### $who: $samples samples of cpu-clock at 499 Hz over ${seconds} s"
  echo
  echo "By library (self):"
  perf report -i "$work/$who.data" --stdio --no-children --sort dso 2>/dev/null |
    grep -E '^ +[0-9]' | head -12
  echo
  echo "By function (self, top 25):"
  perf report -i "$work/$who.data" --stdio --no-children --sort dso,sym -g none 2>/dev/null |
    grep -E '^ +[0-9]' | head -25
  echo
  echo "By function including callees (top 40):"
  perf report -i "$work/$who.data" --stdio --children --sort sym -g none 2>/dev/null |
    grep -E '^ +[0-9]' | head -40
done
echo
echo "Reproduce: bench/profile.sh --store $store --delay $delay --seconds $seconds $scenario${extra[*]:+ -- ${extra[*]}}"
