#!/usr/bin/env python3
"""C10k: 10 000 concurrent keep-alive clients, all active, through each proxy
(Duotone, nginx, HAProxy; Caddy and Traefik when their binaries are found) in
front of the load benchmark's nginx origin, one peer at a time, each started
afresh. Reports requests/s (2xx answers only), p50/p99 latency, errors, the
proxy's CPU and peak RSS, how many client connections it held, and the
kernel's accept-queue overflows during the run.

  python3 benches/load/c10k.py                             # all peers, 10 000 clients, 30 s
  python3 benches/load/c10k.py --peers duotone,nginx --clients 5000 --duration 10
  python3 benches/load/c10k.py --out benches/results/c10k --latest benches/results/latest.md

The clients: --procs wrk processes (4 by default, one thread each), the
clients split evenly between them, all started together, each with a
30 s request timeout (wrk's default 2 s would drop the slowest answers from
the latency figures and count them as errors instead). p50/p99 across the
processes come from their merged latency distributions: each wrk process
prints its distribution at 1 090 quantiles (every 0.1 % up to 99 %, then
every 0.01 %), weighted by its request count; the worst process's own p99 is
in the JSON too (`p99_max_proc_ms`).

File descriptors: the script raises its own RLIMIT_NOFILE soft limit to the
hard one and every process it starts inherits it; above the hard limit it
cannot go (root without CAP_SYS_RESOURCE, a container's --ulimit). A proxy
holds each client's socket and, while a request is in flight, one to the
origin, plus its listeners and files: N clients need N + about 1 024 in one
process (Duotone, HAProxy, Caddy and Traefik are one process each; nginx's
two workers split them). A larger N is refused before anything starts. The
connection limits of the load benchmark's configs (4 096) are raised: nginx's
worker_connections and the origin's to the file limit less 256, HAProxy's
maxconn to N + 256 (with `ulimit-n` at the file limit and `no
strict-limits`: its own estimate of twice maxconn is above it), Duotone's
`max_connections` to N + 1 024. Nothing else changes.

For Duotone in production: `[limits] max_connections` (default 10 000) and
a file limit of at least 2 × max_connections + max_open_files + 1 024; see
deploy/README.md, "File descriptors".

Standard library only. Needs wrk and nginx (benches/load/run.sh installs
them); Duotone is target/release/duotone or DUOTONE_BIN.
"""

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the load benchmark: configs, process bookkeeping, /proc)

DEFAULT_PEERS = ["duotone", "nginx", "haproxy", "caddy", "traefik"]
# Room in one process besides the client sockets: listeners, the upstream
# pool, log and temp files, the runtime's own descriptors.
RESERVE = 1024
# Upstream connections Caddy may open (max_conns_per_host) and Traefik keep
# idle: 10 000 clients and this many fit under a 20 000 file limit.
UPSTREAM_CAP = 4096

# wrk's done() hook: one line per figure, parsed by parse().
LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("C10K summary %d %d %d %d %d %d %d %d\n", summary.requests,
    summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout))
  io.write(string.format("C10K minmax %d %d\n", latency.min, latency.max))
  for i = 1, 990 do
    io.write(string.format("C10K q %.2f %d\n", i / 10, latency:percentile(i / 10)))
  end
  for i = 1, 100 do
    io.write(string.format("C10K q %.2f %d\n", 99 + i / 100, latency:percentile(99 + i / 100)))
  end
end
"""


def log(*a):
    bench.log(*a)


# --------------------------------------------------------------------------
# limits

def raise_nofile():
    """Soft RLIMIT_NOFILE up to the hard one; returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def ports_range():
    try:
        lo, hi = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
        return int(hi) - int(lo) + 1
    except (OSError, ValueError):
        return 28232


