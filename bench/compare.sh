#!/usr/bin/env bash
# bench/compare.sh [--runs N] [--store redis|memory] REV_A REV_B SCENARIO [-- BENCH_FLAGS...]
#
# Builds two revisions (each in a git worktree of its own, -c opt, sharing the Bazel disk cache)
# and runs one bench/run.sh scenario (idle, handshake, invoke, storm, core) with each, in turn:
# A, B, A, B, ... N times each (default 3). Prints, for every figure of the scenario's table, the
# median for A and for B and the ratio B/A. Absolute figures move from run to run on a shared
# machine; a ratio measured in one interleaved run does not move much. Put its output in the
# commit message of an optimisation.
#   bench/compare.sh HEAD~1 HEAD core
#   bench/compare.sh --runs 5 --store memory main my-branch invoke -- --rates=2000
# Exit status: 0 when every run ran (whatever the figures), 2 when a build or a run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/redis.sh

runs=3
store=redis
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --runs) runs="${2:?}"; shift 2 ;;
    --store) store="${2:?}"; shift 2 ;;
    --) break ;;
    *) echo "usage: bench/compare.sh [--runs N] [--store redis|memory] REV_A REV_B SCENARIO [-- flags]" >&2; exit 2 ;;
  esac
done
if [[ $# -lt 3 ]]; then
  echo "usage: bench/compare.sh [--runs N] [--store redis|memory] REV_A REV_B SCENARIO [-- flags]" >&2
  exit 2
fi
rev_a=$1 rev_b=$2 scenario=$3
shift 3
[[ ${1:-} == "--" ]] && shift
extra=("$@")

work=$(mktemp -d "${TMPDIR:-/tmp}/tether-compare.XXXXXX")
redis_pid=""
cleanup() {
  [[ -n $redis_pid ]] && kill "$redis_pid" 2>/dev/null
  for side in a b; do
    if [[ -d $work/$side ]]; then
      # Each worktree has a Bazel output base of its own (GBs): drop it with the worktree.
      (cd "$work/$side" && bazel clean --expunge >/dev/null 2>&1)
      git worktree remove --force "$work/$side" >/dev/null 2>&1
    fi
  done
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

targets=(//bench:bench //bench:fleet //bench:core_bench //registry_service/server:registry_service
         //ws_edge:ws_edge)
declare -A bin commit
for side in a b; do
  rev=$rev_a
  [[ $side == b ]] && rev=$rev_b
  commit[$side]=$(git rev-parse --short "$rev^{commit}") || exit 2
  git worktree add --detach "$work/$side" "$rev" >/dev/null 2>&1 || { echo "cannot check out $rev" >&2; exit 2; }
  echo "=== building $side = $rev (${commit[$side]})" >&2
  (cd "$work/$side" && bazel build --jobs=2 -c opt "${targets[@]}" >"$work/build-$side.log" 2>&1) || {
    tail -20 "$work/build-$side.log" >&2
    exit 2
  }
  bin[$side]="$work/$side/bazel-out/k8-opt/bin"
done

store_flags=()
if [[ $store == redis ]]; then
  start_bench_redis "$work"
fi

# figures.tsv: side <TAB> metric <TAB> number (the first number of the value column).
: >"$work/figures.tsv"
for ((i = 1; i <= runs; i++)); do
  for side in a b; do
    [[ -n $redis_pid ]] && redis-cli -p "$redis_port" flushall >/dev/null
    out="$work/$side-$i.md"
    echo "=== run $i, $side" >&2
    (cd "$work/$side" && "${bin[$side]}/bench/bench" --scenario="$scenario" \
      --bin_dir="${bin[$side]}" --work_dir="$work" --progress=false "${store_flags[@]}" \
      "${extra[@]}" >"$out" 2>"$work/$side-$i.stderr")
    rc=$?
    if [[ $rc -eq 2 ]]; then
      echo "run $i of $side could not run:" >&2
      tail -5 "$work/$side-$i.stderr" >&2
      exit 2
    fi
    awk -F'|' -v side="$side" '
      NF >= 4 && $2 !~ /^ *(metric|---)/ {
        metric = $2; gsub(/^ +| +$/, "", metric)
        value = $3; gsub(/,/, "", value)
        if (match(value, /-?[0-9]+(\.[0-9]+)?/)) print side "\t" metric "\t" substr(value, RSTART, RLENGTH)
      }' "$out" >>"$work/figures.tsv"
  done
done

echo "bench/compare.sh: $scenario, store $store, $runs runs each, interleaved; A = $rev_a (${commit[a]}), B = $rev_b (${commit[b]}); $(nproc) cores"
echo
echo "| figure | median A | median B | B/A |"
echo "| --- | --- | --- | --- |"
python3 - "$work/figures.tsv" <<'PY'
import statistics, sys
figures = {}
order = []
for line in open(sys.argv[1]):
    side, metric, value = line.rstrip("\n").split("\t")
    if metric not in figures:
        figures[metric] = {"a": [], "b": []}
        order.append(metric)
    figures[metric][side].append(float(value))
for metric in order:
    a, b = figures[metric]["a"], figures[metric]["b"]
    if not a or not b:
        continue
    ma, mb = statistics.median(a), statistics.median(b)
    ratio = f"{mb / ma:.3f}" if ma else "-"
    print(f"| {metric} | {ma:g} | {mb:g} | {ratio} |")
PY
