#!/usr/bin/env bash
# Runs idle_conns.py inside a virtual machine whose kernel and file limits are
# ours: 50 000 idle connections need about 2 × 50 000 descriptors in one
# process, more than a container's hard RLIMIT_NOFILE often allows (20 000 on
# this project's machine, and neither `ulimit -Hn` nor `docker run --ulimit`
# may raise it without CAP_SYS_RESOURCE).
#
#   benches/load/vm.sh                                   # 50 000 per kind, duotone,nginx,haproxy
#   benches/load/vm.sh --out benches/results/idle-conns-50k
#   benches/load/vm.sh -- --conns 2000 --kinds h1        # any idle_conns.py options after --
#   VM_MEM=12G VM_SMP=2 DUOTONE_BIN=... benches/load/vm.sh
#
# Once (cached in $BENCH_VM_DIR, default target/bench-vm/; --rebuild makes it
# anew): debootstrap a Debian bookworm root with the Debian kernel, systemd,
# python3, nginx, haproxy and openssl, and an ext4 image of it (root.img, with
# the kernel and initrd beside it). Each run: the Duotone binary (DUOTONE_BIN,
# default target/release/duotone), benches/load/*.py and a guest script are
# put in a tar that the VM sees as a second disk; qemu boots the image (KVM
# with -cpu host where /dev/kvm boots a stock kernel, else TCG, QEMU's
# software emulation, 10 to 20 times slower: VM_ACCEL=kvm|tcg forces one;
# root disk in snapshot mode so the image stays clean; no network: everything
# runs on the guest's loopback); a systemd unit
# unpacks the tar, raises fs.nr_open, the file limit, somaxconn and the
# ephemeral port range, runs idle_conns.py as root, writes its .md, .json and
# log as a tar onto a third disk and powers off. The host unpacks that disk:
# the results go to --out's PREFIX.md/.json (default
# $BENCH_VM_DIR/out/idle-conns), the run's log to PREFIX.log beside them unless
# --out is given (then $BENCH_VM_DIR/last-run.log), the VM's serial console to
# $BENCH_VM_DIR/console.log (the run's own lines followed live here). Needs
# root, qemu-system-x86, debootstrap and Debian's mirror (apt's sources).
# Default idle_conns.py options: 50 000 connections, one round, Duotone, nginx
# and HAProxy, all four kinds, keep-alive 3 600 s (at 300 s the first
# connections expire before the reading when opening 50 000 takes minutes).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VMDIR="${BENCH_VM_DIR:-$ROOT/target/bench-vm}"
MEM="${VM_MEM:-12G}"
SMP="${VM_SMP:-2}"
# KVM with the host's CPU (without arch-capabilities, which nested KVM may
# refuse to set: "failed to set MSR 0x10a"), or TCG, QEMU's software
# emulation, where /dev/kvm is missing or is PVM's (kvm_pvm: it boots only
# kernels built as PVM guests, and Debian's hangs right after "Probing EDD")
if [ -z "${VM_ACCEL:-}" ]; then
  VM_ACCEL=kvm
  { [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ]; } || VM_ACCEL=tcg
fi
if [ "$VM_ACCEL" = kvm ]; then
  ACCEL=(-enable-kvm)
  CPU="${VM_CPU:-host,-arch-capabilities}"
else
  ACCEL=(-accel tcg,thread=multi,tb-size=1024)
  CPU="${VM_CPU:-max}"
fi
TIMEOUT="${VM_TIMEOUT:-7200}"   # seconds; the VM is killed past it
BIN="${DUOTONE_BIN:-$ROOT/target/release/duotone}"
MIRROR="${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
OUT=""
REBUILD=0
BUILD_ONLY=0
ARGS=(--conns 50000 --rounds 1 --peers duotone,nginx,haproxy --kinds h1,https,h2,h1-chunked
      --keepalive 3600)   # opening 50 000 takes minutes in a slow VM

