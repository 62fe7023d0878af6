#!/bin/sh
# Container entry point of the load balancer image: renders the config for the given edges
# (arguments as for render.sh) into a fresh prefix and runs nginx in the foreground as PID 1.
set -eu
prefix="$(mktemp -d)"
"$(dirname "$0")/render.sh" --foreground --stdio-logs --out "$prefix/nginx.conf" "$@"
exec nginx -p "$prefix" -c "$prefix/nginx.conf" -e stderr
