#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: a
# deterministic figure (unlike requests/s on a shared machine) for telling
# whether a change to the request path made it cheaper.
#
#   benches/instructions/run.sh            # HTTP/1.1 keep-alive, 100 B responses
#   benches/instructions/run.sh --h2       # HTTP/2 over TLS (TLS records included)
#   DUOTONE_BIN=path benches/instructions/run.sh   # another build
#
# Starts an nginx origin and Duotone (under valgrind) on 127.0.0.1, sends
# 10 000 and then, in a fresh process, 30 000 requests with h2load (32
# connections), and prints the difference over 20 000: start-up and shutdown
# cancel out. Needs valgrind, nginx, h2load (nghttp2-client), curl, openssl
# and a release build (cargo build --release -p duotone). Every process it
# starts runs under timeout(1) and is stopped by PID on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${DUOTONE_BIN:-$ROOT/target/release/duotone}"
H2=0
[[ "${1:-}" == "--h2" ]] && H2=1
for tool in valgrind nginx h2load curl openssl python3; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
[[ -x "$BIN" ]] || { echo "no binary at $BIN (cargo build --release -p duotone)" >&2; exit 1; }

DIR="$(mktemp -d /tmp/duotone-instructions-XXXXXX)"
trap 'rm -rf "$DIR"' EXIT

read -r ORIGIN HTTP HTTPS ADMIN < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')

mkdir -p "$DIR/origin-tmp" "$DIR/state"
cat > "$DIR/origin.conf" <<EOF
worker_processes 1;
pid $DIR/origin.pid;
error_log $DIR/origin-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $DIR/origin-tmp/body; proxy_temp_path $DIR/origin-tmp/proxy;
  fastcgi_temp_path $DIR/origin-tmp/fcgi; uwsgi_temp_path $DIR/origin-tmp/uwsgi;
  scgi_temp_path $DIR/origin-tmp/scgi;
  server {
    listen 127.0.0.1:$ORIGIN;
    location = / { default_type text/plain; return 200 "$(printf 'x%.0s' $(seq 99))\n"; }
  }
}
EOF
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$DIR/key.pem" -out "$DIR/cert.pem" 2>/dev/null
cat > "$DIR/duotone.toml" <<EOF
[server]
http = "127.0.0.1:$HTTP"
https = "127.0.0.1:$HTTPS"
admin = "127.0.0.1:$ADMIN"
state_dir = "$DIR/state"
threads = 2

[log]
access = "off"

[[sites]]
hosts = ["*"]
tls = { cert = "$DIR/cert.pem", key = "$DIR/key.pem" }

  [[sites.routes]]
  path = "/"
  service = "origin"
  allow_http = true

[services.origin]
live = "blue"
colors.blue = ["127.0.0.1:$ORIGIN"]
EOF

if [[ "$H2" == 1 ]]; then
  URL="https://127.0.0.1:$HTTPS/"; LOAD=(-c8 -m10); WHAT="HTTP/2 over TLS (8 connections × 10 streams)"
else
  URL="http://127.0.0.1:$HTTP/"; LOAD=(--h1 -c32); WHAT="HTTP/1.1 keep-alive (32 connections)"
fi

# instructions N: total instructions of a Duotone process that served N requests.
instructions() {
  local n="$1" out="$DIR/callgrind.$1"
  timeout 300 nginx -p "$DIR" -c "$DIR/origin.conf" -g "daemon off;" &
  local origin=$!
  timeout 300 valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$BIN" run -c "$DIR/duotone.toml" >"$DIR/duotone.$n.log" 2>&1 &
  local proxy=$!
  # This runs in a subshell ($(...)): stop both on any way out of it.
  trap "kill -TERM $origin $proxy 2>/dev/null || true" EXIT
  local up=0
  for _ in $(seq 150); do
    curl -sf -o /dev/null "http://127.0.0.1:$HTTP/" && { up=1; break; }
    sleep 0.2
  done
  [[ "$up" == 1 ]] || { echo "duotone did not come up: $DIR/duotone.$n.log" >&2; exit 1; }
  local done
  done=$(timeout 240 h2load -t1 "${LOAD[@]}" -n "$n" "$URL" | awk '/^requests:/{print $8}')
  [[ "$done" == "$n" ]] || { echo "only $done of $n requests succeeded" >&2; exit 1; }
  kill -INT "$proxy"; wait "$proxy" || true
  kill -TERM "$origin"; wait "$origin" || true
  callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",", "", $1); print $1}'
}

a=$(instructions 10000)
b=$(instructions 30000)
echo "$WHAT: $(( (b - a) / 20000 )) user-space instructions per request ($("$BIN" --version 2>/dev/null || echo duotone))"