def out_of_reach(n, soft):
    """Why n clients cannot run here, or None."""
    usable = soft - RESERVE
    if n > usable:
        return ("%s clients are out of reach: the file limit here is %s (hard), about %s "
                "usable by one proxy process (it holds every client's socket plus %d for its "
                "listeners, upstream pool and files). Raise it (ulimit -Hn as root, systemd "
                "LimitNOFILE=, docker --ulimit nofile=) or ask for at most %s."
                % (group(n), group(soft), group(usable), RESERVE, group(usable)))
    ports = ports_range()
    if n > ports - 1024:
        return ("%s clients are out of reach: one source address has %s ephemeral ports "
                "(net.ipv4.ip_local_port_range), and wrk cannot spread over several."
                % (group(n), group(ports)))
    return None


def group(n):
    return "{:,}".format(int(n)).replace(",", " ")


# --------------------------------------------------------------------------
# configs

def replace_once(path, old, new):
    text = open(path).read()
    if old not in text:
        sys.exit("%s: %r not found (bench.py's config changed?)" % (path, old))
    bench.write(path, text.replace(old, new, 1))


def raise_limits(cfg_dir, peer, n, nofile):
    """The load benchmark's connection limits (4 096) raised for n clients."""
    if peer == "duotone":
        path = os.path.join(cfg_dir, "duotone.toml")
        text = open(path).read()
        if "[limits]" in text:
            sys.exit("%s: already has [limits] (bench.py's config changed?)" % path)
        bench.write(path, text + "\n[limits]\nmax_connections = %d\n" % (n + RESERVE))
    elif peer == "nginx":
        replace_once(os.path.join(cfg_dir, "nginx.conf"), "worker_connections 4096;",
                     "worker_connections %d;" % (nofile - 256))
    elif peer == "haproxy":
        # HAProxy wants 2 × maxconn + a little as its file limit and refuses
        # to start when it cannot set it (strict-limits, the default since
        # 2.3); it gets what the others get, the file limit here.
        replace_once(os.path.join(cfg_dir, "haproxy.cfg"), "  maxconn 4096\n",
                     "  maxconn %d\n  ulimit-n %d\n  no strict-limits\n" % (n + 256, nofile))
    elif peer == "caddy":
        # Go's transport opens one upstream connection per request in flight
        # and no limit: 10 000 clients + as many dials ran out of the 20 000
        # descriptors here ("socket: too many open files", 502). Capped as
        # an operator with this file limit would; requests then wait for a
        # connection instead of failing.
        path = os.path.join(cfg_dir, "Caddyfile")
        text = open(path).read()
        old = "reverse_proxy 127.0.0.1:%d\n" % origin_port(text)
        if text.count(old) != 2:
            sys.exit("%s: reverse_proxy lines not found (bench.py's config changed?)" % path)
        bench.write(path, text.replace(old, old.rstrip("\n") + " {\n      transport http {\n"
                                       "        max_conns_per_host %d\n      }\n    }\n"
                                       % UPSTREAM_CAP))
    elif peer == "traefik":
        # Traefik has no cap on upstream connections (v3: serversTransport
        # has only maxIdleConnsPerHost, default 200); more idle ones kept
        # means fewer new dials, not fewer descriptors at the peak.
        path = os.path.join(cfg_dir, "traefik.yml")
        bench.write(path, open(path).read() + "serversTransport:\n  maxIdleConnsPerHost: %d\n"
                    % UPSTREAM_CAP)
    # Caddy and Traefik (Go) raise their soft limit to the hard one.


def origin_port(caddyfile):
    """The origin's port in bench.py's Caddyfile."""
    for line in caddyfile.splitlines():
        line = line.strip()
        if line.startswith("reverse_proxy 127.0.0.1:"):
            return int(line.rsplit(":", 1)[1])
    sys.exit("Caddyfile: no reverse_proxy line (bench.py's config changed?)")


def origin_config(tmp, port, nofile):
    cmd, env = bench.make_origin(tmp, port)
    replace_once(os.path.join(tmp, "origin.conf"), "worker_connections 4096;",
                 "worker_connections %d;" % (nofile - 256))
    return cmd, env


# --------------------------------------------------------------------------
# /proc readings

