#!/usr/bin/env python3
"""Memory per idle connection: each proxy (Duotone, nginx, HAProxy; Caddy and
Traefik too when their binaries are found) in front of the load benchmark's
nginx origin, with the load benchmark's configs (2 workers each). For each
connection kind the proxy is started afresh, warmed up (a few connections of
that kind, one request each, closed), its RSS read, then N connections
(5 000) are opened from this script, each sends one request through the proxy
and reads the whole answer, and all stay open, idle. The proxy's RSS is read
again; the growth divided by N is the memory of one idle connection.

Connection kinds:
  h1     HTTP/1.1 keep-alive on the plain port, after one proxied GET /
  https  HTTP/1.1 keep-alive over TLS (ALPN http/1.1), after one proxied GET /
  h2     HTTP/2 over TLS (ALPN h2), after one proxied GET / on stream 1
         (preface, an empty SETTINGS, one HEADERS frame; SETTINGS acknowledged)
  h1-chunked
         HTTP/1.1 keep-alive on the plain port, after one proxied POST / with a
         chunked (empty) body: Duotone serves it on Pingora's path, not its
         lane, and the connection stays there

  python3 benches/load/idle_conns.py                         # all peers, 5 000 per kind
  python3 benches/load/idle_conns.py --peers duotone,nginx --conns 1000 --kinds h1
  python3 benches/load/idle_conns.py --out benches/results/idle-conns   # also .md and .json

RSS is VmRSS summed over all the proxy's processes (nginx's master and
workers, etc.), read three times 0.3 s apart once the connections are open
and have been idle for --settle seconds (6 s: past Duotone's 1 s lane grace,
its parking and a purge of the allocator's freed pages; nginx and HAProxy
read the same either way), median. The proxy's own count of open sockets (entries of
/proc/PID/fd that are sockets, over its processes) is reported beside it, so a
proxy that closed or refused connections shows it. Upstream connections the
proxy keeps in its pool are part of what it holds, and so of the figure.

File descriptors: the script raises its own RLIMIT_NOFILE to 2 N + 4 096
(past the hard limit only as root; otherwise soft to hard) and the proxies it
starts inherit it. Past 20 000 connections the client's source addresses
cycle through 127.0.0.2, 127.0.0.3, … (one address has 28 232 ephemeral ports
towards one port), so 50 000 can be held on one machine.
Where the hard file limit is lower than 2 N + 4 096 and cannot be raised (a
container without CAP_SYS_RESOURCE: this project's machine has 20 000),
benches/load/vm.sh runs this script in a Debian bookworm virtual machine
(QEMU; KVM, or software emulation where /dev/kvm cannot boot a stock kernel)
whose kernel and limits are its own, with 50 000 connections by default:
`benches/load/vm.sh --out benches/results/idle-conns-50k`, options for this
script after `--`. Memory figures do not depend on the VM's speed; open_s
does (software emulation is 10 to 20 times slower).

nginx's worker_connections and HAProxy's maxconn in the load benchmark's
configs (4 096) are raised here: nginx's to 2 N + 1 024 (one worker could
hold every connection and an upstream one each), HAProxy's to N + 1 024 (it
counts client connections and sets its own file limit to about twice that,
which must stay under the hard limit), and Duotone's `[limits]
max_connections` (default 10 000) to N + 1 024 and its keepalive_timeout
(default 75 s) to 300 s, as nginx's and HAProxy's are here (18 000 HTTP/2
connections take longer than 75 s to open; --keepalive sets all three, and
HAProxy's client timeout of 60 s, which ends an idle connection too, where
opening N takes longer still); nothing else in the configs changes. A
connection the proxy closed before the reading counts as failed.
For Duotone in production: `max_connections` ([limits], default 10 000) and
the process's file limit, which must be above it: systemd `LimitNOFILE=`
(deploy/duotone.service sets 1048576), Docker Compose `ulimits: nofile:`
(deploy/docker-compose.yml sets 65536, DUOTONE_NOFILE), `docker run --ulimit
nofile=65536:65536`, or `ulimit -n` in the shell that starts it.

Standard library only (asyncio, ssl). Duotone is target/release/duotone, or
DUOTONE_BIN; Caddy and Traefik as bench.py finds them (CADDY_BIN, TRAEFIK_BIN,
benches/load/.venv).
"""

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import statistics
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the load benchmark: configs, process bookkeeping, /proc)

