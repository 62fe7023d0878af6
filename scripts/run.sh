#!/usr/bin/env bash
# Installs what is missing, builds, and runs Tether on loopback: one registry (in-memory state)
# and one edge. Ctrl-C stops everything it started.
#   TETHER_REGISTRY_PORT (7000)  TETHER_EDGE_PORT (18789)  TETHER_SHARED_TOKEN (random)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh run

targets=(//registry_service/server:registry_service //ws_edge:ws_edge //tools:tetherctl //tools:tether_node)
bazel build --jobs=2 "${targets[@]}"
bin=bazel-bin  # relative to the repository root

reg_port="${TETHER_REGISTRY_PORT:-7000}"
edge_port="${TETHER_EDGE_PORT:-18789}"
token="${TETHER_SHARED_TOKEN:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}"
logs="$(mktemp -d -t tether-run.XXXXXX)"

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "stopping..."
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "logs kept in $logs"
}
trap cleanup INT TERM EXIT

# Development mode: every new device key is paired automatically (the registry warns loudly).
"$bin/registry_service/server/registry_service" --listen="127.0.0.1:${reg_port}" \
  --auto_approve >"$logs/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "listening" "$logs/registry.log" 2>/dev/null && break; sleep 0.1; done

TETHER_SHARED_TOKEN="$token" "$bin/ws_edge/ws_edge" --listen="127.0.0.1:${edge_port}" \
  --registry="127.0.0.1:${reg_port}" --edge_id=edge-1 >"$logs/edge-1.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "link up" "$logs/edge-1.log" 2>/dev/null && break; sleep 0.1; done

cat <<INFO

Tether is running (in-memory state; logs in $logs):
  registry gRPC   127.0.0.1:${reg_port}    (tether.v1.Registry; health and reflection enabled)
  edge WebSocket  ws://127.0.0.1:${edge_port}/  (OpenClaw node protocol)
  shared token    ${token}

Try it from another terminal:
  export TETHER_SHARED_TOKEN=${token} TETHER_REGISTRY=127.0.0.1:${reg_port}
  $bin/tools/tether_node --edge=127.0.0.1:${edge_port} &      # a demo node
  $bin/tools/tetherctl nodes
  $bin/tools/tetherctl invoke <NODE_ID> system.which '{"bins":["sh"]}'
  $bin/tools/tetherctl watch
An OpenClaw node host connects with:
  OPENCLAW_GATEWAY_TOKEN=${token} openclaw node run --host 127.0.0.1 --port ${edge_port}

Ctrl-C stops everything.
INFO
wait -n "${pids[@]}" || true
echo "a Tether process exited; see $logs" >&2