def netstat():
    """TCP counters of this network namespace: ListenOverflows, ListenDrops
    (TcpExt) and ActiveOpens (Tcp: connections this namespace opened)."""
    out = {}
    for path, table, keys in (("/proc/net/netstat", "TcpExt:", ("ListenOverflows", "ListenDrops")),
                              ("/proc/net/snmp", "Tcp:", ("ActiveOpens",))):
        try:
            lines = open(path).read().splitlines()
        except OSError:
            continue
        for head, vals in zip(lines[::2], lines[1::2]):
            if head.startswith(table):
                for k, v in zip(head.split()[1:], vals.split()[1:]):
                    if k in keys:
                        out[k] = int(v)
    return out


def established_to(port):
    """ESTABLISHED TCP connections whose local port is `port` (the proxy's
    side of each client connection, accepted or still in its accept queue),
    by `ss` (netlink; /proc/net/tcp read in pieces repeats entries while
    other sockets come and go). None without `ss`."""
    try:
        out = subprocess.run(["ss", "-Htn", "state", "established", "( sport = :%d )" % port],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sum(1 for line in out.stdout.splitlines() if line.strip()) \
        if out.returncode == 0 else None


class Sampler(threading.Thread):
    """Every `every` s: client connections the proxy holds, and its RSS."""

    def __init__(self, pid, port, every=2.0):
        super().__init__(daemon=True)
        self.pid, self.port, self.every = pid, port, every
        self.conns, self.rss = [], []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.wait(self.every):
            n = established_to(self.port)
            if n is not None:
                self.conns.append(n)
            self.rss.append(bench.rss_kb(self.pid))


# --------------------------------------------------------------------------
# the load

def parse(text):
    """One wrk process's output (with the LUA hook) → dict."""
    r = {"quantiles": []}
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] != "C10K":
            continue
        if parts[1] == "summary":
            v = [int(x) for x in parts[2:10]]
            r.update(requests=v[0], duration_us=v[1], bytes=v[2],
                     errors={"connect": v[3], "read": v[4], "write": v[5],
                             "status": v[6], "timeout": v[7]})
        elif parts[1] == "minmax":
            r["min_us"], r["max_us"] = int(parts[2]), int(parts[3])
        elif parts[1] == "q":
            r["quantiles"].append((float(parts[2]), int(parts[3])))
    return r


def merged_quantile(procs, q):
    """Quantile q (0-100) of the union of the processes' latencies (µs), from
    each one's quantiles weighted by its request count."""
    points = []
    for p in procs:
        qs, n = p.get("quantiles"), p.get("requests") or 0
        if not qs or not n:
            continue
        prev = 0.0
        for pct, v in qs:
            points.append((v, n * (pct - prev) / 100.0))
            prev = pct
    if not points:
        return None
    points.sort()
    total = sum(w for _, w in points)
    acc = 0.0
    for v, w in points:
        acc += w
        if acc >= total * q / 100.0 - 1e-9:
            return v
    return points[-1][0]


def proc_quantile(p, q):
    for pct, v in p.get("quantiles", []):
        if pct >= q - 1e-9:
            return v
    return None


def run_load(url, clients, procs, duration, timeout_s, script, logpath):
    """`procs` wrk processes (one thread each) sharing `clients` connections,
    started together; returns their parsed outputs."""
    share = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    outs, ps = [], []
    for c in share:
        f = tempfile.TemporaryFile()
        cmd = ["wrk", "-t1", "-c%d" % c, "-d%ds" % duration, "--timeout", "%ds" % timeout_s,
               "-s", script, url]
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        bench.STARTED.append(p)
        outs.append((f, cmd))
        ps.append(p)
    end = time.time() + duration + timeout_s + 30
    for p in ps:
        try:
            p.wait(timeout=max(1.0, end - time.time()))
        except subprocess.TimeoutExpired:
            log("  wrk pid %d did not finish in time" % p.pid)
    results = []
    for p, (f, cmd) in zip(ps, outs):
        bench.stop(p)
        f.seek(0)
        text = f.read().decode("utf-8", "replace")
        f.close()
        with open(logpath, "a") as lf:
            lf.write("$ %s\n%s\n" % (" ".join(cmd), "\n".join(
                l for l in text.splitlines() if not l.startswith("C10K q "))))
        r = parse(text)
        r["exit"] = p.returncode
        r["connections"] = int(cmd[2][2:])
        if "requests" not in r:
            r["output"] = text[-600:]
        results.append(r)
    return results