KINDS = ["h1", "https", "h2", "h1-chunked"]
KIND_NAMES = {"h1": "HTTP/1.1 keep-alive", "https": "HTTPS keep-alive (HTTP/1.1)",
              "h1-chunked": "HTTP/1.1 keep-alive after a chunked POST",
              "h2": "HTTP/2 over TLS"}
DEFAULT_PEERS = ["duotone", "nginx", "haproxy", "caddy", "traefik"]
REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: idle-conns\r\n\r\n"
CHUNKED_POST = (b"POST / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: idle-conns\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
PLAIN = ("h1", "h1-chunked")


# --------------------------------------------------------------------------
# HTTP/2 by hand: enough for one GET

def h2_frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(
        ">I", stream) + payload


# HPACK: :method GET (2), :scheme https (7), :path / (4), all indexed;
# :authority (name index 1) as a literal without indexing, no Huffman.
H2_HEADERS = bytes([0x82, 0x87, 0x84, 0x01, 9]) + b"localhost"
H2_HELLO = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0)
            + h2_frame(1, 0x05, 1, H2_HEADERS))  # END_STREAM | END_HEADERS
H2_SETTINGS_ACK = h2_frame(4, 0x01, 0)


async def h2_get(r, w):
    """Sends the preface and one GET on stream 1; reads frames until stream 1
    ends. Returns the status (200 when the first header is HPACK index 8)."""
    w.write(H2_HELLO)
    await w.drain()
    status = None
    while True:
        head = await r.readexactly(9)
        length = int.from_bytes(head[:3], "big")
        kind, flags = head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        payload = await r.readexactly(length) if length else b""
        if kind == 4 and not flags & 0x01:  # SETTINGS: acknowledge
            w.write(H2_SETTINGS_ACK)
            await w.drain()
        elif kind == 7:  # GOAWAY
            raise ConnectionError("GOAWAY %r" % payload[:16])
        elif kind == 3 and stream == 1:
            raise ConnectionError("RST_STREAM on stream 1")
        elif kind == 1 and stream == 1 and status is None:
            block = payload
            if flags & 0x08:  # PADDED
                block = block[1:len(block) - block[0]]
            if flags & 0x20:  # PRIORITY
                block = block[5:]
            status = 200 if block[:1] == b"\x88" else -1
        if stream == 1 and kind in (0, 1) and flags & 0x01:  # END_STREAM
            return status


async def h1_get(r, w, request=REQUEST):
    """One request (GET / unless told) on a keep-alive connection; reads the
    whole answer. Returns the status."""
    w.write(request)
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length, chunked = 0, False
    for line in lines[1:]:
        k, _, v = line.partition(":")
        k = k.strip().lower()
        if k == "content-length":
            length = int(v)
        elif k == "transfer-encoding" and "chunked" in v.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await r.readline()).split(b";")[0], 16)
            await r.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await r.readexactly(length)
    return status


# The client's own memory: asyncio's TLS transport (Python 3.11 and later)
# gives every connection a 256 KiB read buffer (SSLProtocol.max_size), 12.5 GiB
# for 50 000 connections; 16 KiB (one TLS record) reads the same answers.
if hasattr(asyncio.sslproto.SSLProtocol, "max_size"):
    asyncio.sslproto.SSLProtocol.max_size = 16 * 1024


def client_ctx(kind):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"] if kind == "h2" else ["http/1.1"])
    return ctx


# One source address holds at most the ephemeral port range (32768-60999 by
# default: 28 232) towards one port; connections past PER_SOURCE come from
# 127.0.0.2, 127.0.0.3, … (all of 127/8 is loopback on Linux).
PER_SOURCE = 20000
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


