#!/usr/bin/env bash
# shellcheck disable=SC2317  # functions called from traps and wait_for
# Interop test with the REAL OpenClaw headless node host (`openclaw node run`, from the npm
# package), against a real registry and edge on loopback:
#   (a) the node host connects through the edge and the registry lists it as connected, with
#       the commands the node host advertised;
#   (b) system.which invoked through the registry's gRPC InvokeNode returns the node host's
#       real answer (the path of sh);
#   (c) after the edge is restarted (SIGTERM, new process on the same port) the node host
#       reconnects by itself and invokes work again;
#   (d) after the edge is SIGKILLed and the node host reconnects through another edge on the
#       same port, the lapse of the dead edge's lease (edge_lost) does not unregister the new
#       session: the node stays connected past the lapse and invokes still work;
#   (e) the registry keeps its state in a real redis-server: after `kill -9` of the registry and
#       a restart on the same Redis (without --auto_approve), the node host restarted with its
#       device token alone (no OPENCLAW_GATEWAY_TOKEN) is accepted and answers invokes.
# Prints one PASS/FAIL line per check. Exit 0 all passed, 1 a failure, 77 skipped (the npm
# registry cannot be reached to install OpenClaw). Logs are kept on failure.
#
#   tests/interop/openclaw_node_test.sh
# Environment: TETHER_INTEROP_BIN_DIR=<dir with registry_service, ws_edge, registry_probe>
# skips the Bazel build; TETHER_INTEROP_KEEP=1 keeps the temp folder; TETHER_INTEROP_BUDGET_S
# (default 100) bounds the run after install and build. The install goes to a cache outside the
# repo (tests/interop/install_openclaw.sh).
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${root}" || exit 1

TOKEN="interop-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
LEASE_TTL_MS=4000    # the registry's edge lease; (d) waits for it to lapse
TOTAL_BUDGET_S="${TETHER_INTEROP_BUDGET_S:-150}"  # seconds for the run after install and build

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tether-openclaw-interop.XXXXXX")"
pids=()         # process-group leaders we started (each under setsid)
failures=()
passes=0
watchdog=""

say() { echo "openclaw_interop: $*"; }
pass() { say "PASS: $*"; passes=$((passes + 1)); }
fail() { say "FAIL: $*"; failures+=("$1"); }

alive() { ps -o stat= -p "$1" 2>/dev/null | grep -qv Z; }  # not gone, not a zombie

