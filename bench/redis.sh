# Sourced by the bench scripts: start_bench_redis DIR starts a redis-server on a free loopback
# port with no persistence (the figures are the registry's, not the disk's), data in DIR, and
# waits until it answers. Sets redis_pid, redis_port and store_flags (the bench's
# --registry_flags for a registry on it). The caller kills $redis_pid when done.
start_bench_redis() {
  local dir=$1
  redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$dir" --save "" --appendonly no \
    >"$dir/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 50); do
    redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
  done
  store_flags=(--registry_flags="--dev_mode --store=redis://127.0.0.1:$redis_port")
}