def measure(tmp, peer, origin, oport, cert, key, www, a, script, nofile):
    d = tempfile.mkdtemp(prefix="%s-" % peer, dir=tmp)
    os.chmod(d, 0o755)
    ports = {"http": bench.free_port(), "https": bench.free_port(), "admin": bench.free_port()}
    cmd, env = bench.MAKERS[peer](d, ports, oport, www, cert, key)
    raise_limits(d, peer, a.clients, nofile)
    outp = os.path.join(d, peer + ".out")
    p = bench.spawn(cmd, outp, env=env)
    row = {"peer": peer, "clients": a.clients, "procs": a.procs, "duration_s": a.duration,
           "scheme": a.scheme}
    try:
        err = bench.wait_ready(p, ports["http"])
        if err:
            row["error"] = "failed to start: %s %s" % (err, bench.tail(outp)[-400:])
            return row
        port = ports[a.scheme]
        url = "%s://127.0.0.1:%d/" % (a.scheme, port)
        if a.wait_idle > 0:
            bg = bench.wait_quiet([origin.pid, p.pid], a.wait_idle)
            row["bg_cpu_pct_before"] = round(bg, 1)
        if a.warmup > 0:  # pools, allocator, TLS state; then the clients all connect anew
            run_load(url, min(a.clients, 256), 1, a.warmup, 10, script,
                     os.path.join(tmp, "clients.log"))
            time.sleep(1.0)
        row["load_before"] = [round(x, 2) for x in os.getloadavg()]
        row["rss_before_mib"] = round(bench.rss_kb(p.pid) / 1024, 1)
        bench.reset_hwm(p.pid)
        n0, c0, o0, b0 = netstat(), bench.cpu_ticks(p.pid), bench.cpu_ticks(origin.pid), \
            bench.busy_ticks()
        k0, w0 = bench.children_cpu_s(), time.time()
        sampler = Sampler(p.pid, port)
        sampler.start()
        procs = run_load(url, a.clients, a.procs, a.duration, a.timeout, script,
                         os.path.join(tmp, "clients.log"))
        sampler.halt.set()
        sampler.join()
        n1, c1, o1, b1 = netstat(), bench.cpu_ticks(p.pid), bench.cpu_ticks(origin.pid), \
            bench.busy_ticks()
        k1, w1 = bench.children_cpu_s(), time.time()
        row["load_after"] = [round(x, 2) for x in os.getloadavg()]
        good = [x for x in procs if "requests" in x]
        if len(good) < len(procs):
            row["error"] = "%d of %d wrk processes printed no result: %s" % (
                len(procs) - len(good), len(procs),
                next(x.get("output", "") for x in procs if "requests" not in x)[-300:])
        req = sum(x["requests"] for x in good)
        errs = {k: sum(x["errors"][k] for x in good)
                for k in ("connect", "read", "write", "status", "timeout")}
        rps_all = sum(x["requests"] / (x["duration_us"] / 1e6) for x in good if x["duration_us"])
        rps_2xx = sum((x["requests"] - x["errors"]["status"]) / (x["duration_us"] / 1e6)
                      for x in good if x["duration_us"])
        wall = w1 - w0
        other = (b1 - b0 - (c1 - c0) - (o1 - o0)) / bench.CLK_TCK - (k1 - k0)
        row.update({
            "requests": req,
            "rps": round(rps_2xx, 1),
            "rps_all_answers": round(rps_all, 1),
            "p50_ms": ms(merged_quantile(good, 50)),
            "p90_ms": ms(merged_quantile(good, 90)),
            "p99_ms": ms(merged_quantile(good, 99)),
            "p99_max_proc_ms": ms(max((proc_quantile(x, 99) or 0) for x in good) if good else None),
            "max_ms": ms(max(x.get("max_us", 0) for x in good) if good else None),
            "errors": errs,
            "error_total": sum(errs.values()),
            "proxy_cpu_s": round((c1 - c0) / bench.CLK_TCK, 2),
            "proxy_cpu_us_per_req": round((c1 - c0) / bench.CLK_TCK * 1e6 / req, 1) if req else None,
            "origin_cpu_s": round((o1 - o0) / bench.CLK_TCK, 2),
            "client_cpu_s": round(k1 - k0, 2),
            "other_cpu_pct": round(max(0.0, other) * 100 / (wall * bench.NCPU), 1),
            "peak_rss_mib": round(bench.rss_kb(p.pid, "VmHWM") / 1024, 1),
            "held_conns_max": max(sampler.conns) if sampler.conns else None,
            "held_conns_median": int(statistics.median(sampler.conns)) if sampler.conns else None,
            "listen_overflows": n1.get("ListenOverflows", 0) - n0.get("ListenOverflows", 0),
            "listen_drops": n1.get("ListenDrops", 0) - n0.get("ListenDrops", 0),
            # Every connection opened meanwhile but the clients' own: the
            # proxy's new connections to the origin.
            "upstream_opens_per_1k": round(max(0, n1.get("ActiveOpens", 0) - n0.get("ActiveOpens", 0)
                                               - a.clients) * 1000 / req, 1) if req else None,
            "per_process": [{k: v for k, v in x.items() if k != "quantiles"} for x in procs],
        })
        if p.poll() is not None:
            row["error"] = "exited during the run (code %s): %s" % (
                p.returncode, bench.tail(outp)[-400:])
        return row
    finally:
        bench.stop(p)


