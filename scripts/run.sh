#!/usr/bin/env bash
# Installs what is missing, builds, and runs Tether on loopback: a local redis-server (the
# registry's durable state: pairings, device tokens, ownership, counters, presence history), one
# registry on it and one edge; or, with --edges N, N edges behind nginx as the WebSocket load
# balancer; with --replicas N, N registry replicas on the one Redis (edges spread over them,
# each edge listing every replica to fail over to). --store memory runs the registry without
# Redis (state lost on restart; says so; one replica only).
# Ctrl-C stops everything it started; the Redis data folder stays (printed) for the next run.
#   scripts/run.sh [--edges N] [--replicas N] [--secure] [--store redis|memory]
#   env: TETHER_REGISTRY_PORT (7000; replicas use the ports after it)
#        TETHER_EDGE_PORT (18789: the edge, or the balancer)
#        TETHER_REDIS_PORT (6390)  TETHER_DATA_DIR (~/.local/share/tether: Redis data lives here)
#        TETHER_SHARED_TOKEN (nodes' gateway token; random when unset)
#        TETHER_TOKEN (an admin API token to require; implies --secure)
# By default this is a development setup on loopback: the registry runs with --dev_mode (the
# gRPC API needs no token, edges no secret) and --auto_approve. --secure requires an API token
# (printed) and an edge secret, as a deployment would.
set -euo pipefail
cd "$(dirname "$0")/.."

edges=0
replicas=1
secure=0
store=redis
[[ -n "${TETHER_TOKEN:-}" ]] && secure=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --edges) edges="${2:?--edges needs a number}"; shift 2 ;;
    --edges=*) edges="${1#--edges=}"; shift ;;
    --replicas) replicas="${2:?--replicas needs a number}"; shift 2 ;;
    --replicas=*) replicas="${1#--replicas=}"; shift ;;
    --secure) secure=1; shift ;;
    --store) store="${2:?--store needs redis or memory}"; shift 2 ;;
    --store=*) store="${1#--store=}"; shift ;;
    *) echo "usage: scripts/run.sh [--edges N] [--replicas N] [--secure] [--store redis|memory]" >&2; exit 2 ;;
  esac
done
[[ "$edges" =~ ^[0-9]+$ ]] || { echo "--edges takes a number" >&2; exit 2; }
[[ "$store" == redis || "$store" == memory ]] || { echo "--store is redis or memory" >&2; exit 2; }
[[ "$replicas" =~ ^[1-5]$ ]] || { echo "--replicas takes 1..5" >&2; exit 2; }
if ((replicas > 1)) && [[ "$store" == memory ]]; then
  echo "--replicas needs the Redis store (replicas share their state through it)" >&2
  exit 2
fi

scripts/install_deps.sh run
if ((edges > 0)) && ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
fi

