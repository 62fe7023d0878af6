#!/usr/bin/env bash
# The REAL OpenClaw node host over wss:// served by the edge itself: a test CA is generated
# here (no keys committed), the edge serves its certificate, and the node host trusts the CA
# through NODE_EXTRA_CA_CERTS and connects with `--tls`. Checks that it registers and answers an
# invoke made through the registry. Exit 0 pass, 1 fail, 77 skipped (npm unreachable).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${root}" || exit 1
tmp="$(mktemp -d "${TMPDIR:-/tmp}/tether-openclaw-wss.XXXXXX")" || exit 1
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  [[ ${1:-0} -eq 0 && -z ${TETHER_INTEROP_KEEP:-} ]] && rm -rf "$tmp"
}
fail() { echo "openclaw_wss: FAIL: $*"; for f in "$tmp"/*.log; do echo "--- $f"; tail -20 "$f"; done; cleanup 1; exit 1; }

install_out="$(tests/interop/install_openclaw.sh)"
rc=$?
[[ $rc -eq 77 ]] && { echo "openclaw_wss: SKIPPED: npm registry unreachable"; exit 77; }
[[ $rc -ne 0 ]] && fail "install_openclaw.sh exited $rc"
NODE="$(sed -n 's/^NODE=//p' <<<"$install_out")"
OPENCLAW="$(sed -n 's/^OPENCLAW=//p' <<<"$install_out")"

bazel build --jobs=2 //registry_service/server:registry_service //ws_edge:ws_edge //tools:tetherctl \
  >"$tmp/build.log" 2>&1 || fail "bazel build"
mkdir -p "$tmp/bin"
cp bazel-bin/registry_service/server/registry_service bazel-bin/ws_edge/ws_edge \
  bazel-bin/tools/tetherctl "$tmp/bin/" || fail "copy binaries"

( cd "$tmp" &&
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=test-ca \
    -keyout ca.key -out ca.pem &&
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout edge.key -out edge.csr &&
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >ext &&
  openssl x509 -req -in edge.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext \
    -out edge.pem ) >"$tmp/pki.log" 2>&1 || fail "test CA"

token="wss-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
api="api-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
echo "$api admin" >"$tmp/tokens"
od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$tmp/edge-secret"
setsid "$tmp/bin/registry_service" --listen=127.0.0.1:0 --port_file="$tmp/reg.port" --auto_approve \
  --recovery_grace_ms=0 --api_tokens_file="$tmp/tokens" --edge_secret_file="$tmp/edge-secret" >"$tmp/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [[ -s $tmp/reg.port ]] && break; sleep 0.1; done
[[ -s $tmp/reg.port ]] || fail "registry did not start"
TETHER_SHARED_TOKEN="$token" setsid "$tmp/bin/ws_edge" --listen=127.0.0.1:0 --port_file="$tmp/edge.port" \
  --registry="127.0.0.1:$(cat "$tmp/reg.port")" --edge_secret_file="$tmp/edge-secret" \
  --tls_cert_file="$tmp/edge.pem" --tls_key_file="$tmp/edge.key" >"$tmp/edge.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [[ -s $tmp/edge.port ]] && break; sleep 0.1; done
[[ -s $tmp/edge.port ]] || fail "edge did not start"

mkdir -p "$tmp/oc"
( cd "$tmp" && NODE_EXTRA_CA_CERTS="$tmp/ca.pem" OPENCLAW_GATEWAY_TOKEN="$token" \
  OPENCLAW_STATE_DIR="$tmp/oc" OPENCLAW_HOME="$tmp/oc" OPENCLAW_CONFIG_PATH="$tmp/oc/config.json" \
  OPENCLAW_DISABLE_BONJOUR=1 OPENCLAW_NO_AUTO_UPDATE=1 \
  exec setsid "$NODE" "$OPENCLAW/openclaw.mjs" node run --host 127.0.0.1 --port "$(cat "$tmp/edge.port")" --tls \
  ) >"$tmp/node-host.log" 2>&1 &
pids+=($!)

ctl() { timeout 30 "$tmp/bin/tetherctl" --registry="127.0.0.1:$(cat "$tmp/reg.port")" "$@"; }
export TETHER_TOKEN="$api"
node_id=""
for _ in $(seq 60); do
  node_id="$(ctl --json --connected nodes 2>/dev/null | sed -n 's/.*"node_id":"\([0-9a-f]*\)".*/\1/p' | head -1)"
  [[ -n $node_id ]] && break
  sleep 1
done
[[ -n $node_id ]] || fail "the node host did not register over wss within 60 s"
# What matters is that the socket the node registered over was TLS. The edge's port serves
# wss:// only: it completes a TLS handshake verified against the test CA and answers a plain
# ws:// upgrade with no 101. (The node host's own log line about its wss:// URL is written
# asynchronously and may trail the registration: not a reliable witness.)
openssl s_client -connect "127.0.0.1:$(cat "$tmp/edge.port")" -servername localhost \
  -CAfile "$tmp/ca.pem" -verify_return_error </dev/null >"$tmp/s_client.log" 2>&1 ||
  fail "the edge's port did not complete a verified TLS handshake"
plain="$(timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/$1; printf "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" >&3; head -c 12 <&3' _ "$(cat "$tmp/edge.port")" 2>/dev/null)"
[[ $plain == *" 101"* ]] && fail "the edge's port answered a plain ws:// upgrade"
echo "openclaw_wss: PASS: node host connected over wss:// ($node_id); the port is TLS-only"
out="$(ctl invoke "$node_id" system.which '{"bins":["sh"]}')" || fail "invoke over wss failed: $out"
[[ $out == *'"sh":"/'* ]] || fail "unexpected system.which answer: $out"
echo "openclaw_wss: PASS: system.which over wss:// -> $out"
cleanup 0
exit 0