def ms(us):
    return None if us is None else round(us / 1000.0, 2)


# --------------------------------------------------------------------------
# report

def summarize(rows, peers):
    """Median over rounds per peer (errors: summed; peak RSS: max)."""
    out = {}
    for peer in peers:
        rs = [r for r in rows if r["peer"] == peer and r.get("requests")]
        if not rs:
            out[peer] = {"error": "; ".join(r.get("error", "no result") for r in rows
                                           if r["peer"] == peer)}
            continue
        med = lambda k: statistics.median(r[k] for r in rs if r.get(k) is not None) \
            if any(r.get(k) is not None for r in rs) else None
        out[peer] = {
            "rounds": len(rs),
            "rps": med("rps"), "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
            "p99_max_proc_ms": med("p99_max_proc_ms"),
            "cpu_us_per_req": med("proxy_cpu_us_per_req"),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
            "held": max(r.get("held_conns_max") or 0 for r in rs),
            "errors": {k: sum(r["errors"][k] for r in rs) for k in rs[0]["errors"]},
            "requests": sum(r["requests"] for r in rs),
            "listen_overflows": sum(r["listen_overflows"] for r in rs),
            "upstream_opens_per_1k": med("upstream_opens_per_1k"),
            "other_cpu_pct": med("other_cpu_pct"),
            "load": [r.get("load_before") for r in rs],
            "all_rps": [r["rps"] for r in rs],
            "all_p99": [r["p99_ms"] for r in rs],
            "notes": [r["error"] for r in rows if r["peer"] == peer and r.get("error")],
        }
    base = out.get("nginx", {})
    for v in out.values():
        if "rps" not in v:
            continue
        v["rps_ratio"] = v["rps"] / base["rps"] if base.get("rps") else None
        v["p99_ratio"] = v["p99_ms"] / base["p99_ms"] \
            if base.get("p99_ms") and v.get("p99_ms") is not None else None
    return out


def f(v, nd=2):
    if v is None:
        return "–"
    if isinstance(v, float) and v >= 100:
        return "%d" % round(v)
    return ("%." + str(nd) + "f") % v


