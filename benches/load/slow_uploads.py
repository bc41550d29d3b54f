#!/usr/bin/env python3
"""Memory under slow uploaders: each proxy (Duotone and nginx by default)
in front of one upstream while N clients (200) each upload a body (1 MiB)
slowly, in chunks (64 KiB) with a pause between them (0.25 s). Reports per
proxy its peak RSS (VmHWM over all its processes, reset before the run), the
peak of its temp files (regular files it holds open under its temp dirs,
unlinked ones included: nginx's client_body_temp, Duotone's O_TMPFILE
buffers), their sum, how many uploads succeeded, and how long plain GETs sent
meanwhile took.

  python3 benches/load/slow_uploads.py                       # duotone and nginx, 200 clients
  python3 benches/load/slow_uploads.py --peers duotone --clients 50 --pause 0.1
  python3 benches/load/slow_uploads.py --upstream gunicorn   # gunicorn, 2 sync workers
  python3 benches/load/slow_uploads.py --out benches/results/slow-uploads   # also .md and .json

The upstream is the load benchmark's nginx origin by default (its /upload
reads the whole body, then answers), or gunicorn with 2 sync workers running
tests/apps/edge_app.py (`--upstream gunicorn`; the python from
DUOTONE_TEST_PYTHON, `--python`, or target/py-venv). A proxy that does not
buffer request bodies ties up gunicorn's workers: uploads then wait their
turn (bounded by `--timeout`, counted as failed). Standard library only;
the proxies' configs are bench.py's (same settings as the load benchmark).
Duotone is target/release/duotone, or DUOTONE_BIN.
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the load benchmark: configs, process bookkeeping, /proc)

ROOT = bench.ROOT
APP = os.path.join(ROOT, "tests", "apps")


def parse_size(v):
    v = v.strip()
    for suffix, mult in (("KiB", 1 << 10), ("MiB", 1 << 20), ("k", 1 << 10), ("m", 1 << 20)):
        if v.endswith(suffix):
            return int(float(v[: -len(suffix)]) * mult)
    return int(v)


# --------------------------------------------------------------------------
# what a proxy holds: RSS and temp files

def temp_bytes(root_pid, temp_roots):
    """Bytes of the regular files the process tree holds open under
    temp_roots (unlinked ones too), each file counted once."""
    seen, total = set(), 0
    for pid in bench.tree(root_pid):
        fd_dir = "/proc/%d/fd" % pid
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            path = os.path.join(fd_dir, fd)
            try:
                target = os.readlink(path)
            except OSError:
                continue
            name = target[: -len(" (deleted)")] if target.endswith(" (deleted)") else target
            if not any(name.startswith(r) for r in temp_roots):
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen or not (st.st_mode & 0o170000) == 0o100000:
                continue
            seen.add(key)
            total += st.st_size
    return total


class Sampler(threading.Thread):
    """Samples the proxy's RSS and temp files every `every` seconds."""

    def __init__(self, pid, temp_roots, every=0.05):
        super().__init__(daemon=True)
        self.pid, self.roots, self.every = pid, temp_roots, every
        self.peak_rss_kb = 0
        self.peak_temp = 0
        self.peak_sum_kb = 0
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            rss = bench.rss_kb(self.pid)
            tmp = temp_bytes(self.pid, self.roots) if self.roots else 0
            self.peak_rss_kb = max(self.peak_rss_kb, rss)
            self.peak_temp = max(self.peak_temp, tmp)
            self.peak_sum_kb = max(self.peak_sum_kb, rss + tmp // 1024)
            self.halt.wait(self.every)


# --------------------------------------------------------------------------
# clients

async def slow_upload(port, size, chunk, pause, timeout):
    """One client: head, then `size` bytes in `chunk`s with `pause` between
    them, then the response's status. Returns (status or None, seconds, error)."""
    t0 = time.monotonic()
    piece = b"u" * chunk
    try:
        async def run():
            r, w = await asyncio.open_connection("127.0.0.1", port)
            try:
                w.write(b"POST /upload HTTP/1.1\r\nHost: bench\r\nContent-Type: "
                        b"application/octet-stream\r\nContent-Length: %d\r\n\r\n" % size)
                left = size
                while left > 0:
                    n = min(left, chunk)
                    w.write(piece[:n])
                    await w.drain()
                    left -= n
                    if left > 0 and pause > 0:
                        await asyncio.sleep(pause)
                line = await r.readline()
                parts = line.split()
                status = int(parts[1]) if len(parts) > 1 else None
                # the rest of the head and a short body
                length = 0
                while True:
                    h = await r.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    if h.lower().startswith(b"content-length:"):
                        length = int(h.split(b":", 1)[1])
                if length:
                    await r.readexactly(length)
                return status
            finally:
                w.close()
        status = await asyncio.wait_for(run(), timeout)
        return status, time.monotonic() - t0, None
    except Exception as e:  # a failed upload is a result, not a crash
        return None, time.monotonic() - t0, "%s: %s" % (type(e).__name__, e)


async def plain_gets(port, stop, every=0.1, timeout=10.0):
    """GET / on a new connection every `every` seconds until `stop` is set;
    returns the durations (None for a failure)."""
    out = []
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            async def one():
                r, w = await asyncio.open_connection("127.0.0.1", port)
                try:
                    w.write(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    await w.drain()
                    line = await r.readline()
                    await r.read()
                    return line.split()[1] == b"200"
                finally:
                    w.close()
            ok = await asyncio.wait_for(one(), timeout)
            out.append(time.monotonic() - t0 if ok else None)
        except Exception:
            out.append(None)
        await asyncio.sleep(every)
    return out


async def drive(port, a):
    stop = asyncio.Event()
    gets = asyncio.ensure_future(plain_gets(port, stop))
    t0 = time.monotonic()
    results = await asyncio.gather(*(slow_upload(port, a.size, a.chunk, a.pause, a.timeout)
                                     for _ in range(a.clients)))
    wall = time.monotonic() - t0
    stop.set()
    return results, await gets, wall


# --------------------------------------------------------------------------
# upstreams and proxies

def gunicorn_python(a):
    for p in (a.python, os.environ.get("DUOTONE_TEST_PYTHON"),
              os.path.join(ROOT, "target", "py-venv", "bin", "python")):
        if p and os.access(p, os.X_OK):
            return p
    sys.exit("--upstream gunicorn: no python with gunicorn (--python, DUOTONE_TEST_PYTHON, or "
             "target/py-venv from ./dev test)")


def start_upstream(tmp, a):
    port = bench.free_port()
    if a.upstream == "gunicorn":
        cmd = [gunicorn_python(a), "-m", "gunicorn", "--worker-class", "sync", "--workers", "2",
               "--bind", "127.0.0.1:%d" % port, "--timeout", "300", "--chdir", APP,
               "edge_app:application"]
        p = bench.spawn(cmd, os.path.join(tmp, "gunicorn.out"),
                        env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    else:
        cmd, env = bench.make_origin(tmp, port)
        p = bench.spawn(cmd, os.path.join(tmp, "origin.out"), env=env)
    err = bench.wait_ready(p, port, 30)
    if err:
        sys.exit("upstream %s failed: %s\n%s" % (a.upstream, err,
                                                  bench.tail(os.path.join(tmp, "gunicorn.out"))
                                                  + bench.tail(os.path.join(tmp, "origin-error.log"))))
    return p, port


def temp_roots(tmp, peer):
    return {"nginx": [os.path.join(tmp, "nginx-tmp") + "/"],
            "duotone": [os.path.join(tmp, "duotone-state") + "/"]}.get(peer, [])


def run_peer(tmp, peer, upstream_port, cert, key, www, a):
    ports = {"http": bench.free_port(), "https": bench.free_port(), "admin": bench.free_port()}
    cmd, env = bench.MAKERS[peer](tmp, ports, upstream_port, www, cert, key)
    outp = os.path.join(tmp, peer + ".out")
    p = bench.spawn(cmd, outp, env=env)
    err = bench.wait_ready(p, ports["http"])
    if err:
        bench.stop(p)
        return {"peer": peer, "error": "failed to start: %s %s" % (err, bench.tail(outp))}
    time.sleep(0.5)
    idle_kb = bench.rss_kb(p.pid)
    bench.reset_hwm(p.pid)
    sampler = Sampler(p.pid, temp_roots(tmp, peer))
    sampler.start()
    results, gets, wall = asyncio.run(drive(ports["http"], a))
    sampler.halt.set()
    sampler.join()
    hwm_kb = bench.rss_kb(p.pid, "VmHWM")
    bench.stop(p)
    ok = sum(1 for s, _, _ in results if s == 200)
    errors = [e or "status %s" % s for s, _, e in results if s != 200]
    durations = sorted(d for s, d, _ in results if s == 200)
    get_ok = sorted(g for g in gets if g is not None)
    return {
        "peer": peer,
        "clients": a.clients,
        "ok": ok,
        "failed": a.clients - ok,
        "failures": sorted(set(errors))[:5],
        "wall_s": round(wall, 2),
        "upload_p50_s": round(statistics.median(durations), 2) if durations else None,
        "upload_max_s": round(durations[-1], 2) if durations else None,
        "idle_rss_mib": round(idle_kb / 1024, 1),
        "peak_rss_mib": round(max(hwm_kb, sampler.peak_rss_kb) / 1024, 1),
        "peak_temp_mib": round(sampler.peak_temp / (1 << 20), 1),
        "peak_rss_plus_temp_mib": round(sampler.peak_sum_kb / 1024, 1),
        "gets": len(gets),
        "gets_failed": sum(1 for g in gets if g is None),
        "get_p50_ms": round(statistics.median(get_ok) * 1e3, 1) if get_ok else None,
        "get_max_ms": round(get_ok[-1] * 1e3, 1) if get_ok else None,
    }


def render(rows, a, machine):
    L = ["# Memory under slow uploaders", "",
         "%s · %d cores · %s" % (machine["date"], machine["nproc"], machine["cpu"]), "",
         "%d clients at once, each uploading %d KiB in %d KiB chunks %.2f s apart, to %s; "
         "plain GETs on new connections every 0.1 s meanwhile. Peak RSS = VmHWM of all the "
         "proxy's processes (reset before the run) or the highest sample; temp = regular files "
         "it holds open under its temp dirs, unlinked ones included (sampled every 50 ms); "
         "RSS + temp = the highest sum of one sample." % (
             a.clients, a.size // 1024, a.chunk // 1024, a.pause,
             "gunicorn (2 sync workers)" if a.upstream == "gunicorn" else "the nginx origin"),
         "",
         "| proxy | uploads ok | failed | wall s | upload p50 / max s | idle RSS MiB | peak RSS MiB "
         "| peak temp MiB | RSS + temp MiB | GET p50 / max ms | GETs failed |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            L.append("| %s | %s | | | | | | | | | |" % (r["peer"], r["error"][:200]))
            continue
        L.append("| %s | %d | %d | %.1f | %s / %s | %.1f | %.1f | %.1f | %.1f | %s / %s | %d |" % (
            r["peer"], r["ok"], r["failed"], r["wall_s"], r["upload_p50_s"], r["upload_max_s"],
            r["idle_rss_mib"], r["peak_rss_mib"], r["peak_temp_mib"], r["peak_rss_plus_temp_mib"],
            r["get_p50_ms"], r["get_max_ms"], r["gets_failed"]))
    for r in rows:
        if r.get("failures"):
            L.append("")
            L.append("%s failures (first kinds): %s" % (r["peer"], "; ".join(r["failures"])))
    L.append("")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers", default="duotone,nginx", help="comma list (default duotone,nginx)")
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--size", type=parse_size, default=1 << 20, help="body per client (1MiB)")
    ap.add_argument("--chunk", type=parse_size, default=64 << 10, help="chunk (64KiB)")
    ap.add_argument("--pause", type=float, default=0.25, help="seconds between chunks (0.25)")
    ap.add_argument("--quick", action="store_true", help="pause 0.05 s (≈1 s per upload)")
    ap.add_argument("--timeout", type=float, default=120.0, help="limit per upload, seconds")
    ap.add_argument("--upstream", choices=("nginx", "gunicorn"), default="nginx")
    ap.add_argument("--python", default=None, help="python with gunicorn (--upstream gunicorn)")
    ap.add_argument("--out", default=None, help="write PREFIX.md and PREFIX.json too")
    a = ap.parse_args()
    if a.quick:
        a.pause = 0.05
    peers = [p.strip() for p in a.peers.split(",") if p.strip()]
    for p in peers:
        if p not in bench.MAKERS:
            ap.error("unknown peer %r (known: %s)" % (p, ",".join(bench.MAKERS)))
    if not shutil.which("nginx"):
        sys.exit("nginx is missing: run benches/load/run.sh once (it installs it)")
    if "duotone" in peers and not os.access(bench.duotone_bin(), os.X_OK):
        sys.exit("no Duotone binary at %s (cargo build --release -p duotone, or DUOTONE_BIN)"
                 % bench.duotone_bin())

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, bench.on_signal)
    tmp = tempfile.mkdtemp(prefix="duotone-slow-uploads-")
    os.chmod(tmp, 0o755)  # nginx workers run as nobody
    try:
        cert, key, www = bench.fixtures(tmp)
        upstream, port = start_upstream(tmp, a)
        bench.log("upstream %s on 127.0.0.1:%d" % (a.upstream, port))
        rows = []
        for peer in peers:
            bench.log("%s: %d slow uploaders…" % (peer, a.clients))
            r = run_peer(tmp, peer, port, cert, key, www, a)
            bench.log("  %s" % json.dumps(r))
            rows.append(r)
        bench.stop(upstream)
    finally:
        bench.stop_all()
        shutil.rmtree(tmp, True)
    m = bench.machine()
    md = render(rows, a, m)
    print(md)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        bench.write(a.out + ".md", md)
        with open(a.out + ".json", "w") as f:
            json.dump({"machine": m, "settings": {k: v for k, v in vars(a).items()},
                       "results": rows}, f, indent=1)
        bench.log("wrote %s.md and %s.json" % (a.out, a.out))
    return 0 if all(r.get("failed") == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
