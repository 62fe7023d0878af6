#!/usr/bin/env bash
# Validates deploy/ without Docker or Kubernetes: parses every YAML file, checks the images,
# ports, flags and TETHER_* variables against the real binaries (check_deploy.py), then boots
# each configuration on loopback behind nginx and runs `nginx -t` on rendered configs
# (boot_deploy.py). Run by Bazel (//tests/deploy:validate_deploy) or by hand from the
# repository root: BIN_ROOT=bazel-out/k8-fastbuild/bin tests/deploy/validate_deploy.sh
set -euo pipefail

if [[ -n "${TEST_SRCDIR:-}" ]]; then
  src="$TEST_SRCDIR/${TEST_WORKSPACE:-tether}"  # the runfiles hold sources and binaries alike
  bin_root="$src"
  work="$TEST_TMPDIR"
else
  src="$(cd "$(dirname "$0")/../.." && pwd)"
  bin_root="$(cd "${BIN_ROOT:-$src/bazel-bin}" && pwd)"
  work="$(mktemp -d -t validate-deploy.XXXXXX)"
  trap 'rm -rf "$work"' EXIT
fi
here="$src/tests/deploy"

# Debian's python3 carries python3-yaml (scripts/install_deps.sh test); a PATH python may not.
py=/usr/bin/python3
[[ -x $py ]] || py="$(command -v python3)"
if ! "$py" -c 'import yaml' 2>/dev/null; then
  echo "FAIL: $py has no yaml module: install python3-yaml (scripts/install_deps.sh test)" >&2
  exit 1
fi
if ! PATH="/usr/sbin:/usr/bin:$PATH" command -v nginx >/dev/null; then
  echo "FAIL: nginx is not installed (scripts/install_deps.sh test installs nginx-light)" >&2
  exit 1
fi

export PYTHONDONTWRITEBYTECODE=1  # no __pycache__ in the source tree
status=0
echo "== static checks"
"$py" "$here/check_deploy.py" "$src" "$bin_root" || status=1
echo "== boot on loopback"
(cd "$here" && "$py" boot_deploy.py "$src" "$bin_root" "$work") || status=1
exit $status