def lat(v):
    if v is None:
        return "–"
    return "%.2f s" % (v / 1000) if v >= 1000 else ("%.1f ms" % v if v >= 10 else "%.2f ms" % v)


def render(rows, peers, a, machine, nofile, level=1):
    s = summarize(rows, peers)
    h = "#" * level
    L = ["%s C10k: %s concurrent keep-alive clients" % (h, group(a.clients)), "",
         "%s · %d cores · %s · Duotone: %s" % (machine["date"], machine["nproc"], machine["cpu"],
                                               machine["versions"].get("duotone", "?")), "",
         "`benches/load/c10k.py`: %s clients (%s over %d wrk processes, one thread each, all "
         "on the same %d cores as the proxies), %s GET / (100 B proxied from the nginx origin), "
         "%d s per peer after a %d s warm-up, each peer started afresh, %d round(s) (median). "
         "req/s counts 2xx answers only; p50/p99 from the processes' merged latency "
         "distributions (1 090 quantiles each, weighted by requests; wrk timeout %d s, so slow "
         "answers count as latency, not errors). held = most client connections the proxy had "
         "ESTABLISHED at a 2 s sample; new upstream conns = connections opened during the run "
         "(the kernel's ActiveOpens) besides the clients', per 1 000 requests: the proxy's new "
         "connections to the origin; accept-queue overflows = the kernel's ListenOverflows "
         "during the run (somaxconn %s here). File limit %s for every process (the hard limit; "
         "not raisable here). Load average (1 min) before each measured run in the last column."
         % (group(a.clients), a.scheme.upper() if a.scheme == "https" else "HTTP/1.1",
            a.procs, machine["nproc"], "HTTPS" if a.scheme == "https" else "HTTP/1.1",
            a.duration, a.warmup, a.rounds, a.timeout, somaxconn(), group(nofile)), "",
         "| peer | req/s | ×nginx | p50 | p99 | p99 ×nginx | errors | held | CPU µs/req | "
         "new upstream conns /1k req | peak RSS MiB | accept-queue overflows | bg CPU | load |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for peer in peers:
        v = s[peer]
        if "rps" not in v:
            L.append("| %s | – | | | | | %s | | | | | | | |" % (peer, v["error"][:200]))
            continue
        e = v["errors"]
        errs = sum(e.values())
        etxt = "%d" % errs
        if errs:
            etxt += " (%s)" % ", ".join("%s %d" % (k, n) for k, n in e.items() if n)
        L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.1f | %s | %s | %s |" % (
            peer, f(v["rps"]), f(v["rps_ratio"]), lat(v["p50_ms"]), lat(v["p99_ms"]),
            f(v["p99_ratio"]), etxt, group(v["held"]), f(v["cpu_us_per_req"], 1),
            "–" if v.get("upstream_opens_per_1k") is None else "%.0f" % v["upstream_opens_per_1k"],
            v["peak_rss_mib"], group(v["listen_overflows"]),
            "–" if v["other_cpu_pct"] is None else "%.0f%%" % v["other_cpu_pct"],
            " / ".join("%.2f" % x[0] for x in v["load"] if x)))
    notes = ["- %s: %s" % (p, n[:300]) for p in peers for n in s[p].get("notes", [])]
    if notes:
        L += ["", "Notes:"] + notes
    if a.rounds > 1:
        L += ["", "Every round (req/s · p99): " + "; ".join(
            "%s %s" % (p, " / ".join("%s · %s" % (f(r), lat(q)) for r, q in
                                     zip(s[p]["all_rps"], s[p]["all_p99"])))
            for p in peers if "all_rps" in s[p])]
    L.append("")
    return "\n".join(L)


def somaxconn():
    try:
        return open("/proc/sys/net/core/somaxconn").read().strip()
    except OSError:
        return "?"


