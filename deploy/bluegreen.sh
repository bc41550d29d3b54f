#!/usr/bin/env bash
# bluegreen.sh: zero-downtime blue/green deploy of one service behind Duotone.
#
# Drop this in where your old "start new containers, edit nginx.conf, reload,
# stop old containers" script was. It is a thin wrapper: the work is done by
# `duotone deploy`, which
#   1. runs the start command for the idle color,
#   2. waits until the proxy's active health checks pass for that color
#      (checks made after the start command finished, not stale ones),
#   3. flips the service to it (atomic; requests in flight finish where they are),
#   4. drains the old color: waits until it has no requests in flight, while
#      the proxy closes its WebSockets (the service's drain_upgraded, or at
#      the latest when --drain-timeout runs out),
#   5. runs the stop command for the old color.
# If step 1 or 2 fails, nothing is flipped and the old color stays live; the
# stop command then runs for the new color (unless --keep-failed), never for
# the old one; the exit status is non-zero. A start command still running
# after --start-timeout (a server left in the foreground) is stopped and the
# deploy refused. If requests are still in flight on the old color after
# --drain-timeout, the new color stays live, the stop command is not run for
# the old one (unless --force-stop) and the exit status is non-zero.
#
# Usage:
#   bluegreen.sh SERVICE --start CMD [--stop CMD] [options]
#   bluegreen.sh SERVICE -p PROJECT [-f COMPOSE_FILE] [options]
#
#   --start CMD, --stop CMD
#       Shell commands (run with sh -c). "{color}" is replaced by the color
#       being started or stopped, which is also in $DUOTONE_COLOR; the color
#       that was live before the deploy is in $DUOTONE_OLD_COLOR.
#   -p, --project PROJECT
#       Docker Compose mode: one compose project per color. "{color}" in
#       PROJECT is replaced by the color; without it "-{color}" is appended,
#       so "-p shop" runs projects shop-blue and shop-green, and "-p {color}"
#       runs projects blue and green. Start is `docker compose -p P up -d`,
#       stop is `docker compose -p P down`. The compose file can use
#       ${DUOTONE_COLOR}, e.g. `env_file: ${DUOTONE_COLOR}.env` holding each
#       color's host port (the members listed in duotone.toml).
#   -f, --file COMPOSE_FILE   compose file (default: compose's own lookup)
#   --to COLOR                color to deploy (default: the idle one of two)
#   --start-timeout DUR       default 300s (the start command must return)
#   --health-timeout DUR      default 120s
#   --keep-failed             leave the new color running after a failure
#   --drain-timeout DUR       default 300s
#   --force-stop              run the stop command even if the drain timed out
#   --pause-during CMD        once the new color is healthy: pause the service
#                             (requests held at the edge), run CMD (e.g. the
#                             migrations; "{color}" and "{old}" are replaced),
#                             flip, resume; if CMD fails: resume, old color stays
#   --pause-timeout DUR       longest CMD may run (default: the service's pause
#                             timeout)
#   --admin URL               admin API (default: $DUOTONE_ADMIN, else
#                             http://127.0.0.1:9090)
#
# Environment:
#   DUOTONE_ADMIN         admin API base URL
#   DUOTONE_ADMIN_TOKEN   bearer token for the admin API (never put it in argv)
#   DUOTONE_BIN           the duotone binary (default: `duotone` on PATH)
#
# Examples:
#   DUOTONE_ADMIN_TOKEN=... bluegreen.sh api \
#       --start 'systemctl start app@{color}' --stop 'systemctl stop app@{color}'
#   bluegreen.sh api -p api-{color} -f /srv/api/compose.yml --health-timeout 60s

set -euo pipefail

usage() {
    # Print the comment block above as help.
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0" >&2
    exit 2
}

die() {
    echo "bluegreen.sh: $*" >&2
    exit 2
}

# Quotes $1 for sh -c, turning each "{color}" into "$DUOTONE_COLOR" (which
# duotone sets to the color being started or stopped).
sh_quote_color() {
    local s=${1//\'/\'\\\'\'}
    s=${s//\{color\}/\'\"\$DUOTONE_COLOR\"\'}
    printf "'%s'" "$s"
}

[[ $# -ge 1 ]] || usage
case "$1" in -h | --help) usage ;; -*) die "the first argument is the service name" ;; esac
service=$1
shift

start="" stop="" project="" compose_file=""
passthrough=()
while [[ $# -gt 0 ]]; do
    case "$1" in
    --start) start=${2?--start needs a command}; shift 2 ;;
    --stop) stop=${2?--stop needs a command}; shift 2 ;;
    -p | --project) project=${2?-p needs a project name}; shift 2 ;;
    -f | --file) compose_file=${2?-f needs a file}; shift 2 ;;
    --to | --start-timeout | --health-timeout | --drain-timeout | --admin | --pause-during | --pause-timeout)
        passthrough+=("$1" "${2?$1 needs a value}")
        shift 2
        ;;
    --keep-failed | --force-stop) passthrough+=("$1"); shift ;;
    -h | --help) usage ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
done

if [[ -n $project ]]; then
    [[ -z $start && -z $stop ]] || die "use either --start/--stop or -p, not both"
    [[ $project == *"{color}"* ]] || project="$project-{color}"
    compose="docker compose -p $(sh_quote_color "$project")"
    [[ -z $compose_file ]] || compose+=" -f $(sh_quote_color "$compose_file")"
    start="$compose up -d"
    stop="$compose down"
fi
[[ -n $start ]] || die "missing --start CMD (or -p PROJECT for docker compose)"

bin=${DUOTONE_BIN:-duotone}
command -v "$bin" >/dev/null || die "cannot find the duotone binary ($bin); set DUOTONE_BIN"

# duotone reads DUOTONE_ADMIN and DUOTONE_ADMIN_TOKEN from the environment.
args=(deploy --service "$service" --start "$start")
[[ -z $stop ]] || args+=(--stop "$stop")
exec "$bin" "${args[@]}" "${passthrough[@]}"
