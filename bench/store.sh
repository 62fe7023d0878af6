#!/usr/bin/env bash
# bench/store.sh [--nodes N]: registrations, closes and invokes per second through the Registry
# with the memory store and with Redis (one replica, then two replicas deciding at once on one
# Redis), beside redis-benchmark's figures for the same machine as the ceiling. Starts its own
# redis-server on loopback (no persistence: the figure is Redis's, not the disk's). Prints a
# Markdown section; append it to bench/RESULTS.md by hand with what it means.
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=20000
[[ "${1:-}" == "--nodes" ]] && nodes="${2:?}"

bazel build --jobs=2 -c opt //bench:store_bench >/dev/null 2>&1 || bazel build --jobs=2 -c opt //bench:store_bench
bin=bazel-out/k8-opt/bin/bench/store_bench
work=$(mktemp -d "${TMPDIR:-/tmp}/tether-store-bench.XXXXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$port" --dir "$work" --save "" --appendonly no \
  >"$work/redis.log" 2>&1 &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done

rate() {  # file label -> the figure
  awk -v l="$2" 'index($0, l) == 1 {print $NF}' "$1"
}
row() {  # label file...
  local label="$1"
  shift
  printf '| %s |' "$label"
  for f in "$@"; do printf ' %s |' "$(rate "$f" "$label")"; done
  echo
}
cpu() { redis-cli -p "$port" info cpu | awk -F: '/^used_cpu_(user|sys):/ {t += $2} END {printf "%.1f", t}'; }

"$bin" --store=memory --nodes="$nodes" >"$work/memory.txt" 2>&1
"$bin" --store="redis://127.0.0.1:$port" --nodes="$nodes" >"$work/redis1.txt" 2>&1
cpu1=$(cpu)
redis-cli -p "$port" flushall >/dev/null
# Two replicas: two registry processes deciding at once on one Redis (each its own fleet, in a
# database of its own, so that they do not race for the same node ids): the Redis ceiling.
"$bin" --store="redis://127.0.0.1:$port/1" --nodes="$nodes" >"$work/redis2a.txt" 2>&1 &
a=$!
"$bin" --store="redis://127.0.0.1:$port/2" --nodes="$nodes" >"$work/redis2b.txt" 2>&1 &
b=$!
wait $a $b
cpu2=$(cpu)
bench_set=$(redis-benchmark -p "$port" -q -n 200000 -c 16 -t set 2>/dev/null | tr '\r' '\n' | grep -o 'SET: [0-9.]*' | tail -1)
bench_evalsha=$(redis-benchmark -p "$port" -q -n 200000 -c 16 eval "return redis.call('INCR', 'x')" 0 2>/dev/null | tr '\r' '\n' | grep -o ': [0-9.]* requests' | tail -1 | tr -dc '0-9.')

echo "store_bench, $nodes nodes per phase, 16 caller threads per process, $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1)); commit $(git rev-parse --short HEAD)"
echo "Command: \`bench/store.sh --nodes $nodes\`"
echo
echo "| per second | memory | Redis, 1 replica | Redis, 2 replicas: replica A | replica B |"
echo "| --- | --- | --- | --- | --- |"
for l in "registrations (new node)/s" "registrations (supersede)/s" "stale closes/s" \
         "invokes (start + result)/s" "owner closes (disconnect)/s"; do
  row "$l" "$work/memory.txt" "$work/redis1.txt" "$work/redis2a.txt" "$work/redis2b.txt"
done
echo
echo "redis-server CPU seconds: $cpu1 after the one-replica run, $cpu2 after both."
echo "redis-benchmark on the same server (16 clients): ${bench_set:-SET: ?} requests/s; a one-INCR Lua script (EVAL): ${bench_evalsha:-?} requests/s."
grep -h "failed checks" "$work"/*.txt | sed 's/^/checks: /'