def available(peer):
    if peer == "duotone":
        return os.access(bench.duotone_bin(), os.X_OK)
    if peer in ("caddy", "traefik"):
        t = bench.tool(peer)
        return os.path.isabs(t) and os.access(t, os.X_OK) or bool(shutil.which(t))
    return bool(shutil.which(peer))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers", default=None,
                    help="comma list (default: duotone,nginx,haproxy and caddy,traefik if found)")
    ap.add_argument("--clients", type=int, default=10000, help="concurrent clients (10000)")
    ap.add_argument("--procs", type=int, default=4, help="wrk processes sharing them (4)")
    ap.add_argument("--duration", type=int, default=30, help="seconds per peer (30)")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up seconds, 256 clients (3)")
    ap.add_argument("--timeout", type=int, default=30, help="wrk's request timeout, s (30)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds, peers rotated (1)")
    ap.add_argument("--scheme", choices=("http", "https"), default="http")
    ap.add_argument("--quick", action="store_true", help="10 s per peer")
    ap.add_argument("--wait-idle", type=float, default=20.0,
                    help="wait up to this many s for other processes to use < 15%% CPU (20)")
    ap.add_argument("--out", default=None, help="write PREFIX.md and PREFIX.json")
    ap.add_argument("--latest", default=None,
                    help="also put the table in this markdown file as its `## c10k` section")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the configs and logs")
    a = ap.parse_args()
    if a.quick:
        a.duration = 10
    if a.clients < a.procs or a.procs < 1:
        ap.error("--clients must be at least --procs (>= 1)")
    soft, hard = raise_nofile()
    why = out_of_reach(a.clients, soft)
    if why:
        sys.exit(why)
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
            log("skipped (no binary): %s" % ", ".join(skipped))
    for t in ("nginx", "wrk"):
        if not shutil.which(t):
            sys.exit("%s is missing: run benches/load/run.sh once (it installs it)" % t)

    for sg in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sg, bench.on_signal)
    tmp = tempfile.mkdtemp(prefix="duotone-c10k-")
    os.chmod(tmp, 0o755)  # nginx workers run as nobody
    rows = []
    try:
        script = os.path.join(tmp, "c10k.lua")
        bench.write(script, LUA)
        cert, key, www = bench.fixtures(tmp)
        oport = bench.free_port()
        ocmd, oenv = origin_config(tmp, oport, soft)
        origin = bench.spawn(ocmd, os.path.join(tmp, "origin.out"), env=oenv)
        err = bench.wait_ready(origin, oport, 30)
        if err:
            sys.exit("origin failed: %s %s" % (err, bench.tail(os.path.join(tmp,
                                                                           "origin-error.log"))))
        for rnd in range(a.rounds):
            k = rnd % len(peers)
            for peer in peers[k:] + peers[:k]:
                log("round %d: %s, %s clients, %d s…" % (rnd + 1, peer, group(a.clients),
                                                        a.duration))
                r = measure(tmp, peer, origin, oport, cert, key, www, a, script, soft)
                r["round"] = rnd + 1
                log("  %s" % json.dumps({k: v for k, v in r.items() if k != "per_process"}))
                rows.append(r)
        bench.stop(origin)
    finally:
        bench.stop_all()
        if a.keep_tmp:
            log("configs and logs kept in %s" % tmp)
        else:
            shutil.rmtree(tmp, True)
    m = bench.machine()
    md = render(rows, peers, a, m, soft)
    print(md)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        bench.write(a.out + ".md", md)
        with open(a.out + ".json", "w") as fh:
            json.dump({"machine": m, "settings": vars(a), "nofile": soft, "hard_nofile": hard,
                       "somaxconn": somaxconn(), "peers": peers,
                       "summary": summarize(rows, peers), "results": rows}, fh, indent=1)
        log("wrote %s.md and %s.json" % (a.out, a.out))
    if a.latest:
        bench.put_section(a.latest, "c10k", render(rows, peers, a, m, soft, level=3)
                          .split("\n", 1)[1].lstrip("\n"))
        log("wrote the c10k section of %s" % a.latest)
    return 0 if all(not r.get("error") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
