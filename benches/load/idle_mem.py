#!/usr/bin/env python3
"""Where an idle HTTP/1.1 connection's memory goes in Duotone (#21): starts
Duotone (bench.py's config, 2 workers) in front of the load benchmark's nginx
origin, opens N plain keep-alive connections (5 000), sends one proxied
`GET /` on each and reads the whole response, leaves them idle, and reports
the growth of Duotone's RSS, split as /proc/PID/smaps_rollup splits it
(anonymous memory vs file pages), per connection. A diagnosis tool for one
binary at a time; the side-by-side benchmark against other peers is
idle_conns.py.

  python3 benches/load/idle_mem.py                      # target/release/duotone
  DUOTONE_BIN=/work/bin-main python3 benches/load/idle_mem.py --conns 5000
  python3 benches/load/idle_mem.py --mimalloc-stats     # mimalloc's stats at exit, to stderr

Raises its own fd limit (RLIMIT_NOFILE) to what the connections need; the
hard limit must allow it (`ulimit -Hn`). Standard library only.
"""

import argparse
import os
import resource
import signal
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

REQ = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def rollup(pid):
    """smaps_rollup of one process, in KiB per key."""
    out = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def read_response(s):
    """Reads one response with a Content-Length body; returns the status."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise ConnectionError("closed before the head")
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(rest) < length:
        d = s.recv(65536)
        if not d:
            raise ConnectionError("closed in the body")
        rest += d
    return int(head.split(b" ", 2)[1])


def open_idle(port, n, batch, request=True):
    """n connections, one request each (none without `request`), `batch` at
    a time; returns the sockets."""
    socks = []
    for start in range(0, n, batch):
        group = []
        for _ in range(min(batch, n - start)):
            s = socket.create_connection(("127.0.0.1", port))
            if request:
                s.sendall(REQ)
            group.append(s)
        for s in group if request else ():
            st = read_response(s)
            if st != 200:
                raise RuntimeError("status %d" % st)
        socks.extend(group)
    return socks


def settle(pid, secs=3.0):
    time.sleep(secs)
    return rollup(pid)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=200,
                    help="connections opened and answered at a time (1: one by one)")
    ap.add_argument("--no-request", action="store_true",
                    help="connect only: what an accepted connection costs before any request")
    ap.add_argument("--mimalloc-stats", action="store_true",
                    help="run Duotone with MIMALLOC_SHOW_STATS=1 (printed at exit)")
    a = ap.parse_args()
    need = a.conns + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, bench.on_signal)
    tmp = tempfile.mkdtemp(prefix="idle-mem-")
    try:
        cert, key, www = bench.fixtures(tmp)
        oport = bench.free_port()
        ocmd, _ = bench.make_origin(tmp, oport)
        origin = bench.spawn(ocmd, os.path.join(tmp, "origin.log"))
        ports = {k: bench.free_port() for k in ("http", "https", "admin")}
        cmd, _ = bench.make_duotone(tmp, ports, oport, www, cert, key)
        env = dict(os.environ)
        if a.mimalloc_stats:
            env["MIMALLOC_SHOW_STATS"] = "1"
        log = os.path.join(tmp, "duotone.log")
        proc = bench.spawn(cmd, log, env=env)
        err = bench.wait_ready(proc, ports["http"])
        if err:
            sys.exit("duotone: %s\n%s" % (err, bench.tail(log)))
        # warm: one request on each worker's upstream pool, then settle
        for _ in range(8):
            bench.fetch("http", ports["http"], "/")
        before = settle(proc.pid)
        t0 = time.monotonic()
        socks = open_idle(ports["http"], a.conns, a.batch, not a.no_request)
        opened = time.monotonic() - t0
        after = settle(proc.pid)
        n = len(socks)
        what = "connected, no request" if a.no_request else "one request each"
        print("duotone %s: %d idle HTTP/1.1 keep-alive connections (%s, %d at a time, %.1f s)"
              % (bench.duotone_bin(), n, what, a.batch, opened))
        for k in ("Rss", "Anonymous", "Private_Dirty", "Pss_File"):
            b, f = before.get(k, 0), after.get(k, 0)
            print("  %-14s before %8d KiB  after %8d KiB  per connection %6.2f KiB"
                  % (k, b, f, (f - b) / n))
        for s in socks:
            s.close()
        closed = settle(proc.pid)
        print("  Rss after closing them all: %d KiB" % closed.get("Rss", 0))
        bench.stop(proc)
        if a.mimalloc_stats:
            sys.stderr.write(bench.tail(log, 200) + "\n")
        bench.stop(origin)
    finally:
        bench.stop_all()


if __name__ == "__main__":
    main()
