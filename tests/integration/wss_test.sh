#!/usr/bin/env bash
# wss:// served by the edge itself: a TLS client verifying the edge's certificate against a test
# CA (generated here; no keys are committed) completes the WebSocket upgrade, receives
# connect.challenge and gets the documented refusal for bad connect params. A client that does
# not trust the CA is refused at the TLS layer.
set -euo pipefail
edge=ws_edge/ws_edge
registry=registry_service/server/registry_service
tmp="${TEST_TMPDIR:-$(mktemp -d)}/wss"
mkdir -p "$tmp"
pids=()
trap 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done' EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=test-ca -keyout "$tmp/ca.key" -out "$tmp/ca.pem" >/dev/null 2>&1
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$tmp/edge.key" -out "$tmp/edge.csr" >/dev/null 2>&1
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$tmp/ext"
openssl x509 -req -in "$tmp/edge.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
  -days 2 -extfile "$tmp/ext" -out "$tmp/edge.pem" >/dev/null 2>&1
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=other-ca -keyout "$tmp/other.key" -out "$tmp/other.pem" >/dev/null 2>&1

"$registry" --listen=127.0.0.1:0 --port_file="$tmp/reg.port" --dev_mode --recovery_grace_ms=0 >"$tmp/reg.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [[ -s $tmp/reg.port ]] && break; sleep 0.1; done
TETHER_SHARED_TOKEN=t "$edge" --listen=127.0.0.1:0 --port_file="$tmp/edge.port" \
  --registry="127.0.0.1:$(cat "$tmp/reg.port")" --tls_cert_file="$tmp/edge.pem" \
  --tls_key_file="$tmp/edge.key" >"$tmp/edge.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [[ -s $tmp/edge.port ]] && break; sleep 0.1; done
port="$(cat "$tmp/edge.port")"

out="$(python3 "$(dirname "$0")/wss_probe.py" "$port" "$tmp/ca.pem")"
echo "probe: $out"
python3 - "$out" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
assert r["status"].startswith("HTTP/1.1 101"), r
assert r["tls"] in ("TLSv1.2", "TLSv1.3"), r
assert r["challenge_event"] == "connect.challenge" and r["nonce"], r
assert r["error_code"] == "INVALID_REQUEST", r
assert r["close_code"] == 1008, r
PY
if python3 "$(dirname "$0")/wss_probe.py" "$port" "$tmp/other.pem" >/dev/null 2>&1; then
  echo "FAIL: a client that does not trust the edge's CA got through" >&2
  exit 1
fi
echo "PASS: wss:// with a test CA"
