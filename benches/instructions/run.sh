#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: a
# deterministic figure (unlike requests/s on a shared machine) for telling
# whether a change to the request path made it cheaper.
#
#   benches/instructions/run.sh                 # HTTP/1.1 keep-alive, 100 B responses
#   benches/instructions/run.sh --h2            # HTTP/2 over TLS (TLS records included)
#   benches/instructions/run.sh --peer nginx    # the same for nginx (or haproxy)
#   DUOTONE_BIN=path benches/instructions/run.sh   # another build
#
# Starts the origin and the proxy (under valgrind; nginx with its two
# workers traced) on 127.0.0.1, sends 10 000 and then, in a fresh process,
# 30 000 requests with h2load, and prints the difference over 20 000:
# start-up and shutdown cancel out. Origin and proxy run with the load
# benchmark's own configs (benches/load/bench.py --write-configs). Needs
# valgrind, nginx, h2load (nghttp2-client), curl, openssl, haproxy for
# --peer haproxy, and a release build (cargo build --release -p duotone).
# Every process it starts runs under timeout(1) and is stopped by PID.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${DUOTONE_BIN:-$ROOT/target/release/duotone}"
H2=0
PEER=duotone
while [[ $# -gt 0 ]]; do
  case "$1" in
    --h2) H2=1 ;;
    --peer) PEER="${2:-}"; shift ;;
    *) echo "usage: $0 [--h2] [--peer duotone|nginx|haproxy]" >&2; exit 2 ;;
  esac
  shift
done
case "$PEER" in duotone | nginx | haproxy) ;; *) echo "unknown peer: $PEER" >&2; exit 2 ;; esac
for tool in valgrind nginx h2load curl openssl python3 $([[ "$PEER" == haproxy ]] && echo haproxy); do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
[[ "$PEER" != duotone || -x "$BIN" ]] || { echo "no binary at $BIN (cargo build --release -p duotone)" >&2; exit 1; }

DIR="$(mktemp -d /tmp/duotone-instructions-XXXXXX)"
trap 'rm -rf "$DIR"' EXIT
# nginx workers run as nobody when started by root: they read and write here too.
chmod 755 "$DIR"
mkdir -m 1777 "$DIR/cg"
# The load benchmark's own configs (origin and proxy): sets ORIGIN, HTTP,
# HTTPS, origin_cmd and proxy_cmd.
eval "$(DUOTONE_BIN="$BIN" python3 "$ROOT/benches/load/bench.py" --write-configs "$DIR" "$PEER")"

if [[ "$H2" == 1 ]]; then
  URL="https://127.0.0.1:$HTTPS/"; LOAD=(-c8 -m10); WHAT="HTTP/2 over TLS (8 connections × 10 streams)"
else
  URL="http://127.0.0.1:$HTTP/"; LOAD=(--h1 -c32); WHAT="HTTP/1.1 keep-alive (32 connections)"
fi

# How each proxy is asked to stop (and write its profile).
case "$PEER" in duotone) STOP=INT ;; nginx) STOP=QUIT ;; haproxy) STOP=USR1 ;; esac

# instructions N: total user-space instructions of the proxy over N requests.
instructions() {
  local n="$1" out="$DIR/cg/callgrind.$1"
  timeout 300 "${origin_cmd[@]}" >/dev/null 2>&1 &
  local origin=$!
  # %p: nginx's workers write their own files; all are summed. Not under
  # timeout(1), which would not pass nginx's QUIT or HAProxy's USR1 on:
  # a watchdog bounds it instead.
  valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$out.%p" \
    "${proxy_cmd[@]}" >"$DIR/$PEER.$n.log" 2>&1 &
  local proxy=$!
  (
    trap 'kill $nap 2>/dev/null; exit' TERM
    sleep 300 &
    nap=$!
    wait $nap
    kill -KILL "$proxy" 2>/dev/null
  ) >/dev/null 2>&1 &
  local watchdog=$!
  # This runs in a subshell ($(...)): stop all on any way out of it.
  trap "kill -TERM $origin $proxy $watchdog 2>/dev/null || true" EXIT
  local up=0
  for _ in $(seq 150); do
    curl -sf -o /dev/null "http://127.0.0.1:$HTTP/" && { up=1; break; }
    sleep 0.2
  done
  [[ "$up" == 1 ]] || { echo "$PEER did not come up: $DIR/$PEER.$n.log" >&2; exit 1; }
  local done
  done=$(timeout 240 h2load -t1 "${LOAD[@]}" -n "$n" "$URL" | awk '/^requests:/{print $8}')
  [[ "$done" == "$n" ]] || { echo "only $done of $n requests succeeded" >&2; exit 1; }
  kill -"$STOP" "$proxy"; wait "$proxy" || true
  kill -TERM "$origin" "$watchdog" 2>/dev/null; wait "$origin" || true
  local total=0 f part
  for f in "$out".*; do
    part=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",", "", $1); print $1}')
    total=$((total + ${part:-0}))
  done
  echo "$total"
}

a=$(instructions 10000)
b=$(instructions 30000)
case "$PEER" in
  duotone) VERSION=$("$BIN" --version 2>/dev/null || echo duotone) ;;
  nginx) VERSION=$(nginx -v 2>&1 | sed 's/.*: //') ;;
  haproxy) VERSION=$(haproxy -v | head -1 | awk '{print "HAProxy", $3}') ;;
esac
echo "$WHAT: $(( (b - a) / 20000 )) user-space instructions per request ($VERSION)"