async def open_one(kind, ports, ctx, timeout, i=0):
    """Opens one connection of `kind` (the i-th: its source address),
    makes one request, returns (reader, writer) still open, or raises."""
    async def run():
        port = ports["http"] if kind in PLAIN else ports["https"]
        tls = {} if kind in PLAIN else {"ssl": ctx, "server_hostname": "localhost"}
        if i < PER_SOURCE:
            r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16, **tls)
        else:
            # the port chosen at connect(), as for an unbound socket (a port in
            # TIME_WAIT towards another peer stays usable)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind(("127.0.0.%d" % (1 + i // PER_SOURCE), 0))
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            except BaseException:
                sock.close()
                raise
            r, w = await asyncio.open_connection(sock=sock, limit=1 << 16, **tls)
        if kind not in PLAIN:
            alpn = w.get_extra_info("ssl_object").selected_alpn_protocol()
            if alpn != ("h2" if kind == "h2" else "http/1.1") and not (
                    kind == "https" and alpn is None):
                w.close()
                raise ConnectionError("ALPN %r for %s" % (alpn, kind))
        try:
            if kind == "h2":
                status = await h2_get(r, w)
            else:
                status = await h1_get(r, w, CHUNKED_POST if kind == "h1-chunked" else REQUEST)
        except BaseException:
            w.close()
            raise
        if status != 200:
            w.close()
            raise ConnectionError("status %s" % status)
        return r, w
    return await asyncio.wait_for(run(), timeout)


async def open_many(kind, ports, n, parallel, timeout):
    """Opens n connections of `kind` (at most `parallel` being set up at
    once). Returns (held connections, errors)."""
    ctx = client_ctx(kind) if kind not in PLAIN else None
    sem = asyncio.Semaphore(parallel)
    held, errors = [], []

    async def one(i):
        async with sem:
            try:
                held.append(await open_one(kind, ports, ctx, timeout, i))
            except Exception as e:  # a failed connection is a result, not a crash
                errors.append("%s: %s" % (type(e).__name__, e))
    await asyncio.gather(*(one(i) for i in range(n)))
    return held, errors


async def close_all(held):
    for _, w in held:
        w.close()
    for _, w in held:
        try:
            await asyncio.wait_for(w.wait_closed(), 2)
        except Exception:
            pass


# --------------------------------------------------------------------------
# the proxy's side

def sockets(root):
    """Open sockets over the process tree of `root`."""
    n = 0
    for pid in bench.tree(root):
        d = "/proc/%d/fd" % pid
        try:
            fds = os.listdir(d)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(os.path.join(d, fd)).startswith("socket:"):
                    n += 1
            except OSError:
                pass
    return n


def rss_settled(pid, samples=3, every=0.3):
    xs = []
    for i in range(samples):
        if i:
            time.sleep(every)
        xs.append(bench.rss_kb(pid))
    return statistics.median(xs)


def raise_limits(cfg_dir, peer, n, keepalive=300):
    """Raises the connection limits of the load benchmark's configs (4 096):
    nginx's worker_connections (client and upstream connections of one
    worker) to 2 n + 1 024, as one worker may end up holding every
    connection; HAProxy's maxconn (client connections; it sets its file limit
    to about twice that) to n + 1 024. Duotone's `max_connections` (default
    10 000; past it connections are closed at once) likewise, as a
    [limits] table appended to its config. Keep-alive timeouts: 300 s (the
    load benchmark's for nginx and HAProxy), or `keepalive` seconds for all
    three when opening N connections takes longer (a slow VM); HAProxy's
    client timeout (60 s), which also ends an idle connection, likewise."""
    if peer == "duotone":
        path = os.path.join(cfg_dir, "duotone.toml")
        text = open(path).read()
        if "[limits]" in text:
            sys.exit("%s: already has [limits] (bench.py's config changed?)" % path)
        # keep-alive 300 s (default 75 s) as nginx's and HAProxy's here: at
        # 18 000 connections the first ones are older than 75 s at the reading
        bench.write(path, text + "\n[limits]\nmax_connections = %d\nkeepalive_timeout = \"%ds\"\n"
                    % (n + 1024, keepalive))
        return
    for name, old, new, want in (
            ("nginx.conf", "worker_connections 4096;", "worker_connections %d;", 2 * n + 1024),
            ("nginx.conf", "keepalive_timeout 300s;", "keepalive_timeout %ds;", keepalive),
            ("haproxy.cfg", "maxconn 4096", "maxconn %d", n + 1024),
            ("haproxy.cfg", "timeout http-keep-alive 300s", "timeout http-keep-alive %ds",
             keepalive),
            # HAProxy closes an idle client connection at the first of its
            # keep-alive and client timeouts (60 s here)
            ("haproxy.cfg", "timeout client 60s", "timeout client %ds",
             max(keepalive, 60))):
        path = os.path.join(cfg_dir, name)
        if peer in name and os.path.exists(path):
            text = open(path).read()
            if old not in text:
                sys.exit("%s: %r not found (bench.py's config changed?)" % (path, old))
            bench.write(path, text.replace(old, new % want))