stop_group() {  # stop_group PID SIGNAL: signal the process group we started as PID
  local pid="$1" sig="${2:-TERM}"
  kill "-${sig}" -- "-${pid}" 2>/dev/null || kill "-${sig}" "${pid}" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n "${watchdog}" ]] && stop_group "${watchdog}" KILL
  for pid in "${pids[@]}"; do stop_group "${pid}" TERM; done
  local waited=0
  for pid in "${pids[@]}"; do
    while alive "${pid}" && ((waited < 30)); do sleep 0.1; waited=$((waited + 1)); done
    stop_group "${pid}" KILL
  done
  wait 2>/dev/null
  if [[ ${rc} -ne 0 && ${rc} -ne 77 ]] || [[ "${TETHER_INTEROP_KEEP:-0}" == 1 ]]; then
    for f in "${tmp}"/*.log; do
      [[ -f "${f}" ]] || continue
      echo "----- last lines of ${f}"
      tail -n 25 "${f}" | sed 's/\x1b\[[0-9;]*m//g'
    done
    say "logs kept in ${tmp}"
  else
    rm -rf "${tmp}"
  fi
  exit "${rc}"
}
trap cleanup EXIT
trap 'say "FAIL: interrupted or over the ${TOTAL_BUDGET_S}s budget"; exit 1' INT TERM

# Starts a command in its own process group, output to LOG; sets $started to its pid.
start() {
  local log="$1"
  shift
  setsid "$@" >"${log}" 2>&1 </dev/null &
  started=$!
  pids+=("${started}")
}

wait_for() {  # wait_for SECONDS CMD...: poll CMD every 0.2 s until it succeeds
  local limit=$(($1 * 5))
  shift
  local i
  for ((i = 0; i < limit; i++)); do
    "$@" && return 0
    sleep 0.2
  done
  return 1
}

now_ms() { date +%s%3N; }

# --- Install OpenClaw and Node 24 (outside the repo) -------------------------------------------
install_out="$("${root}/tests/interop/install_openclaw.sh")"
install_rc=$?
if [[ ${install_rc} -eq 77 ]]; then
  say "=============================================================="
  say "SKIPPED: OpenClaw could not be installed (npm registry unreachable)"
  say "=============================================================="
  exit 77
elif [[ ${install_rc} -ne 0 ]]; then
  fail install "tests/interop/install_openclaw.sh exited ${install_rc}"
  exit 1
fi
NODE="$(sed -n 's/^NODE=//p' <<<"${install_out}")"
OPENCLAW="$(sed -n 's/^OPENCLAW=//p' <<<"${install_out}")"
node_version="$("${NODE}" --version)"
openclaw_version="$("${NODE}" -p "require('${OPENCLAW}/package.json').version")"
say "node ${node_version}, openclaw ${openclaw_version}"

# JSON checks run in the Node we just installed: js JSON EXPR [ARGS...] (EXPR sees the value as
# j, and ARGS as process.argv[3...]).
js() {
  "${NODE}" -e 'const j = JSON.parse(process.argv[1]); const v = eval(process.argv[2]);
                process.stdout.write(typeof v === "string" ? v : JSON.stringify(v));' "$@"
}

# --- Binaries: built by Bazel, copied so that another build cannot swap them under us ----------
mkdir -p "${tmp}/bin"
if [[ -n "${TETHER_INTEROP_BIN_DIR:-}" ]]; then
  bin_src="${TETHER_INTEROP_BIN_DIR}"
else
  targets=(//registry_service/server:registry_service //ws_edge:ws_edge //tests/interop:registry_probe)
  if ! bazel build --jobs=2 "${targets[@]}" >"${tmp}/build.log" 2>&1; then
    fail build "bazel build failed (see ${tmp}/build.log)"
    exit 1
  fi
  bin_src="$(bazel info bazel-bin 2>/dev/null)"
fi
cp "${bin_src}/registry_service/server/registry_service" "${bin_src}/ws_edge/ws_edge" \
  "${bin_src}/tests/interop/registry_probe" "${tmp}/bin/" 2>/dev/null ||
  cp "${bin_src}/registry_service" "${bin_src}/ws_edge" "${bin_src}/registry_probe" "${tmp}/bin/" ||
  { fail build "binaries not found in ${bin_src}"; exit 1; }

# From here on the run is bounded as a whole.
setsid bash -c "sleep ${TOTAL_BUDGET_S}; kill -TERM $$" >/dev/null 2>&1 </dev/null &
watchdog=$!
disown "${watchdog}"

# --- Registry and first edge -------------------------------------------------------------------
# The public API wants a bearer token and edges a shared secret, where the binaries know those
# flags (they are looked up, so the test also runs against builds from before them).
registry_auth=()
edge_auth=()
export TETHER_API_TOKEN=""
registry_help="$("${tmp}/bin/registry_service" --helpfull 2>&1)"
edge_help="$("${tmp}/bin/ws_edge" --helpfull 2>&1)"
if [[ "${registry_help}" == *--api_tokens_file* ]]; then
  TETHER_API_TOKEN="api-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
  echo "${TETHER_API_TOKEN} read,write openclaw-interop" >"${tmp}/api_tokens"
  registry_auth+=(--api_tokens_file="${tmp}/api_tokens")
fi
if [[ "${registry_help}" == *--edge_secret_file* && "${edge_help}" == *--edge_secret_file* ]]; then
  od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"${tmp}/edge_secret"
  registry_auth+=(--edge_secret_file="${tmp}/edge_secret")
  edge_auth+=(--edge_secret_file="${tmp}/edge_secret")
fi
# The registry's state lives in a real redis-server, as in production.
redis_port="$("${NODE}" -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => {
  console.log(s.address().port); s.close(); });')"
mkdir -p "${tmp}/redis"
start "${tmp}/redis.log" redis-server --bind 127.0.0.1 --port "${redis_port}" --dir "${tmp}/redis" \
  --appendonly yes --appendfsync everysec --save ""
if ! wait_for 20 bash -c "redis-cli -p ${redis_port} ping 2>/dev/null | grep -q PONG"; then
  fail setup "redis-server did not start"
  exit 1
fi
registry_store=(--store="redis://127.0.0.1:${redis_port}")
start "${tmp}/registry.log" "${tmp}/bin/registry_service" --listen=127.0.0.1:0 \
  --port_file="${tmp}/registry.port" --auto_approve --lease_ttl_ms="${LEASE_TTL_MS}" --tick_ms=20 \
  --recovery_grace_ms=0 "${registry_store[@]}" "${registry_auth[@]}"
registry_pid=${started}
if ! wait_for 20 test -s "${tmp}/registry.port"; then
  fail setup "the registry did not start"
  exit 1
fi
registry_port="$(cat "${tmp}/registry.port")"
probe() { timeout 30 "${tmp}/bin/registry_probe" --registry="127.0.0.1:${registry_port}" "$@"; }

edge_n=0
# start_edge EDGE_ID PORT: starts an edge, waits until it listens and its registry link is up.
start_edge() {
  edge_n=$((edge_n + 1))
  edge_log="${tmp}/edge${edge_n}-$1.log"
  rm -f "${tmp}/edge.port"
  start "${edge_log}" env TETHER_SHARED_TOKEN="${TOKEN}" "${tmp}/bin/ws_edge" \
    --listen="127.0.0.1:$2" --registry="127.0.0.1:${registry_port}" --edge_id="$1" \
    --port_file="${tmp}/edge.port" "${edge_auth[@]}"
  edge_pid=${started}
  wait_for 20 test -s "${tmp}/edge.port" &&
    wait_for 20 grep -qE "link[ _]up" "${edge_log}" &&
    edge_port="$(cat "${tmp}/edge.port")"
}
if ! start_edge edgeA 0; then
  fail setup "the edge did not start"
  exit 1
fi
say "registry on 127.0.0.1:${registry_port}, edge edgeA on 127.0.0.1:${edge_port}"

# --- The real node host ------------------------------------------------------------------------
mkdir -p "${tmp}/openclaw/home" "${tmp}/openclaw/state"
node_log="${tmp}/openclaw-node.log"
start "${node_log}" env -C "${tmp}/openclaw" \
  OPENCLAW_GATEWAY_TOKEN="${TOKEN}" \
  OPENCLAW_STATE_DIR="${tmp}/openclaw/state" \
  OPENCLAW_HOME="${tmp}/openclaw/home" \
  OPENCLAW_CONFIG_PATH="${tmp}/openclaw/openclaw.json" \
  OPENCLAW_DISABLE_BONJOUR=1 OPENCLAW_NO_AUTO_UPDATE=1 NO_COLOR=1 \
  "${NODE}" "${OPENCLAW}/openclaw.mjs" node run --host 127.0.0.1 --port "${edge_port}"

# node_json: the registry's view of the node (GetNode), or of the first node-host (ListNodes).
node_id=""
node_json() {
  if [[ -n "${node_id}" ]]; then
    probe get "${node_id}" 2>/dev/null
  else
    local list
    list="$(probe list 2>/dev/null)" || return 1
    js "${list}" '(j.nodes || []).find(n => n.clientId === "node-host") || ""'
  fi
}
# connected_via EDGE [NOT_CONN]: the node is connected through EDGE (and not on conn NOT_CONN).
connected_via() {
  local n
  n="$(node_json)" || return 1
  [[ -n "${n}" ]] || return 1
  [[ "$(js "${n}" 'j.connected && j.edgeId === process.argv[3] && j.connId !== process.argv[4]
                   ? "yes" : "no"' "$1" "${2:-}")" == yes ]]
}
# The commands the node host says it advertises: "advertised commands: a, b, c".
advertised() {
  sed 's/\x1b\[[0-9;]*m//g' "${node_log}" | sed -n 's/.*advertised commands: //p' | head -n 1 |
    tr -d ' ' | tr ',' '\n' | sort
}

# invoke_which LABEL: system.which for sh through the registry; checks the node host's answer.
invoke_which() {
  local out payload sh_path
  if ! out="$(probe invoke "${node_id}" system.which '{"bins":["sh"]}' 10000 2>"${tmp}/invoke.err")"; then
    fail "$1" "InvokeNode system.which failed: $(cat "${tmp}/invoke.err")"
    return 1
  fi
  payload="$(js "${out}" 'j.payloadJson')"
  sh_path="$(js "${payload}" '(j.bins && j.bins.sh) || ""' 2>/dev/null)"
  if [[ "${sh_path}" != /* || ! -x "${sh_path}" || ! "${sh_path}" -ef "$(command -v sh)" ]]; then
    fail "$1" "unexpected system.which payload: ${payload}"
    return 1
  fi
  local want_conn
  want_conn="$(js "$(node_json)" 'j.connId')"
  if [[ "$(js "${out}" 'j.connId')" != "${want_conn}" ]]; then
    fail "$1" "answered on conn $(js "${out}" 'j.connId'), the node's owner is ${want_conn}"
    return 1
  fi
  pass "$1: InvokeNode system.which {\"bins\":[\"sh\"]} -> ${payload} (conn ${want_conn})"
}

# --- (a) connected, with its declared commands -------------------------------------------------
t0=$(now_ms)
if wait_for 60 connected_via edgeA; then
  n="$(node_json)"
  node_id="$(js "${n}" 'j.nodeId')"
  first_conn="$(js "${n}" 'j.connId')"
  registry_cmds="$(js "${n}" 'j.commands.join("\n")' | sort)"
  host_cmds="$(advertised)"
  # The node id must be the SHA-256 of the raw public key (section 4 of the protocol doc).
  key_id="$(js "${n}" 'require("crypto").createHash("sha256")
                       .update(Buffer.from(j.publicKey, "base64url")).digest("hex")')"
  if [[ -z "${host_cmds}" ]]; then
    fail a "the node host did not log its advertised commands"
  elif [[ "${registry_cmds}" != "${host_cmds}" ]]; then
    fail a "commands differ: registry [$(tr '\n' ' ' <<<"${registry_cmds}")] vs node host" \
      "[$(tr '\n' ' ' <<<"${host_cmds}")]"
  elif ! grep -qx system.which <<<"${registry_cmds}"; then
    fail a "system.which is not among the declared commands"
  elif [[ "${key_id}" != "${node_id}" ]]; then
    fail a "node id ${node_id} is not the SHA-256 of its public key (${key_id})"
  elif [[ "$(js "${n}" 'j.clientId + "/" + j.platform + "/" + j.version')" != \
          "node-host/linux/${openclaw_version}" ]]; then
    fail a "unexpected client info: $(js "${n}" 'j.clientId + "/" + j.platform + "/" + j.version')"
  else
    pass "a: node ${node_id:0:16}… connected via edgeA after $(( $(now_ms) - t0 )) ms," \
      "$(wc -l <<<"${registry_cmds}") commands as advertised"
  fi
else
  fail a "the node host did not show up connected within 60 s"
  exit 1
fi

# --- (b) invoke through the registry -----------------------------------------------------------
invoke_which b

# --- (c) edge restart (SIGTERM, same port): the node host reconnects by itself -----------------
port="${edge_port}"
kill -TERM "${edge_pid}"
edge_gone() { ! alive "${edge_pid}"; }
if ! wait_for 15 edge_gone; then
  fail c "the edge did not exit within 15 s of SIGTERM"
fi
t0=$(now_ms)
if ! start_edge edgeA "${port}"; then
  fail c "the restarted edge did not come up on port ${port}"
elif ! wait_for 30 connected_via edgeA "${first_conn}"; then
  fail c "the node host did not reconnect within 30 s of the edge restart"
elif ! grep -q 'closed (1012): service restart' "${node_log}"; then
  # A draining edge must say "service restart" (1012), as the Gateway does on shutdown.
  fail c "the node host did not log a 1012 \"service restart\" close from the draining edge:" \
    "$(grep -o 'closed ([0-9]*).*' "${node_log}" | tr '\n' ';')"
else
  second_conn="$(js "$(node_json)" 'j.connId')"
  pass "c: the node host got 1012 \"service restart\" and reconnected by itself" \
    "$(( $(now_ms) - t0 )) ms after the new edge started (conn ${first_conn} -> ${second_conn})"
  invoke_which "c (invoke after reconnect)"
fi

# --- (d) SIGKILL; reconnect through another edge; the dead edge's lease lapses ----------------
revision="$(probe revision)"
watch_log="${tmp}/presence.jsonl"
start "${watch_log}" "${tmp}/bin/registry_probe" --registry="127.0.0.1:${registry_port}" \
  watch "${revision}" 30
conn_before="$(js "$(node_json)" 'j.connId')"
kill -KILL "${edge_pid}"
killed_ms=$(now_ms)
wait "${edge_pid}" 2>/dev/null  # reaps it quietly (no "Killed" job notice)
if ! start_edge edgeB "${port}"; then
  fail d "the second edge did not come up on port ${port}"
elif ! wait_for 30 connected_via edgeB; then
  fail d "the node host did not reconnect through edgeB within 30 s"
else
  reconnect_ms=$(( $(now_ms) - killed_ms ))
  new_conn="$(js "$(node_json)" 'j.connId')"
  # Hold until the dead edge's lease has certainly lapsed (TTL after its last heartbeat) plus
  # 3 s, checking all along that the node stays connected on the new connection.
  hold_until=$((killed_ms + LEASE_TTL_MS + 3000))
  dropped=""
  while (( $(now_ms) < hold_until )); do
    n="$(node_json)" || n=""
    if [[ -z "${n}" ]]; then
      dropped="(GetNode failed)"
      break
    fi
    if [[ "$(js "${n}" 'j.connected ? j.connId : "-"')" != "${new_conn}" ]]; then
      dropped="${n}"
      break
    fi
    sleep 0.2
  done
  sleep 0.3  # let the watch catch up
  events="$(grep -F "\"${node_id}\"" "${watch_log}" || true)"
  summary="$(while IFS= read -r e; do
      [[ -n "${e}" ]] && js "${e}" 'j.kind + (j.reason ? "(" + j.reason + ")" : "") + "@" + j.edgeId'
      echo -n " "
    done <<<"${events}")"
  first_kind="$(head -n 1 <<<"${events}" | { read -r e; [[ -n "${e}" ]] && js "${e}" 'j.kind'; })"
  if [[ -n "${dropped}" ]]; then
    fail d "the node lost its new connection ${new_conn} after the old edge's lease lapsed:" \
      "${dropped}; presence: ${summary}"
  elif grep -q '"DISCONNECTED"' <<<"${events}" && [[ "${first_kind}" != DISCONNECTED ]]; then
    fail d "a DISCONNECTED event followed the reconnect: ${summary}"
  elif [[ "${first_kind}" != REPLACED ]]; then
    # The reconnect must beat the lapse, or this check proves nothing.
    fail d "inconclusive: the node reconnected ${reconnect_ms} ms after the SIGKILL, after the" \
      "${LEASE_TTL_MS} ms lease lapsed (presence: ${summary})"
  else
    pass "d: reconnected through edgeB ${reconnect_ms} ms after SIGKILL (${conn_before} ->" \
      "${new_conn}) and still connected $(( $(now_ms) - killed_ms )) ms after it, past the" \
      "${LEASE_TTL_MS} ms lease; presence: ${summary}"
    invoke_which "d (invoke after the lease lapsed)"
  fi
fi

# --- (e) registry kill -9 and restart on the same Redis; the node host returns with its device
# token alone --------------------------------------------------------------------------------
node_env=(OPENCLAW_STATE_DIR="${tmp}/openclaw/state" OPENCLAW_HOME="${tmp}/openclaw/home"
  OPENCLAW_CONFIG_PATH="${tmp}/openclaw/openclaw.json" OPENCLAW_DISABLE_BONJOUR=1
  OPENCLAW_NO_AUTO_UPDATE=1 NO_COLOR=1)
conn_before="$(js "$(node_json)" 'j.connId')"
# The node host leaves; it keeps the device token of its last hello-ok in its state folder.
for pid in "${pids[@]}"; do
  if ps -o args= -p "${pid}" 2>/dev/null | grep -q "openclaw.mjs node run"; then
    stop_group "${pid}" TERM
    wait_for 10 bash -c "! kill -0 ${pid} 2>/dev/null"
  fi
done
kill -KILL "${registry_pid}"
wait "${registry_pid}" 2>/dev/null
# No --auto_approve from here on: only the pairing kept in Redis can let the node in.
start "${tmp}/registry2.log" "${tmp}/bin/registry_service" --listen="127.0.0.1:${registry_port}" \
  --lease_ttl_ms="${LEASE_TTL_MS}" --tick_ms=20 "${registry_store[@]}" "${registry_auth[@]}"
registry_pid=${started}
node_log="${tmp}/openclaw-node-device-token.log"
start "${node_log}" env -C "${tmp}/openclaw" "${node_env[@]}" \
  "${NODE}" "${OPENCLAW}/openclaw.mjs" node run --host 127.0.0.1 --port "${edge_port}"
current_edge=edgeB  # where (d) left it
if ! wait_for 45 connected_via "${current_edge}" "${conn_before}"; then
  fail e "after the registry restart the node host did not come back with its device token" \
    "alone: $(sed 's/\x1b\[[0-9;]*m//g' "${node_log}" | grep -iE 'token|pair|closed' | tail -n 3)"
elif grep -q "AUTH_DEVICE_TOKEN_MISMATCH" "${node_log}"; then
  fail e "the node host was refused with AUTH_DEVICE_TOKEN_MISMATCH before it got in"
else
  pass "e: registry kill -9 + restart on the same Redis; the node host reconnected with its" \
    "device token alone (no shared token, no auto-approve) as $(js "$(node_json)" 'j.connId')"
  invoke_which "e (invoke after the registry restart)"
fi

# --- What the edge and the node host logged that looks wrong ---------------------------------
if grep -qiE 'error|unhandled|exception' "${node_log}"; then
  say "note: the node host logged errors:"
  sed 's/\x1b\[[0-9;]*m//g' "${node_log}" | grep -iE 'error|unhandled|exception' | head -n 10
fi

if ((${#failures[@]})); then
  say "FAILED checks: ${failures[*]} (${passes} passed)"
  exit 1
fi
say "all ${passes} checks passed (node ${node_version}, openclaw ${openclaw_version})"
exit 0
