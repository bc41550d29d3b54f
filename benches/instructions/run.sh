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
# Starts an nginx origin and the proxy (under valgrind; nginx with its two
# workers traced) on 127.0.0.1, sends 10 000 and then, in a fresh process,
# 30 000 requests with h2load, and prints the difference over 20 000:
# start-up and shutdown cancel out. The proxies are set up as in the load
# benchmark (2 workers/threads, upstream keep-alive, no access log, the
# client's address, scheme and host passed to the origin). Needs
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

read -r ORIGIN HTTP HTTPS ADMIN < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')

mkdir -p "$DIR/origin-tmp" "$DIR/state"
# nginx workers run as nobody when started by root: they write here too.
chmod 711 "$DIR"
mkdir -m 1777 "$DIR/cg"
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

cat > "$DIR/nginx.conf" <<EOF
worker_processes 2;
pid $DIR/nginx.pid;
error_log $DIR/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $DIR/origin-tmp/pbody; proxy_temp_path $DIR/origin-tmp/pproxy;
  fastcgi_temp_path $DIR/origin-tmp/pfcgi; uwsgi_temp_path $DIR/origin-tmp/puwsgi;
  scgi_temp_path $DIR/origin-tmp/pscgi;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$HTTP;
    listen 127.0.0.1:$HTTPS ssl http2;
    ssl_certificate $DIR/cert.pem;
    ssl_certificate_key $DIR/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
      proxy_set_header X-Real-IP \$remote_addr;
    }
  }
}
EOF
cat "$DIR/cert.pem" "$DIR/key.pem" > "$DIR/haproxy.pem"
cat > "$DIR/haproxy.cfg" <<EOF
global
  nbthread 2
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 300s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$HTTP
  bind 127.0.0.1:$HTTPS ssl crt $DIR/haproxy.pem alpn h2,http/1.1
  option forwardfor
  http-request set-header X-Forwarded-Proto https if { ssl_fc }
  http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Real-IP %[src]
  default_backend be
backend be
  server origin 127.0.0.1:$ORIGIN
EOF

if [[ "$H2" == 1 ]]; then
  URL="https://127.0.0.1:$HTTPS/"; LOAD=(-c8 -m10); WHAT="HTTP/2 over TLS (8 connections × 10 streams)"
else
  URL="http://127.0.0.1:$HTTP/"; LOAD=(--h1 -c32); WHAT="HTTP/1.1 keep-alive (32 connections)"
fi

# instructions N: total instructions of a Duotone process that served N requests.
instructions() {
  local n="$1" out="$DIR/cg/callgrind.$1"
  timeout 300 nginx -p "$DIR" -c "$DIR/origin.conf" -g "daemon off;" >/dev/null 2>&1 &
  local origin=$!
  local cmd stop=INT
  case "$PEER" in
    duotone) cmd=("$BIN" run -c "$DIR/duotone.toml") ;;
    nginx) cmd=(nginx -p "$DIR" -c "$DIR/nginx.conf" -g "daemon off;"); stop=QUIT ;;
    haproxy) cmd=(haproxy -f "$DIR/haproxy.cfg" -db); stop=USR1 ;;
  esac
  # %p: nginx's workers write their own files; all are summed. Not under
  # timeout(1), which would not pass nginx's QUIT or HAProxy's USR1 on:
  # a watchdog bounds it instead.
  valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$out.%p" \
    "${cmd[@]}" >"$DIR/$PEER.$n.log" 2>&1 &
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
  kill -"$stop" "$proxy"; wait "$proxy" || true
  kill -TERM "$origin" "$watchdog" 2>/dev/null; wait "$origin" || true
  local total=0 f n
  for f in "$out".*; do
    n=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",", "", $1); print $1}')
    total=$((total + ${n:-0}))
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
