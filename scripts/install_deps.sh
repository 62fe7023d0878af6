#!/usr/bin/env bash
# Installs the Debian packages Tether needs, only those missing. Run as root (or with sudo).
# Usage: scripts/install_deps.sh [run|test|bench]   (test adds what the test suite needs;
#        bench adds that and perf, for bench/profile.sh)
set -euo pipefail

need=(g++ make pkg-config openssl libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev
      protobuf-compiler libabsl-dev libwebsocketpp-dev libboost-dev libasio-dev libssl-dev
      nlohmann-json3-dev libhiredis-dev redis-server bazel-bootstrap libgtest-dev libgmock-dev)
if [[ "${1:-run}" == "test" || "${1:-run}" == "bench" ]]; then
  need+=(nginx-light clang-14 libclang-rt-14-dev clang-format python3-yaml gdb)
  command -v npm >/dev/null 2>&1 || need+=(npm)
fi
[[ "${1:-run}" == "bench" ]] && need+=(linux-perf)

missing=()
for p in "${need[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi
