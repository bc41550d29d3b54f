#!/usr/bin/env bash
# Build Duotone's runtime image without a container registry.
#
#   deploy/image.sh base                 make the base image duotone-base:bookworm once
#                                        (debootstrap from Debian's mirror + docker import);
#                                        kept by tag, so later calls return at once
#   deploy/image.sh build [BINARY] [TAG] the runtime image (default duotone:latest) from a
#                                        binary built on this host (default target/release/duotone,
#                                        else target/debug/duotone; CARGO_TARGET_DIR is honoured),
#                                        with deploy/Dockerfile.runtime on duotone-base:bookworm
#   deploy/image.sh app [TAG]            the test app image (default duotone-testapp:latest):
#                                        the same base plus gunicorn from Debian
#   deploy/image.sh etcd [TAG] [BINARY]  an etcd image (default duotone-etcd:local) for
#                                        deploy/cluster/ (ETCD_IMAGE=...): the same base plus the
#                                        host's etcd (default /usr/bin/etcd, Debian's etcd-server),
#                                        ENTRYPOINT etcd, configured by the ETCD_* environment
#
# With a registry, `docker build -f deploy/Dockerfile -t duotone:latest .`
# builds the same runtime stage on debian:bookworm-slim with a Rust builder.
#
# Environment: DUOTONE_BASE_IMAGE (default duotone-base:bookworm),
# DEBIAN_MIRROR (default http://deb.debian.org/debian). Needs root for
# debootstrap (or sudo), the `debootstrap` package and a Docker engine.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
base="${DUOTONE_BASE_IMAGE:-duotone-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

die() { echo "deploy/image.sh: $*" >&2; exit 1; }

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