targets=(//registry_service/server:registry_service //ws_edge:ws_edge //tools:tetherctl //tools:tether_node)
bazel build --jobs=2 "${targets[@]}"
bin=bazel-bin  # relative to the repository root

reg_port="${TETHER_REGISTRY_PORT:-7000}"
front_port="${TETHER_EDGE_PORT:-18789}"
token="${TETHER_SHARED_TOKEN:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}"
logs="$(mktemp -d -t tether-run.XXXXXX)"
chmod 700 "$logs"
# Secrets for this run, in files only this user can read (never on a command line).
if ((secure)); then
  api_token="${TETHER_TOKEN:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}"
  echo "${api_token} admin run-sh-operator" >"$logs/api-tokens"
  od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$logs/edge-secret"
  registry_auth=(--api_tokens_file="$logs/api-tokens" --edge_secret_file="$logs/edge-secret")
  edge_auth=(--edge_secret_file="$logs/edge-secret")
  api_line="API token       ${api_token}   (admin scope; in $logs/api-tokens)"
  token_export=" TETHER_TOKEN=${api_token}"
else
  registry_auth=(--dev_mode)
  # Every local node shares 127.0.0.1: no per-address handshake limit in development.
  edge_auth=(--handshake_rate_per_ip=0)
  api_line="API             open (--dev_mode: no token needed; scripts/run.sh --secure to require one)"
  token_export=""
fi

pids=()
stopping=0
cleanup() {
  stopping=1
  trap - INT TERM EXIT
  echo
  echo "stopping..."
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "logs kept in $logs"
}
trap cleanup INT TERM EXIT

wait_for() {  # file pattern
  for _ in $(seq 150); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2
  cat "$1" >&2
  exit 1
}

if [[ "$store" == redis ]]; then
  redis_port="${TETHER_REDIS_PORT:-6390}"
  data="${TETHER_DATA_DIR:-${HOME:-/root}/.local/share/tether}/redis"
  mkdir -p "$data"
  chmod 700 "$data"
  # Loopback only; append-only file fsynced every second (a crash of the machine loses at most
  # the last second of decisions: see registry_service/store/README.md).
  redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$data" --appendonly yes \
    --appendfsync everysec --save "" --maxmemory-policy noeviction --protected-mode yes \
    >"$logs/redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
  done
  redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG || {
    echo "redis-server did not start; see $logs/redis.log" >&2
    cat "$logs/redis.log" >&2
    exit 1
  }
  store_flags=(--store="redis://127.0.0.1:${redis_port}")
  state_line="Redis on 127.0.0.1:${redis_port}, data in $data"
else
  store_flags=(--store=memory)
  state_line="in-memory state: lost when the registry stops (--store memory)"
fi

# Development mode: every new device key is paired automatically (the registry warns loudly).
# Each replica is a full registry on the shared Redis; edges and callers may use any of them.
# Recovery (after a start on an empty table) is per replica: a replica counts the edges that
# resync through it, and edge n attaches first to replica ((n - 1) % replicas) + 1.
edges_of() {  # replica -> how many edges attach to it first (0: it waits its whole grace)
  local total=$(( edges > 0 ? edges : 1 )) n count=0
  for ((n = 1; n <= total; n++)); do (( (n - 1) % replicas + 1 == $1 )) && count=$((count + 1)); done
  echo "$count"
}
registry_addrs=()
for r in $(seq "$replicas"); do
  port=$((reg_port + r - 1))
  log="$logs/registry.log"
  ((r > 1)) && log="$logs/registry-$r.log"
  "$bin/registry_service/server/registry_service" --listen="127.0.0.1:${port}" \
    "${store_flags[@]}" --recovery_edges="$(edges_of "$r")" --auto_approve \
    --metrics_port=0 "${registry_auth[@]}" \
    >"$log" 2>&1 &
  pids+=($!)
  wait_for "$log" "listening"
  registry_addrs+=("127.0.0.1:${port}")
done

# Edge n lists the replicas starting from replica n: edges spread over them, and each fails
# over to the next one.
registry_list() {  # n
  local n="$1" out="" i
  for ((i = 0; i < replicas; i++)); do
    out+="${out:+,}${registry_addrs[$(( (n - 1 + i) % replicas ))]}"
  done
  echo "$out"
}

start_edge() {  # id n port [flags...]
  local id="$1" n="$2" port="$3"
  shift 3
  TETHER_SHARED_TOKEN="$token" "$bin/ws_edge/ws_edge" --listen="127.0.0.1:$port" "$@" \
    --registry="$(registry_list "$n")" --edge_id="$id" --metrics_port=0 \
    "${edge_auth[@]}" >"$logs/$id.log" 2>&1 &
  pids+=($!)
  wait_for "$logs/$id.log" "registry_link_up"
}

if ((edges == 0)); then
  start_edge edge-1 1 "$front_port"
  topology="edge WebSocket  ws://127.0.0.1:${front_port}/  (OpenClaw node protocol)"
else
  edge_ports=()
  for i in $(seq "$edges"); do
    port=$((front_port + i))
    # Behind nginx every socket comes from nginx: per-address limits use X-Forwarded-For.
    start_edge "edge-$i" "$i" "$port" --trust_x_forwarded_for
    edge_ports+=("$port")
  done
  mkdir -p "$logs/nginx"
  deploy/nginx/render.sh --foreground --out "$logs/nginx/nginx.conf" "$front_port" "${edge_ports[@]}"
  # As root nginx would hand its workers to `nobody`; keep them as this user instead.
  if [[ $(id -u) -eq 0 ]]; then sed -i '1i user root;' "$logs/nginx/nginx.conf"; fi
  nginx -p "$logs/nginx" -c "$logs/nginx/nginx.conf" -e stderr >"$logs/nginx.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$front_port") 2>/dev/null && break
    sleep 0.1
  done
  topology="balancer        ws://127.0.0.1:${front_port}/  (nginx over ${edges} edges: ports ${edge_ports[*]})"
fi

metrics="$(grep -ho 'http://[0-9.:]*/metrics' "$logs"/*.log | tr '\n' ' ')"
cat <<INFO

Tether is running (${state_line}; logs in $logs):
  registry gRPC   ${registry_addrs[*]}    (tether.v1.Registry, ${replicas} replica(s); health and reflection enabled)
  ${topology}
  node token      ${token}   (nodes' shared gateway token)
  ${api_line}
  metrics         ${metrics}

Try it from another terminal, in this directory:
  export TETHER_SHARED_TOKEN=${token} TETHER_REGISTRY=127.0.0.1:${reg_port}${token_export}
  $bin/tools/tether_node --edge=127.0.0.1:${front_port} &      # a demo node
  $bin/tools/tetherctl nodes
  $bin/tools/tetherctl invoke <NODE_ID> system.which '{"bins":["sh"]}'
  $bin/tools/tetherctl watch
An OpenClaw node host connects with:
  OPENCLAW_GATEWAY_TOKEN=${token} openclaw node run --host 127.0.0.1 --port ${front_port}

Ctrl-C stops everything.
INFO
wait -n "${pids[@]}" || true
((stopping)) || echo "a Tether process exited; see $logs" >&2