def available(peer):
    if peer == "duotone":
        return os.access(bench.duotone_bin(), os.X_OK)
    if peer in ("caddy", "traefik"):
        t = bench.tool(peer)
        return os.path.isabs(t) and os.access(t, os.X_OK) or bool(shutil.which(t))
    return bool(shutil.which(peer))


def measure(tmp, peer, kind, origin_port, cert, key, www, a):
    d = tempfile.mkdtemp(prefix="%s-%s-" % (peer, kind), dir=tmp)
    os.chmod(d, 0o755)
    ports = {"http": bench.free_port(), "https": bench.free_port(), "admin": bench.free_port()}
    cmd, env = bench.MAKERS[peer](d, ports, origin_port, www, cert, key)
    raise_limits(d, peer, a.conns, a.keepalive)
    outp = os.path.join(d, peer + ".out")
    p = bench.spawn(cmd, outp, env=env)
    row = {"peer": peer, "kind": kind, "conns": a.conns}
    try:
        err = bench.wait_ready(p, ports["http"])
        if err:
            row["error"] = "failed to start: %s %s" % (err, bench.tail(outp))
            return row
        # warm up: TLS state, upstream pool, allocator arenas of the first requests
        async def warm_up():
            held, errors = await open_many(kind, ports, a.warmup, 8, a.timeout)
            await close_all(held)
            return errors
        werr = asyncio.run(warm_up())
        if werr:
            row["error"] = "warm-up failed: %s" % "; ".join(sorted(set(werr))[:3])
            return row
        time.sleep(1.0)
        before_kb = rss_settled(p.pid)
        socks_before = sockets(p.pid)

        async def hold():
            t0 = time.monotonic()
            held, errors = await open_many(kind, ports, a.conns, a.parallel, a.timeout)
            opened_s = time.monotonic() - t0
            await asyncio.sleep(a.settle)
            after = rss_settled(p.pid)
            socks = sockets(p.pid)
            # are they all still open? a closed one reads EOF at once
            alive = 0
            for r, _ in held:
                if not r.at_eof() and r.exception() is None:
                    alive += 1
            await close_all(held)
            return held, errors, opened_s, after, socks, alive
        held, errors, opened_s, after_kb, socks_after, alive = asyncio.run(hold())
        ok = len(held)
        row.update({
            "opened": ok,
            # a connection the proxy closed before the reading failed too
            "closed_early": ok - alive,
            "failed": a.conns - alive,
            "failures": sorted(set(errors))[:5] + (
                ["%d closed by the proxy before the reading" % (ok - alive)] if ok > alive else []),
            "alive_at_reading": alive,
            "open_s": round(opened_s, 1),
            "rss_before_mib": round(before_kb / 1024, 1),
            "rss_after_mib": round(after_kb / 1024, 1),
            "kib_per_conn": round((after_kb - before_kb) / ok, 2) if ok else None,
            "proxy_sockets_before": socks_before,
            "proxy_sockets_after": socks_after,
        })
        return row
    finally:
        bench.stop(p)