make_base() {
  if have_image "$base"; then
    echo "==> $base exists (docker rmi $base to rebuild it)"
    return 0
  fi
  command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
  local dir
  dir="$(mktemp -d /tmp/duotone-base.XXXXXX)"
  # The root file system is owned by root; remove it whatever happens.
  trap 'sudo_if_needed rm -rf "$dir"' RETURN
  echo "==> debootstrap --variant=minbase bookworm ($mirror)"
  # ca-certificates: the ACME directory is reached over https. Nothing else:
  # the file capability is set on the host (see build_runtime).
  if ! sudo_if_needed debootstrap --variant=minbase --include=ca-certificates \
      bookworm "$dir" "$mirror" >"$dir.log" 2>&1; then
    tail -n 30 "$dir.log" >&2
    die "debootstrap failed (full log: $dir.log)"
  fi
  rm -f "$dir.log"
  # What debian:bookworm-slim leaves out: package caches and lists, man pages,
  # info, translations. A path-exclude keeps later apt-get installs small too.
  sudo_if_needed sh -euc '
    d="$1"
    rm -rf "$d"/var/cache/apt/archives/*.deb "$d"/var/lib/apt/lists/* \
           "$d"/usr/share/man/* "$d"/usr/share/info/* "$d"/usr/share/locale/* \
           "$d"/var/log/*.log "$d"/var/cache/debconf/*-old "$d"/tmp/*
    mkdir -p "$d"/etc/dpkg/dpkg.cfg.d
    printf "%s\n" "path-exclude /usr/share/man/*" "path-exclude /usr/share/info/*" \
      "path-exclude /usr/share/locale/*" "path-include /usr/share/locale/locale.alias" \
      >"$d"/etc/dpkg/dpkg.cfg.d/excludes
    printf "deb %s bookworm main\ndeb %s bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n" \
      "$2" "$2" >"$d"/etc/apt/sources.list
  ' sh "$dir" "$mirror"
  echo "==> docker import $base"
  sudo_if_needed tar -C "$dir" --numeric-owner --xattrs -c . \
    | docker import --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
  docker image ls "$base"
}

# Runs the build command "$@" for tag $1 and removes the image the tag named
# before, if the build replaced it and nothing else uses it (no pile of
# untagged images after repeated builds).
replace_image() {
  local tag="$1" old new
  shift
  old="$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)"
  "$@" >/dev/null
  new="$(docker image inspect -f '{{.Id}}' "$tag")"
  if [ -n "$old" ] && [ "$old" != "$new" ]; then
    docker rmi "$old" >/dev/null 2>&1 || true
  fi
}

default_binary() {
  local t="${CARGO_TARGET_DIR:-$root/target}"
  if [ -x "$t/release/duotone" ]; then echo "$t/release/duotone"
  elif [ -x "$t/debug/duotone" ]; then echo "$t/debug/duotone"
  else die "no binary in $t/release or $t/debug: cargo build --release -p duotone"
  fi
}

build_runtime() {
  local binary="${1:-}" tag="${2:-duotone:latest}" ctx
  if [ -z "$binary" ]; then binary="$(default_binary)" || exit 1; fi
  [ -x "$binary" ] || die "$binary is not an executable"
  command -v setcap >/dev/null || die "setcap is missing: apt-get install libcap2-bin"
  make_base
  ctx="$(mktemp -d /tmp/duotone-image.XXXXXX)"
  trap 'sudo_if_needed rm -rf "$ctx"' RETURN
  # A small build context: the example config, and duotone.tar with the
  # binary (without debug sections: a debug build is ~100 MB with them) that
  # carries CAP_NET_BIND_SERVICE as a file capability, set here because ADD
  # keeps it (see Dockerfile.runtime).
  mkdir -p "$ctx/deploy" "$ctx/root/usr/local/bin"
  if command -v objcopy >/dev/null; then
    objcopy --strip-debug "$binary" "$ctx/root/usr/local/bin/duotone"
  else
    cp "$binary" "$ctx/root/usr/local/bin/duotone"
  fi
  chmod 0755 "$ctx/root/usr/local/bin/duotone"
  sudo_if_needed setcap cap_net_bind_service=+ep "$ctx/root/usr/local/bin/duotone"
  # Reproducible (no mtimes): an unchanged binary hits the build cache.
  sudo_if_needed tar -C "$ctx/root" --xattrs --xattrs-include='security.capability' \
    --numeric-owner --owner=0 --group=0 --mtime=@0 --pax-option=delete=atime,delete=ctime -cf "$ctx/duotone.tar" usr/local/bin/duotone
  sudo_if_needed rm -rf "$ctx/root"
  cp "$here/duotone.toml" "$ctx/deploy/duotone.toml"
  echo "==> docker build -f deploy/Dockerfile.runtime --build-arg BASE=$base -t $tag ($binary)"
  replace_image "$tag" docker build -q -f "$here/Dockerfile.runtime" --build-arg "BASE=$base" \
    -t "$tag" "$ctx"
  docker image ls "$tag"
}

build_app() {
  local tag="${1:-duotone-testapp:latest}"
  make_base
  echo "==> docker build $tag (python3-gunicorn on $base)"
  replace_image "$tag" docker build -q -f "$root/tests/apps/container/Dockerfile" \
    --build-arg "BASE=$base" -t "$tag" "$root/tests/apps"
  docker image ls "$tag"
}

build_etcd() {
  local tag="${1:-duotone-etcd:local}" binary="${2:-/usr/bin/etcd}" ctx
  [ -x "$binary" ] || die "$binary is not an executable: apt-get install etcd-server"
  make_base
  ctx="$(mktemp -d /tmp/duotone-etcd.XXXXXX)"
  trap 'rm -rf "$ctx"' RETURN
  cp "$binary" "$ctx/etcd"
  # Debian's etcd needs only the C library, which the bookworm base has.
  cat >"$ctx/Dockerfile" <<'DOCKERFILE'
ARG BASE=duotone-base:bookworm
FROM ${BASE}
COPY etcd /usr/local/bin/etcd
EXPOSE 2379 2380
ENTRYPOINT ["/usr/local/bin/etcd"]
DOCKERFILE
  echo "==> docker build $tag ($binary on $base)"
  replace_image "$tag" docker build -q --build-arg "BASE=$base" -t "$tag" "$ctx"
  docker image ls "$tag"
}

case "${1:-}" in
  base) make_base ;;
  build) shift; build_runtime "$@" ;;
  app) shift; build_app "$@" ;;
  etcd) shift; build_etcd "$@" ;;
  *) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 64 ;;
esac
