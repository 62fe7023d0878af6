#!/usr/bin/env bash
# Renders deploy/nginx/nginx.conf.template into a complete nginx.conf that balances WebSockets
# over the given edges. The result runs as any user:
#   nginx -p PREFIX_DIR -c PREFIX_DIR/nginx.conf -e stderr
# (pid, logs and temp files go inside PREFIX_DIR; `-e stderr` keeps nginx from trying the
# compiled-in /var/log/nginx/error.log before it has read the config).
#
# Usage: render.sh [--foreground] [--stdio-logs] [--user NAME] [--out FILE] LISTEN EDGE...
#   LISTEN, EDGE    a port (meaning 127.0.0.1:PORT) or HOST:PORT
#   --foreground    add `daemon off;` (containers, supervisors, scripts that wait on nginx)
#   --stdio-logs    error log to stderr, access log to stdout (containers; the container runtime
#                   hands stdout to the container's user, a shell pipe of another user does not)
#   --user NAME     only when nginx starts as root: run the workers as NAME, not `nobody`
#   --out FILE      write there instead of stdout
# Example: render.sh --out "$PREFIX/nginx.conf" 18700 18789 18790
set -euo pipefail

usage() { sed -n '8,15p' "$0" >&2; exit 2; }

daemon="" error_log="error.log" access_log="access.log" user="" out=""
while [[ $# -gt 0 && $1 == --* ]]; do
  case "$1" in
    --foreground) daemon="daemon off;" ;;
    --stdio-logs) error_log="stderr" access_log="/dev/stdout" ;;
    --user) [[ $# -ge 2 && $2 =~ ^[a-z_][a-z0-9_-]*$ ]] || usage; user="user $2;"; shift ;;
    --out) [[ $# -ge 2 ]] || usage; out="$2"; shift ;;
    *) usage ;;
  esac
  shift
done
[[ $# -ge 2 ]] || usage

# PORT -> 127.0.0.1:PORT; HOST:PORT kept. Rejects anything else so a typo fails here, not in nginx.
addr() {
  local a="$1" host port
  if [[ $a =~ ^[0-9]+$ ]]; then host="127.0.0.1" port="$a"
  elif [[ $a =~ ^([A-Za-z0-9._-]+):([0-9]+)$ ]]; then
    host="${BASH_REMATCH[1]}" port="${BASH_REMATCH[2]}"
  else echo "render.sh: not a port or host:port: $a" >&2; exit 2
  fi
  if ((port < 1 || port > 65535)); then echo "render.sh: bad port: $a" >&2; exit 2; fi
  echo "$host:$port"
}

listen="$(addr "$1")"
shift
servers=""
for e in "$@"; do
  # After one refused connection (an edge draining or gone) skip that edge for 5 s.
  servers+="        server $(addr "$e") max_fails=1 fail_timeout=5s;"$'\n'
done

# Raise the soft descriptor limit up to the hard one (allowed without root), capped at 65536.
nofile="$(ulimit -Hn)"
if [[ $nofile == unlimited ]] || ((nofile > 65536)); then nofile=65536; fi
connections=$((nofile / 2 > 256 ? nofile / 2 : 256))

conf="$(<"$(dirname "$0")/nginx.conf.template")"
conf="${conf//@NOFILE@/$nofile}"
conf="${conf//@WORKER_CONNECTIONS@/$connections}"
conf="${conf//@LISTEN@/$listen}"
conf="${conf//@UPSTREAM_SERVERS@/${servers%$'\n'}}"
conf="${conf//@DAEMON@/$daemon}"
conf="${conf//@USER@/$user}"
conf="${conf//@ERROR_LOG@/$error_log}"
conf="${conf//@ACCESS_LOG@/$access_log}"
if [[ $conf =~ @[A-Z_]+@ ]]; then
  echo "render.sh: unreplaced placeholder in the template" >&2
  exit 1
fi

if [[ -n $out ]]; then
  printf '%s\n' "$conf" >"$out"
else
  printf '%s\n' "$conf"
fi