def summarize(rows, peers, kinds):
    """Median KiB per connection of each (peer, kind) over the rounds."""
    out = {}
    for peer in peers:
        for kind in kinds:
            rs = [r for r in rows if r["peer"] == peer and r["kind"] == kind]
            good = [r for r in rs if r.get("kib_per_conn") is not None and not r.get("failed")]
            out[(peer, kind)] = {
                "kib": statistics.median(r["kib_per_conn"] for r in good) if good else None,
                "all": [r.get("kib_per_conn") for r in rs],
                "before": statistics.median(r["rss_before_mib"] for r in good) if good else None,
                "after": statistics.median(r["rss_after_mib"] for r in good) if good else None,
                "errors": [r.get("error") or ("%d of %d failed: %s" % (
                    r["failed"], r["conns"], "; ".join(r["failures"]))) for r in rs
                    if r.get("error") or r.get("failed")],
            }
    return out


def render(rows, peers, kinds, a, machine):
    s = summarize(rows, peers, kinds)
    L = ["# Memory per idle connection", "",
         "%s · %d cores · %s · Duotone: %s" % (machine["date"], machine["nproc"], machine["cpu"],
                                               machine["versions"].get("duotone", "?")), "",
         "%d connections of each kind held open and idle, each after one request proxied to "
         "the nginx origin (GET /, 100 B); the proxy started afresh for each kind and warmed up "
         "with %d connections first. KiB per connection = growth of the proxy's RSS (VmRSS of all "
         "its processes, median of 3 readings) / connections; the load benchmark's configs, 2 "
         "workers each, connection limits raised (nginx worker_connections %d, HAProxy maxconn and Duotone max_connections %d). %d round(s), median shown; every "
         "round's figure in the JSON." % (a.conns, a.warmup, 2 * a.conns + 1024, a.conns + 1024, a.rounds), "",
         "| proxy | " + " | ".join("%s KiB/conn (×nginx)" % KIND_NAMES[k] for k in kinds)
         + " | " + " | ".join("%s RSS MiB before → after" % k for k in kinds) + " |",
         "|---|" + "---:|" * (2 * len(kinds))]
    for peer in peers:
        cells, rss = [], []
        for k in kinds:
            v, n = s[(peer, k)], s.get(("nginx", k), {}).get("kib")
            if v["kib"] is None:
                cells.append("–")
                rss.append("–")
                continue
            ratio = " (%.1f×)" % (v["kib"] / n) if n and n > 0 and peer != "nginx" else ""
            cells.append("%.1f%s" % (v["kib"], ratio))
            rss.append("%.1f → %.1f" % (v["before"], v["after"]))
        L.append("| %s | %s | %s |" % (peer, " | ".join(cells), " | ".join(rss)))
    notes = []
    for peer in peers:
        for k in kinds:
            for e in s[(peer, k)]["errors"]:
                notes.append("- %s %s: %s" % (peer, k, e[:300]))
    if notes:
        L += ["", "Failures:"] + notes
    L += ["", "Per round (KiB/conn): " + "; ".join(
        "%s %s %s" % (peer, k, "/".join("%s" % x for x in s[(peer, k)]["all"]))
        for peer in peers for k in kinds), ""]
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers", default=None,
                    help="comma list (default: duotone,nginx,haproxy and caddy,traefik if found)")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma list of h1,https,h2,h1-chunked")
    ap.add_argument("--conns", type=int, default=5000, help="idle connections per kind (5000)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds (median reported)")
    ap.add_argument("--quick", action="store_true", help="1 000 connections")
    ap.add_argument("--warmup", type=int, default=50, help="connections before the baseline")
    ap.add_argument("--parallel", type=int, default=64, help="connections being opened at once")
    ap.add_argument("--settle", type=float, default=6.0,
                    help="seconds idle before reading RSS (default 6)")
    ap.add_argument("--timeout", type=float, default=30.0, help="limit per connection's setup")
    ap.add_argument("--keepalive", type=int, default=300,
                    help="keep-alive timeout of every proxy, seconds (300; longer when opening "
                    "N takes longer, as in a slow VM)")
    ap.add_argument("--out", default=None, help="write PREFIX.md and PREFIX.json too")
    ap.add_argument("--latest", default=None,
                    help="also put the table in this markdown file as its `## idle-conns` section")
    a = ap.parse_args()
    if a.quick:
        a.conns = 1000
    kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    for k in kinds:
        if k not in KINDS:
            ap.error("unknown kind %r (known: %s)" % (k, ",".join(KINDS)))
    if a.peers:
        peers = [p.strip() for p in a.peers.split(",") if p.strip()]
        for p in peers:
            if p not in bench.MAKERS:
                ap.error("unknown peer %r (known: %s)" % (p, ",".join(bench.MAKERS)))
            if not available(p):
                sys.exit("%s: no binary (run benches/load/run.sh once; Duotone: DUOTONE_BIN)" % p)
    else:
        peers = [p for p in DEFAULT_PEERS if available(p)]
        skipped = [p for p in DEFAULT_PEERS if p not in peers]
        if skipped:
            bench.log("skipped (no binary): %s" % ", ".join(skipped))
    if not shutil.which("nginx"):
        sys.exit("nginx is missing (the origin): run benches/load/run.sh once (it installs it)")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # the proxies inherit it: nginx (one worker may hold every connection and
    # an upstream one each) and HAProxy (twice its maxconn) need about 2 N
    need = 2 * a.conns + 4096
    if soft < need:
        try:  # above the hard limit only as root (CAP_SYS_RESOURCE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(need, hard), max(need, hard)))
        except (ValueError, OSError):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            except (ValueError, OSError):
                pass
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft < a.conns + 1024:  # this script's own need
            sys.exit("RLIMIT_NOFILE is %d, %d needed (raise the hard limit: ulimit -Hn, "
                     "LimitNOFILE=, docker --ulimit nofile=)" % (soft, need))
        if soft < need:
            bench.log("warning: RLIMIT_NOFILE %d, under the %d the proxies may need" % (soft, need))

    for sg in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sg, bench.on_signal)
    tmp = tempfile.mkdtemp(prefix="duotone-idle-conns-")
    os.chmod(tmp, 0o755)  # nginx workers run as nobody
    rows = []
    try:
        cert, key, www = bench.fixtures(tmp)
        oport = bench.free_port()
        ocmd, oenv = bench.make_origin(tmp, oport)
        origin = bench.spawn(ocmd, os.path.join(tmp, "origin.out"), env=oenv)
        err = bench.wait_ready(origin, oport, 30)
        if err:
            sys.exit("origin failed: %s %s" % (err, bench.tail(os.path.join(tmp, "origin-error.log"))))
        for rnd in range(a.rounds):
            for peer in peers:
                for kind in kinds:
                    bench.log("round %d: %s %s, %d connections…" % (rnd + 1, peer, kind, a.conns))
                    r = measure(tmp, peer, kind, oport, cert, key, www, a)
                    r["round"] = rnd + 1
                    bench.log("  %s" % json.dumps(r))
                    rows.append(r)
        bench.stop(origin)
    finally:
        bench.stop_all()
        shutil.rmtree(tmp, True)
    m = bench.machine()
    md = render(rows, peers, kinds, a, m)
    print(md)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        bench.write(a.out + ".md", md)
        s = summarize(rows, peers, kinds)
        with open(a.out + ".json", "w") as f:
            json.dump({"machine": m, "settings": vars(a), "peers": peers, "kinds": kinds,
                       "summary": [{"peer": p, "kind": k, "kib_per_conn": v["kib"],
                                    "rss_before_mib": v["before"], "rss_after_mib": v["after"],
                                    "ratio_to_nginx": (round(v["kib"] / s[("nginx", k)]["kib"], 2)
                                                       if v["kib"] is not None
                                                       and s.get(("nginx", k), {}).get("kib")
                                                       else None)}
                                   for (p, k), v in s.items()],
                       "results": rows}, f, indent=1)
        bench.log("wrote %s.md and %s.json" % (a.out, a.out))
    if a.latest:
        bench.put_section(a.latest, "idle-conns", md.split("\n", 1)[1].lstrip("\n"))
        bench.log("wrote the idle-conns section of %s" % a.latest)
    return 0 if all(not r.get("error") and not r.get("failed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