while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --rebuild) REBUILD=1; shift ;;
    --build-only) BUILD_ONLY=1; shift ;;
    --) shift; ARGS=("$@"); break ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown option $1 (idle_conns.py's options go after --)" >&2; exit 2 ;;
  esac
done

log() { echo "[vm.sh $(date -u +%H:%M:%S)] $*" >&2; }

# ---------------------------------------------------------------- the image
build_image() {
  local fs="$VMDIR/rootfs"
  log "debootstrap bookworm from $MIRROR into $fs (a few minutes)"
  rm -rf "$fs" "$VMDIR/root.img"
  mkdir -p "$fs"
  debootstrap --variant=minbase \
    --include=linux-image-amd64,systemd-sysv,udev,kmod,python3,nginx,haproxy,openssl,iproute2,procps \
    bookworm "$fs" "$MIRROR" >"$VMDIR/debootstrap.log" 2>&1 \
    || { tail -20 "$VMDIR/debootstrap.log" >&2; exit 1; }
  echo bench-vm >"$fs/etc/hostname"
  echo "LABEL=benchroot / ext4 rw,errors=remount-ro 0 1" >"$fs/etc/fstab"
  # nothing else starts: the packages' own nginx and haproxy, apt's timers
  for u in nginx.service haproxy.service apt-daily.timer apt-daily-upgrade.timer \
           e2scrub_all.timer fstrim.timer; do
    ln -sf /dev/null "$fs/etc/systemd/system/$u"
  done
  # the run: unpack the input disk, hand over to its guest.sh
  cat >"$fs/etc/systemd/system/bench.service" <<'EOF'
[Unit]
Description=Duotone benchmark run (benches/load/vm.sh)
After=systemd-udev-settle.service local-fs.target
Wants=systemd-udev-settle.service

[Service]
Type=oneshot
LimitNOFILE=1048576
TasksMax=infinity
StandardOutput=journal+console
StandardError=journal+console
ExecStart=/bin/sh -c 'mkdir -p /bench && tar xf /dev/disk/by-id/virtio-benchin -C /bench && exec /bin/bash /bench/guest.sh'
ExecStopPost=/bin/systemctl --no-block poweroff

[Install]
WantedBy=multi-user.target
EOF
  ln -sf /etc/systemd/system/bench.service "$fs/etc/systemd/system/multi-user.target.wants/bench.service"
  cp -L "$fs"/boot/vmlinuz-* "$VMDIR/vmlinuz"
  cp -L "$fs"/boot/initrd.img-* "$VMDIR/initrd.img"
  mkfs.ext4 -q -F -L benchroot -d "$fs" "$VMDIR/root.img" 3G
  rm -rf "$fs"
  date -u >"$VMDIR/built"
  log "image ready: $VMDIR/root.img ($(du -h "$VMDIR/root.img" | cut -f1) used)"
}

mkdir -p "$VMDIR"
if [ "$REBUILD" = 1 ] || [ ! -f "$VMDIR/built" ]; then
  build_image
fi
[ "$BUILD_ONLY" = 1 ] && exit 0

# ---------------------------------------------------------------- the run
[ -x "$BIN" ] || { echo "no Duotone binary at $BIN (cargo build --release, or DUOTONE_BIN)" >&2; exit 1; }
RUN="$VMDIR/run"
rm -rf "$RUN"
mkdir -p "$RUN/in/load"
cp -p "$BIN" "$RUN/in/duotone"   # -p: its build time in the results
cp "$HERE"/*.py "$RUN/in/load/"
{
  printf '#!/bin/bash\nset -u\n'
  printf 'sysctl -q -w fs.nr_open=1048576 fs.file-max=4194304 net.core.somaxconn=65535 '
  printf 'net.ipv4.tcp_max_syn_backlog=65535 net.ipv4.ip_local_port_range="1024 65535"\n'
  printf 'ulimit -n 1048576\n'
  printf 'mkdir -p /results\n'
  printf 'echo "guest: $(uname -r), $(nproc) vCPUs, $(free -m | awk '"'"'/Mem:/ {print $2}'"'"') MiB, nofile $(ulimit -n)" | tee /results/run.log\n'
  printf 'DUOTONE_BIN=/bench/duotone python3 -u /bench/load/idle_conns.py'
  printf ' %q' "${ARGS[@]}" --out /results/run
  printf ' 2>&1 | tee -a /results/run.log\n'
  printf 'echo "idle_conns.py exit ${PIPESTATUS[0]:-?}" | tee -a /results/run.log\n'
  printf 'tar cf /dev/disk/by-id/virtio-benchout -C /results . && sync\n'
} >"$RUN/in/guest.sh"
tar cf "$RUN/in.tar" -C "$RUN/in" .
truncate -s 64M "$RUN/out.img"

log "booting: $VM_ACCEL, -cpu $CPU -smp $SMP -m $MEM, idle_conns.py ${ARGS[*]}; console: $VMDIR/console.log"
: >"$VMDIR/console.log"
# the guest's bench lines (journal+console: "sh[PID]: …") and its troubles
tail -n +1 -f --pid=$$ "$VMDIR/console.log" 2>/dev/null \
  | grep -a --line-buffered -E ' sh\[[0-9]+\]: |ALERT|Kernel panic|emergency' &
set +e
timeout "$TIMEOUT" qemu-system-x86_64 "${ACCEL[@]}" -cpu "$CPU" -smp "$SMP" -m "$MEM" \
  -display none -monitor none -serial "file:$VMDIR/console.log" -no-reboot -nic none \
  -kernel "$VMDIR/vmlinuz" -initrd "$VMDIR/initrd.img" \
  -append "root=LABEL=benchroot rw console=ttyS0 panic=-1 systemd.show_status=0" \
  -drive "file=$VMDIR/root.img,format=raw,if=virtio,snapshot=on" \
  -drive "file=$RUN/in.tar,format=raw,if=none,readonly=on,id=in" \
  -device virtio-blk-pci,drive=in,serial=benchin \
  -drive "file=$RUN/out.img,format=raw,if=none,id=out" \
  -device virtio-blk-pci,drive=out,serial=benchout
QRC=$?
set -e
sleep 1
[ $QRC = 0 ] || log "qemu exited $QRC (124: killed after ${TIMEOUT}s)"

mkdir -p "$RUN/results"
tar xf "$RUN/out.img" -C "$RUN/results" 2>/dev/null && [ -f "$RUN/results/run.log" ] \
  || { log "no results on the output disk (see the console)"; exit 1; }
PREFIX="${OUT:-$VMDIR/out/idle-conns}"
mkdir -p "$(dirname "$PREFIX")"
LOGTO="$PREFIX.log"
[ -n "$OUT" ] && LOGTO="$VMDIR/last-run.log"
cp "$RUN/results/run.log" "$LOGTO"
if [ -f "$RUN/results/run.md" ]; then
  cp "$RUN/results/run.md" "$PREFIX.md"
  cp "$RUN/results/run.json" "$PREFIX.json"
  log "wrote $PREFIX.md and $PREFIX.json (log: $LOGTO)"
else
  log "idle_conns.py wrote no results; log: $LOGTO"
  exit 1
fi
tail -1 "$LOGTO" | grep -q 'exit 0$'
