#!/usr/bin/env python3
"""Side-by-side load benchmark: nginx, HAProxy, Caddy, Traefik and Duotone
as reverse proxies (and static file servers) in front of one nginx origin,
all on 127.0.0.1. Standard library only. Usually started by run.sh, which
installs the tools first; see the Performance section of the top-level README.

Every process started here is in its own session and is killed by its PID
(process group = that PID) on exit, error, Ctrl-C or SIGTERM.
"""

import argparse
import atexit
import datetime
import http.client
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
VENV_BIN = os.path.join(HERE, ".venv", "bin")
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1

PEERS = ["nginx", "haproxy", "caddy", "traefik", "duotone"]
STATIC_PEERS = ["nginx", "caddy", "duotone"]
BODY_100 = ("duotone-bench-" * 8)[:99] + "\n"  # exactly 100 bytes
assert len(BODY_100) == 100
STIME_CLIENTS = 4  # parallel `openssl s_time` clients in tls-full
UPLOADED = "uploaded\n"  # the origin's answer to an upload, once it has read the whole body
UPLOAD_SIZE = 1 << 20  # the body of each request in upload-1m
SIZES = {"/": 100, "/16k": 16384, "/static/1k.bin": 1024, "/static/1m.bin": 1 << 20,
         "/1m": 1 << 20, "/upload": len(UPLOADED)}

# name -> (tool, scheme, path, peers, description)
SCENARIOS = {
    "h1-100": ("wrk", "http", "/", PEERS,
               "HTTP/1.1 keep-alive, proxied 100 B response (wrk -t2 -c32)"),
    "h1-16k": ("wrk", "http", "/16k", PEERS,
               "HTTP/1.1 keep-alive, proxied 16 KiB response (wrk -t2 -c32)"),
    "https-100": ("wrk", "https", "/", PEERS,
                  "HTTPS (HTTP/1.1 over TLS) keep-alive, proxied 100 B (wrk -t2 -c32)"),
    "h2-tls": ("h2load", "https", "/", PEERS,
               "HTTP/2 over TLS, proxied 100 B (h2load -t2 -c32 -m10)"),
    "tls-new": ("wrk-close", "https", "/", PEERS,
                "new TLS connection per request (wrk -t2 -c32 -H 'Connection: close'); "
                "rps = handshakes/s. wrk keeps its TLS session across reconnects, so these "
                "are resumed handshakes: with TLS 1.3 a PSK plus a fresh X25519 exchange, "
                "no certificate signature (see the TLS section for what each peer "
                "negotiated)"),
    "tls-full": ("s_time", "https", "/", PEERS,
                 "new TLS connection, full handshake, no resumption and no request "
                 "(%d parallel `openssl s_time -new`); rps = handshakes/s; no latency "
                 "figures (s_time reports none); the clients' certificate checks take most "
                 "of the CPU" % STIME_CLIENTS),
    "upload-1m": ("wrk-upload", "http", "/upload", PEERS,
                  "HTTP/1.1 keep-alive, 1 MiB request body proxied to an origin that reads it "
                  "whole before answering 9 bytes (wrk -t2 -c32 with a POST script); each proxy "
                  "with its default request buffering (nginx: to a temp file past 16 KiB)"),
    "download-1m": ("wrk", "http", "/1m", PEERS,
                    "HTTP/1.1 keep-alive, proxied 1 MiB response (wrk -t2 -c32); each proxy with "
                    "its default response buffering (nginx: 64 KiB in memory, then a temp file)"),
    "static-1k": ("wrk", "http", "/static/1k.bin", STATIC_PEERS,
                  "static 1 KiB file, HTTP/1.1 keep-alive (wrk -t2 -c32)"),
    "static-1m": ("wrk", "http", "/static/1m.bin", STATIC_PEERS,
                  "static 1 MiB file, HTTP/1.1 keep-alive (wrk -t2 -c32)"),
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# process bookkeeping: everything we start is tracked and killed by PID

STARTED = []  # Popen objects


def spawn(cmd, logpath, env=None, cwd=None):
    f = open(logpath, "ab")
    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env=env, cwd=cwd, start_new_session=True)
    f.close()
    STARTED.append(p)
    return p


def stop(p, grace=3.0):
    if p.poll() is None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(p.pid, sig)  # group id == the PID we started
            except ProcessLookupError:
                break
            try:
                p.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
    # stray members of its group (e.g. nginx workers after master died)
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if p in STARTED:
        STARTED.remove(p)


def stop_all():
    for p in list(reversed(STARTED)):
        try:
            stop(p)
        except Exception as e:  # keep going: every process must be stopped
            log("warning: stopping pid %d: %s" % (p.pid, e))


def on_signal(signum, _frame):
    log("\nsignal %d: stopping everything we started" % signum)
    stop_all()
    sys.exit(128 + signum)


def run_bounded(cmd, timeout, logpath=None):
    """Run a client tool in its own session, bounded in time; return stdout."""
    out = tempfile.TemporaryFile()
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    STARTED.append(p)
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log("  timeout: %s" % " ".join(cmd))
    finally:
        stop(p)
    out.seek(0)
    text = out.read().decode("utf-8", "replace")
    if logpath:
        with open(logpath, "a") as f:
            f.write("$ " + " ".join(cmd) + "\n" + text + "\n")
    return text, p.returncode


# --------------------------------------------------------------------------
# /proc measurements

def _stat(pid):
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    rest = s[s.rindex(")") + 2:].split()
    return int(rest[1]), int(rest[11]) + int(rest[12])  # ppid, utime+stime (ticks)


def tree(root):
    """root and all its descendants (processes; threads are counted by /proc/PID/stat)."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid, _ = _stat(int(d))
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_ticks(root):
    total = 0
    for pid in tree(root):
        try:
            total += _stat(pid)[1]
        except (OSError, ValueError, IndexError):
            pass
    return total


def user_ticks(root):
    """utime alone (user space), summed like cpu_ticks."""
    total = 0
    for pid in tree(root):
        try:
            with open("/proc/%d/stat" % pid) as f:
                st = f.read()
            total += int(st[st.rindex(")") + 2:].split()[11])
        except (OSError, ValueError, IndexError):
            pass
    return total


def _status_kb(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(root, key="VmRSS"):
    return sum(_status_kb(p, key) for p in tree(root))


def busy_ticks():
    """System-wide user+nice+system ticks (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = f.readline().split()[1:4]
    return sum(int(x) for x in v)


def children_cpu_s():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def wait_quiet(ours, limit_s, max_pct=15.0):
    """Wait (at most limit_s) until other processes use < max_pct of all cores.
    ours: PIDs whose trees are ours (idle proxies, origin). Returns the last %."""
    end = time.time() + limit_s
    while True:
        b0, o0, t0 = busy_ticks(), sum(cpu_ticks(p) for p in ours), time.time()
        time.sleep(0.5)
        b1, o1, t1 = busy_ticks(), sum(cpu_ticks(p) for p in ours), time.time()
        pct = max(0.0, (b1 - b0) - (o1 - o0)) / CLK_TCK * 100 / ((t1 - t0) * NCPU)
        if pct < max_pct or time.time() >= end:
            return pct
        time.sleep(1.0)


def reset_hwm(root):
    """Reset VmHWM (peak RSS) to the current RSS: write 5 to clear_refs."""
    ok = True
    for p in tree(root):
        try:
            with open("/proc/%d/clear_refs" % p, "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


# --------------------------------------------------------------------------
# configs

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def write(path, text, mode=None):
    with open(path, "w") as f:
        f.write(text)
    if mode is not None:
        os.chmod(path, mode)


def nginx_common(tmp, name):
    t = os.path.join(tmp, name + "-tmp")
    os.makedirs(t, exist_ok=True)
    return ("pid %s/%s.pid;\nerror_log %s/%s-error.log warn;\n" % (tmp, name, tmp, name),
            "client_body_temp_path {t}/body; proxy_temp_path {t}/proxy; "
            "fastcgi_temp_path {t}/fcgi; uwsgi_temp_path {t}/uwsgi; scgi_temp_path {t}/scgi;"
            .format(t=t))


def make_origin(tmp, port):
    d = os.path.join(tmp, "origin")
    os.makedirs(d, exist_ok=True)
    write(os.path.join(d, "16k"), ("x" * 1023 + "\n") * 16)
    with open(os.path.join(d, "1m"), "wb") as f:
        f.write((b"o" * 1023 + b"\n") * 1024)
    write(os.path.join(d, "upload"), "")  # the static handler needs a file to refuse POST with 405
    top, temps = nginx_common(tmp, "origin")
    conf = """worker_processes 1;
{top}
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  open_file_cache max=100 inactive=300s;
  open_file_cache_valid 300s;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  default_type application/octet-stream;
  {temps}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = / {{ default_type text/plain; return 200 "{body}"; }}
    location = /16k {{ root {d}; }}
    location = /1m {{ root {d}; }}
    # Reads the whole request body before answering (`return` would answer
    # first and discard the body): the mirror module reads it, then the static
    # handler refuses POST with 405, which error_page turns into a 200.
    location = /upload {{
      client_max_body_size 2m;
      client_body_buffer_size 2m;
      mirror /_void;
      mirror_request_body on;
      root {d};
      error_page 405 =200 @uploaded;
    }}
    location = /_void {{ internal; return 204; }}
    location @uploaded {{ default_type text/plain; return 200 "{uploaded}"; }}
  }}
}}
""".format(top=top, temps=temps, port=port, body=BODY_100.replace("\n", "\\n"), d=d,
           uploaded=UPLOADED.replace("\n", "\\n"))
    path = os.path.join(tmp, "origin.conf")
    write(path, conf)
    return ["nginx", "-p", tmp, "-e", os.path.join(tmp, "origin-error.log"),
            "-c", path, "-g", "daemon off;"], None


def make_nginx(tmp, p, origin, www, cert, key):
    top, temps = nginx_common(tmp, "nginx")
    conf = """worker_processes 2;
{top}
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  open_file_cache max=1000 inactive=300s;
  open_file_cache_valid 300s;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  default_type application/octet-stream;
  {temps}
  upstream origin {{ server 127.0.0.1:{origin}; keepalive 64; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{http} backlog=4096;
    listen 127.0.0.1:{https} ssl http2 backlog=4096;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;  # 1.22's default lacks TLSv1.3 (added in 1.23.4)
    # The upload scenario's 1 MiB body sits at the default limit (1m); room
    # above it. Buffering stays at nginx's defaults.
    client_max_body_size 2m;
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # What the app behind needs to know, as Duotone, Caddy and Traefik
      # send by default.
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Real-IP $remote_addr;
    }}
    location /static/ {{ root {www}; }}
  }}
}}
""".format(top=top, temps=temps, origin=origin, http=p["http"], https=p["https"],
           cert=cert, key=key, www=www)
    path = os.path.join(tmp, "nginx.conf")
    write(path, conf)
    return ["nginx", "-p", tmp, "-e", os.path.join(tmp, "nginx-error.log"),
            "-c", path, "-g", "daemon off;"], None


def make_haproxy(tmp, p, origin, www, cert, key):
    pem = os.path.join(tmp, "haproxy.pem")
    with open(pem, "w") as f:
        f.write(open(cert).read() + open(key).read())
    conf = """global
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
  bind 127.0.0.1:{http}
  bind 127.0.0.1:{https} ssl crt {pem} alpn h2,http/1.1
  # What the app behind needs to know, as Duotone, Caddy and Traefik send
  # by default.
  option forwardfor
  http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
  http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Real-IP %[src]
  default_backend be
backend be
  server origin 127.0.0.1:{origin}
""".format(http=p["http"], https=p["https"], pem=pem, origin=origin)
    path = os.path.join(tmp, "haproxy.cfg")
    write(path, conf)
    return ["haproxy", "-db", "-f", path], None


def make_caddy(tmp, p, origin, www, cert, key):
    conf = """{{
  admin off
  auto_https off
  persist_config off
  default_bind 127.0.0.1
  storage file_system {tmp}/caddy-data
  servers {{
    protocols h1 h2
  }}
}}
http://127.0.0.1:{http} {{
  handle /static/* {{
    root * {www}
    file_server
  }}
  handle {{
    reverse_proxy 127.0.0.1:{origin}
  }}
}}
https://127.0.0.1:{https} {{
  tls {cert} {key}
  handle /static/* {{
    root * {www}
    file_server
  }}
  handle {{
    reverse_proxy 127.0.0.1:{origin}
  }}
}}
""".format(tmp=tmp, http=p["http"], https=p["https"], www=www, origin=origin,
           cert=cert, key=key)
    path = os.path.join(tmp, "Caddyfile")
    write(path, conf)
    env = dict(os.environ, GOMAXPROCS="2", XDG_DATA_HOME=tmp + "/caddy-xdg",
               XDG_CONFIG_HOME=tmp + "/caddy-xdg", HOME=tmp)
    return [tool("caddy"), "run", "--config", path, "--adapter", "caddyfile"], env


def make_traefik(tmp, p, origin, www, cert, key):
    dyn = os.path.join(tmp, "traefik-dynamic.yml")
    write(dyn, """http:
  routers:
    plain:
      entryPoints: [web]
      rule: "PathPrefix(`/`)"
      service: origin
    secure:
      entryPoints: [websecure]
      rule: "PathPrefix(`/`)"
      service: origin
      tls: {{}}
  services:
    origin:
      loadBalancer:
        servers:
          - url: "http://127.0.0.1:{origin}"
tls:
  stores:
    default:
      defaultCertificate:
        certFile: {cert}
        keyFile: {key}
""".format(origin=origin, cert=cert, key=key))
    static = os.path.join(tmp, "traefik.yml")
    write(static, """global:
  checkNewVersion: false
  sendAnonymousUsage: false
entryPoints:
  web:
    address: "127.0.0.1:{http}"
  websecure:
    address: "127.0.0.1:{https}"
providers:
  file:
    filename: {dyn}
    watch: false
log:
  level: ERROR
""".format(http=p["http"], https=p["https"], dyn=dyn))
    env = dict(os.environ, GOMAXPROCS="2", HOME=tmp)
    return [tool("traefik"), "--configFile=" + static], env


def make_duotone(tmp, p, origin, www, cert, key):
    state = os.path.join(tmp, "duotone-state")
    os.makedirs(state, exist_ok=True)
    conf = """[server]
http = "127.0.0.1:{http}"
https = "127.0.0.1:{https}"
admin = "127.0.0.1:{admin}"
state_dir = "{state}"
threads = 2

[log]
access = "off"

[[sites]]
hosts = ["*"]
tls = {{ cert = "{cert}", key = "{key}" }}

  [[sites.routes]]
  path = "/static/"
  static = {{ root = "{www}/static" }}
  allow_http = true

  [[sites.routes]]
  path = "/"
  service = "origin"
  allow_http = true

[services.origin]
live = "blue"
colors.blue = ["127.0.0.1:{origin}"]
""".format(http=p["http"], https=p["https"], admin=p["admin"], state=state, cert=cert,
           key=key, www=www, origin=origin)
    path = os.path.join(tmp, "duotone.toml")
    write(path, conf)
    return [duotone_bin(), "run", "-c", path], None


MAKERS = {"nginx": make_nginx, "haproxy": make_haproxy, "caddy": make_caddy,
          "traefik": make_traefik, "duotone": make_duotone}


def tool(name):
    env = os.environ.get(name.upper() + "_BIN")
    if env:
        return env
    p = os.path.join(VENV_BIN, name)
    return p if os.access(p, os.X_OK) else (shutil.which(name) or name)


def duotone_bin():
    return os.environ.get("DUOTONE_BIN") or os.path.join(ROOT, "target", "release", "duotone")


# --------------------------------------------------------------------------
# HTTP probes

def fetch(scheme, port, path, timeout=3.0, method="GET", body=None):
    if scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=ctx)
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def tls_probe(port, timeout=3.0):
    """What a default client negotiates with the peer on `port`: protocol,
    cipher, and whether a second connection resumes the first's session."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    out, session = {}, None
    for attempt in range(2):
        raw = socket.create_connection(("127.0.0.1", port), timeout)
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            try:
                while s.recv(65536):  # TLS 1.3 tickets arrive after the handshake
                    pass
            except (ssl.SSLError, OSError):
                pass
            if attempt == 0:
                out["version"], out["cipher"] = s.version(), s.cipher()[0]
                session = s.session
            else:
                out["resumed"] = s.session_reused
    return out


def wait_ready(proc, port, deadline_s=30.0):
    end = time.time() + deadline_s
    last = None
    while time.time() < end:
        if proc.poll() is not None:
            return "exited with code %s" % proc.returncode
        try:
            st, body = fetch("http", port, "/", timeout=1.0)
            if st == 200:
                return None
            last = "status %d" % st
        except Exception as e:
            last = str(e)
        time.sleep(0.2)
    return "not ready after %.0f s (%s)" % (deadline_s, last)


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------
# load tools and parsers

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m|h)$", v)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def parse_wrk(text):
    r = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+),", text)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        r["rps"] = float(m.group(1))
    for pct in ("50", "75", "90", "99"):
        m = re.search(r"^\s+%s%%\s+(\S+)" % pct, text, re.M)
        if m:
            r["p%s_ms" % pct] = _ms(m.group(1))
    errs = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errs = sum(int(x) for x in m.groups())
        r["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"),
                                      (int(x) for x in m.groups())))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    r["non2xx"] = int(m.group(1)) if m else 0
    r["errors"] = errs + r["non2xx"]
    return r


def parse_h2load(text, logfile):
    r = {}
    m = re.search(r"finished in ([\d.]+)(\w+), ([\d.]+) req/s", text)
    if m:
        r["rps"] = float(m.group(3))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    if m:
        r["requests"] = int(m.group(3))
        r["errors"] = int(m.group(5)) + int(m.group(6)) + int(m.group(7))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        r["non2xx"] = int(m.group(3)) + int(m.group(4))
        r["errors"] = r.get("errors", 0) + r["non2xx"]
    m = re.search(r"Application protocol: (\S+)", text)
    r["protocol"] = m.group(1) if m else None
    lat = []
    try:
        with open(logfile) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3:
                    lat.append(int(parts[2]))
    except OSError:
        pass
    if lat:
        lat.sort()
        for pct in (50, 75, 90, 99):
            r["p%d_ms" % pct] = lat[min(len(lat) - 1, int(len(lat) * pct / 100))] / 1000.0
    return r


def parse_stime(text, wall_s):
    """Sums the handshakes of parallel `openssl s_time` runs over the wall time."""
    counts = [int(n) for n in re.findall(r"^(\d+) connections in [\d.]+s;", text, re.M)]
    r = {"requests": sum(counts), "errors": 0}
    r["rps"] = sum(counts) / wall_s if counts and wall_s > 0 else None
    if len(counts) < STIME_CLIENTS:
        r["errors"] = STIME_CLIENTS - len(counts)  # a client that printed no total
    return r


def load_cmd(kind, url, duration, tmp):
    if kind == "wrk":
        return ["wrk", "-t2", "-c32", "-d%ds" % duration, "--latency", url], None
    if kind == "wrk-upload":
        script = os.path.join(tmp, "upload.lua")
        if not os.path.exists(script):
            write(script, 'wrk.method = "POST"\n'
                          'wrk.headers["Content-Type"] = "application/octet-stream"\n'
                          'wrk.body = string.rep("u", %d)\n' % UPLOAD_SIZE)
        return ["wrk", "-t2", "-c32", "-d%ds" % duration, "--latency", "-s", script, url], None
    if kind == "wrk-close":
        return ["wrk", "-t2", "-c32", "-d%ds" % duration, "--latency",
                "-H", "Connection: close", url], None
    if kind == "h2load":
        lf = os.path.join(tmp, "h2load-requests.log")
        if os.path.exists(lf):
            os.unlink(lf)
        return ["h2load", "-t2", "-c32", "-m10", "-D", str(duration),
                "--log-file=" + lf, url], lf
    if kind == "s_time":
        hostport = url.split("://", 1)[1].split("/", 1)[0]
        one = "openssl s_time -connect %s -new -time %d" % (hostport, duration)
        return ["sh", "-c", " & ".join([one] * STIME_CLIENTS) + " & wait"], None
    raise ValueError(kind)


# --------------------------------------------------------------------------
# machine description

def sh(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
        return (out.stdout + out.stderr).strip()
    except Exception as e:
        return "unavailable (%s)" % e


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    first = lambda s: s.splitlines()[0] if s else s
    d = duotone_bin()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "os": sh(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
        "versions": {
            "nginx": first(sh(["nginx", "-v"])),
            "haproxy": first(sh(["haproxy", "-v"])),
            "caddy": first(sh([tool("caddy"), "version"])),
            "traefik": " ".join(first(l) for l in sh([tool("traefik"), "version"]).splitlines()[:1]),
            "duotone": first(sh([d, "--version"])) + (
                " (binary built %s)" % datetime.datetime.fromtimestamp(
                    os.path.getmtime(d)).strftime("%Y-%m-%d %H:%M") if os.path.exists(d) else ""),
            "wrk": first(sh(["wrk", "-v"])),
            "h2load": first(sh(["h2load", "--version"])),
            "openssl": first(sh(["openssl", "version"])),
        },
    }


# --------------------------------------------------------------------------
# main

def fixtures(tmp):
    """A self-signed certificate and the static files, in `tmp`: (cert, key, www)."""
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30",
                    "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=30)
    os.chmod(key, 0o644)
    www = os.path.join(tmp, "www")
    os.makedirs(os.path.join(www, "static"))
    write(os.path.join(www, "static", "1k.bin"), ("s" * 63 + "\n") * 16)
    with open(os.path.join(www, "static", "1m.bin"), "wb") as f:
        f.write((b"m" * 1023 + b"\n") * 1024)
    return cert, key, www


def write_configs(tmp, peer):
    """Writes the origin's and `peer`'s configs (as the benchmark runs them)
    into `tmp` and prints, for a shell to eval, their ports and commands:
    ORIGIN, HTTP, HTTPS, origin_cmd=(...), proxy_cmd=(...)."""
    cert, key, www = fixtures(tmp)
    oport = free_port()
    ports = {"http": free_port(), "https": free_port(), "admin": free_port()}
    ocmd, _ = make_origin(tmp, oport)
    pcmd, _ = MAKERS[peer](tmp, ports, oport, www, cert, key)
    q = lambda cmd: " ".join(shlex.quote(c) for c in cmd)
    print("ORIGIN=%d HTTP=%d HTTPS=%d" % (oport, ports["http"], ports["https"]))
    print("origin_cmd=(%s)" % q(ocmd))
    print("proxy_cmd=(%s)" % q(pcmd))


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--write-configs":
        # For benches/instructions/run.sh: the same setup, one peer.
        return write_configs(sys.argv[2], sys.argv[3])
    if len(sys.argv) == 4 and sys.argv[1] == "--render":
        # Re-renders the tables of a saved run (JSON) into a markdown file.
        return rerender(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round, 3 s runs, 1 s warm-up")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per scenario (default 5)")
    ap.add_argument("--duration", type=int, default=None, help="seconds per run (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up seconds before each run")
    ap.add_argument("--only", default="", help="comma list of peers, e.g. duotone,nginx")
    ap.add_argument("--scenario", default="", help="comma list of scenarios: " + ",".join(SCENARIOS))
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results", "latest"),
                    help="output path prefix (.md and .json are added)")
    ap.add_argument("--wait-idle", type=float, default=20.0,
                    help="before each run wait up to this many seconds for other processes "
                         "(e.g. someone's build) to use < 15%% CPU; 0 = don't wait")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the generated configs")
    a = ap.parse_args()
    rounds = a.rounds or (1 if a.quick else 5)
    duration = a.duration or (3 if a.quick else 5)

    peers = [p.strip() for p in a.only.split(",") if p.strip()] or list(PEERS)
    for p in peers:
        if p not in PEERS:
            ap.error("unknown peer %r (known: %s)" % (p, ",".join(PEERS)))
    if "nginx" not in peers:
        log("note: nginx not selected; ratios will be left empty")
    scen = [s.strip() for s in a.scenario.split(",") if s.strip()] or list(SCENARIOS)
    for s in scen:
        if s not in SCENARIOS:
            ap.error("unknown scenario %r (known: %s)" % (s, ",".join(SCENARIOS)))

    for t in ("nginx", "wrk", "h2load", "openssl"):
        if not shutil.which(t):
            sys.exit("missing tool %s: run benches/load/run.sh (it installs them)" % t)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    atexit.register(stop_all)

    tmp = tempfile.mkdtemp(prefix="duotone-loadbench-")
    os.chmod(tmp, 0o755)  # nginx workers run as nobody
    if not a.keep_tmp:
        atexit.register(shutil.rmtree, tmp, True)
    log("work dir: %s" % tmp)

    cert, key, www = fixtures(tmp)

    # origin
    oport = free_port()
    cmd, env = make_origin(tmp, oport)
    origin = spawn(cmd, os.path.join(tmp, "origin.out"), env=env)
    err = wait_ready(origin, oport, 15)
    if err:
        sys.exit("origin nginx failed: %s\n%s" % (err, tail(os.path.join(tmp, "origin-error.log"))))
    log("origin nginx on 127.0.0.1:%d (pid %d)" % (oport, origin.pid))

    # proxies
    running, skipped, idle = {}, {}, {}
    for name in peers:
        ports = {"http": free_port(), "https": free_port(), "admin": free_port()}
        if name == "duotone":
            b = duotone_bin()
            if not os.access(b, os.X_OK):
                skipped[name] = "no binary at %s (cargo build --release -p duotone failed?)" % b
                log("SKIP duotone: " + skipped[name])
                continue
            if os.environ.get("DUOTONE_BUILD") == "failed":
                skipped[name] = "cargo build --release -p duotone failed (see run.sh output)"
                log("SKIP duotone: " + skipped[name])
                continue
        cmd, env = MAKERS[name](tmp, ports, oport, www, cert, key)
        if name == "duotone":
            chk = subprocess.run([cmd[0], "check", "-c", cmd[-1]], capture_output=True,
                                 text=True, timeout=30)
            if chk.returncode != 0:
                skipped[name] = "`duotone check` rejected the config: " + \
                    (chk.stdout + chk.stderr).strip().replace("\n", " | ")[:600]
                log("SKIP duotone: " + skipped[name])
                continue
        outp = os.path.join(tmp, name + ".out")
        p = spawn(cmd, outp, env=env)
        err = wait_ready(p, ports["http"])
        if err:
            extra = tail(outp) + tail(os.path.join(tmp, name + "-error.log"))
            skipped[name] = "failed to start: %s: %s" % (err, extra.strip().replace("\n", " | ")[:600])
            log("SKIP %s: %s" % (name, skipped[name]))
            stop(p)
            continue
        running[name] = (p, ports)
        log("%s on 127.0.0.1:%d / https %d (pid %d)" % (name, ports["http"], ports["https"], p.pid))

    # idle RSS (after one request each), measured once everything is up
    time.sleep(1.0)
    for name, (p, _) in running.items():
        idle[name] = rss_kb(p.pid) / 1024.0

    # what each peer negotiates over TLS (protocol, cipher, session resumption)
    tls = {}
    for name, (_, ports) in running.items():
        try:
            tls[name] = tls_probe(ports["https"])
        except Exception as e:
            tls[name] = {"error": str(e)}

    # correctness probes: right status and size per peer and path
    broken = {}  # (peer, scenario) -> reason
    for s in scen:
        kind, scheme, path, spe, _ = SCENARIOS[s]
        for name in spe:
            if name not in running:
                continue
            port = running[name][1][scheme]
            try:
                if kind == "wrk-upload":
                    st, body = fetch(scheme, port, path, timeout=5, method="POST",
                                     body=b"u" * UPLOAD_SIZE)
                else:
                    st, body = fetch(scheme, port, path, timeout=5)
                if st != 200 or len(body) != SIZES[path]:
                    broken[(name, s)] = "probe %s://…%s gave %d with %d bytes (want 200, %d)" % (
                        scheme, path, st, len(body), SIZES[path])
            except Exception as e:
                broken[(name, s)] = "probe %s://…%s failed: %s" % (scheme, path, e)
            if (name, s) in broken:
                log("SKIP %s/%s: %s" % (name, s, broken[(name, s)]))

    # runs: for each scenario, rounds of A B C … interleaved (B C … A next round)
    runs = []
    clientlog = os.path.join(tmp, "clients.log")
    total = sum(len([n for n in SCENARIOS[s][3] if n in running and (n, s) not in broken])
                for s in scen) * rounds
    done, t0 = 0, time.time()
    for s in scen:
        kind, scheme, path, spe, _ = SCENARIOS[s]
        order = [n for n in spe if n in running and (n, s) not in broken]
        for rnd in range(rounds):
            # each round starts one peer later, so no peer always runs in the
            # same position (e.g. right after a heavy one)
            k = rnd % len(order) if order else 0
            for name in order[k:] + order[:k]:
                p, ports = running[name]
                if p.poll() is not None:
                    log("  %s died (exit %s); skipping the rest of its runs" % (name, p.returncode))
                    broken[(name, s)] = "process exited during the benchmark"
                    continue
                url = "%s://127.0.0.1:%d%s" % (scheme, ports[scheme], path)
                if a.wait_idle > 0:
                    ours = [origin.pid] + [q.pid for q, _ in running.values()]
                    bg = wait_quiet(ours, a.wait_idle)
                    if bg >= 15.0:
                        log("  machine busy (%.0f%% CPU used by others) after waiting %.0f s; "
                            "measuring anyway" % (bg, a.wait_idle))
                if a.warmup > 0:
                    cmd, _ = load_cmd(kind, url, a.warmup, tmp)
                    run_bounded(cmd, a.warmup + 30)
                cmd, lf = load_cmd(kind, url, duration, tmp)
                hwm_reset = reset_hwm(p.pid)
                k0, b0 = children_cpu_s(), busy_ticks()
                u0 = user_ticks(p.pid)
                c0, o0, w0 = cpu_ticks(p.pid), cpu_ticks(origin.pid), time.time()
                text, rc = run_bounded(cmd, duration + 30, clientlog)
                c1, o1, w1 = cpu_ticks(p.pid), cpu_ticks(origin.pid), time.time()
                u1 = user_ticks(p.pid)
                k1, b1 = children_cpu_s(), busy_ticks()
                if kind == "h2load":
                    r = parse_h2load(text, lf)
                elif kind == "s_time":
                    r = parse_stime(text, w1 - w0)
                else:
                    r = parse_wrk(text)
                r.update(scenario=s, peer=name, round=rnd + 1, exit=rc,
                         wall_s=round(w1 - w0, 3),
                         cpu_s=(c1 - c0) / CLK_TCK,
                         user_cpu_s=(u1 - u0) / CLK_TCK,
                         origin_cpu_s=(o1 - o0) / CLK_TCK,
                         client_cpu_s=round(k1 - k0, 3),
                         peak_rss_mib=rss_kb(p.pid, "VmHWM") / 1024.0,
                         peak_rss_since_start=not hwm_reset)
                n = r.get("requests") or 0
                # CPU used by anything else on the machine (other users' builds…):
                # all busy time minus proxy, origin and load generator.
                other = (b1 - b0) / CLK_TCK - r["cpu_s"] - r["origin_cpu_s"] - r["client_cpu_s"]
                r["other_cpu_pct"] = round(max(0.0, other) * 100 / (r["wall_s"] * NCPU), 1)
                r["cpu_us_per_req"] = r["cpu_s"] * 1e6 / n if n else None
                r["user_pct"] = 100.0 * r["user_cpu_s"] / r["cpu_s"] if r["cpu_s"] else None
                r["origin_cpu_us_per_req"] = r["origin_cpu_s"] * 1e6 / n if n else None
                runs.append(r)
                done += 1
                eta = (time.time() - t0) / done * (total - done)
                log("[%d/%d] %-9s r%d %-8s %9.0f rps  p50 %6s  p99 %6s  cpu %6s µs/req  "
                    "peak %5.1f MiB  bg %4.1f%%%s  (eta %.0f s)" % (
                        done, total, s, rnd + 1, name, r.get("rps") or 0,
                        fmt(r.get("p50_ms"), "ms"), fmt(r.get("p99_ms"), "ms"),
                        fmt(r.get("cpu_us_per_req"), ""), r["peak_rss_mib"], r["other_cpu_pct"],
                        ("  ERRORS %d" % r["errors"]) if r.get("errors") else "", eta))
                time.sleep(0.3)

    m = machine()
    settings = {"rounds": rounds, "duration_s": duration, "warmup_s": a.warmup,
                "wait_idle_s": a.wait_idle,
                "quick": a.quick, "peers": peers, "scenarios": scen}
    summary = summarize(runs, scen)
    md = render(m, settings, summary, idle, skipped, broken, scen, tls, runs)
    print(md)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    write(a.out + ".md", md)
    with open(a.out + ".json", "w") as f:
        json.dump({"machine": m, "settings": settings, "idle_rss_mib": idle, "tls": tls,
                   "skipped": skipped,
                   "broken": {"%s/%s" % k: v for k, v in broken.items()},
                   "summary": summary, "runs": runs}, f, indent=1)
    log("wrote %s.md and %s.json" % (a.out, a.out))
    stop_all()
    return 0


def rerender(json_path, md_path):
    with open(json_path) as f:
        d = json.load(f)
    st, runs = d["settings"], d["runs"]
    scen = [x for x in st["scenarios"] if x in SCENARIOS]
    broken = {tuple(k.split("/", 1)): v for k, v in d.get("broken", {}).items()}
    md = render(d["machine"], st, summarize(runs, scen), d["idle_rss_mib"], d["skipped"],
                broken, scen, d["tls"], runs)
    write(md_path, md)
    log("wrote %s" % md_path)
    return 0


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs, scen):
    out = {}
    for s in scen:
        rows = {}
        for r in runs:
            if r["scenario"] != s:
                continue
            rows.setdefault(r["peer"], []).append(r)
        res = {}
        for peer, rs in rows.items():
            req = sum(r.get("requests") or 0 for r in rs)
            res[peer] = {
                "rounds": len(rs),
                "rps": med([r.get("rps") for r in rs]),
                "p50_ms": med([r.get("p50_ms") for r in rs]),
                "p99_ms": med([r.get("p99_ms") for r in rs]),
                "cpu_us_per_req": med([r.get("cpu_us_per_req") for r in rs]),
                "user_pct": med([r.get("user_pct") for r in rs]),
                "origin_cpu_us_per_req": med([r.get("origin_cpu_us_per_req") for r in rs]),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
                "other_cpu_pct": med([r.get("other_cpu_pct") for r in rs]),
                "errors": sum(r.get("errors") or 0 for r in rs),
                "error_rate": (sum(r.get("errors") or 0 for r in rs) / req) if req else None,
                "protocol": rs[0].get("protocol"),
            }
        base = res.get("nginx")
        for peer, v in res.items():
            v["rps_ratio"] = (v["rps"] / base["rps"]) if base and base["rps"] and v["rps"] else None
            v["cpu_ratio"] = (v["cpu_us_per_req"] / base["cpu_us_per_req"]) \
                if base and base["cpu_us_per_req"] and v["cpu_us_per_req"] else None
        out[s] = res
    return out


def fmt(v, kind):
    if v is None:
        return "–"
    if kind == "ms":
        return "%.2f ms" % v if v < 10 else "%.1f ms" % v
    if kind == "x":
        return "%.2f" % v
    if kind == "int":
        return "%d" % round(v)
    return "%.1f" % v if v < 100 else "%d" % round(v)


def render(m, st, summary, idle, skipped, broken, scen, tls, runs):
    L = []
    L.append("# Duotone side-by-side load benchmark%s" % (" (quick)" if st["quick"] else ""))
    L.append("")
    L.append("%s · %d cores · %s · kernel %s · %s" % (m["date"], m["nproc"], m["cpu"],
                                                      m["kernel"], m["os"]))
    L.append("")
    L.append("Tools: " + " · ".join("%s: %s" % (k, v) for k, v in m["versions"].items()))
    L.append("")
    L.append("Settings: %d round(s) per scenario, peers interleaved each round (each round starting one peer later); %d s per run "
             "after %d s warm-up; medians over rounds (peak RSS: max). All on 127.0.0.1: "
             "one nginx origin (1 worker), each proxy with 2 workers/threads, upstream "
             "keep-alive, access logs off, and each telling the origin the client's address, "
             "scheme and host (X-Forwarded-For/-Proto/-Host, and X-Real-IP where the proxy "
             "sets it: Duotone, nginx, HAProxy, Traefik). Load generator shares the same %d cores."
             % (st["rounds"], st["duration_s"], st["warmup_s"], m["nproc"]))
    L.append("")
    L.append("CPU µs/req = the proxy's utime+stime (all its processes and threads, /proc/PID/stat) "
             "over the run ÷ requests completed; user = the utime share of it (the rest is "
             "kernel time: system calls and, on loopback, delivering each sent segment to its "
             "receiver). Peak RSS = VmHWM summed over its processes, reset "
             "(clear_refs) before each run. Ratios are to nginx (rps: higher is better; CPU: lower "
             "is better). origin µs/req = the origin's CPU per request meanwhile: it does the "
             "same work for every peer, so when it rises for every peer of a round (see Rounds "
             "below), the machine itself was slower then (a shared host), not the proxy; it "
             "also moves a little with how a proxy batches its writes to the origin. bg CPU = "
             "CPU used meanwhile by anything else on the machine (all busy time minus proxy, "
             "origin and load generator, % of all cores): above a few % that run was disturbed.")
    L.append("")
    for s in scen:
        res = summary.get(s, {})
        L.append("## %s" % s)
        L.append("")
        L.append(SCENARIOS[s][4] + ".")
        L.append("")
        if not res:
            L.append("(no results)")
            L.append("")
            continue
        L.append("| peer | req/s | rps ×nginx | p50 | p99 | CPU µs/req | CPU ×nginx | user | "
                 "origin µs/req | peak RSS MiB | errors | bg CPU |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for peer in PEERS:
            v = res.get(peer)
            if not v:
                continue
            errs = "%d" % v["errors"]
            if v["error_rate"] and v["error_rate"] > 0.001:
                errs += " (%.1f%%)" % (100 * v["error_rate"])
            name = peer + (" (%s)" % v["protocol"] if v.get("protocol") not in (None, "h2") else "")
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %.1f | %s | %s |" % (
                name, fmt(v["rps"], "int"), fmt(v["rps_ratio"], "x"), fmt(v["p50_ms"], "ms"),
                fmt(v["p99_ms"], "ms"), fmt(v["cpu_us_per_req"], ""), fmt(v["cpu_ratio"], "x"),
                "–" if v.get("user_pct") is None else "%.0f%%" % v["user_pct"],
                origin_cpu(s, v), v["peak_rss_mib"], errs,
                "–" if v["other_cpu_pct"] is None else "%.0f%%" % v["other_cpu_pct"]))
        notes = ["%s: %s" % (p, r) for (p, ss), r in broken.items() if ss == s]
        for n in notes:
            L.append("")
            L.append("Not measured: " + n)
        L.append("")
    L.append("## Idle RSS")
    L.append("")
    L.append("| peer | idle RSS MiB |")
    L.append("|---|---:|")
    for peer in PEERS:
        if peer in idle:
            L.append("| %s | %.1f |" % (peer, idle[peer]))
    L.append("")
    L.append("## TLS")
    L.append("")
    L.append("What Python's default client negotiates with each peer, and whether a second "
             "connection resumes the first one's session.")
    L.append("")
    L.append("| peer | protocol | cipher | resumes |")
    L.append("|---|---|---|---|")
    for peer in PEERS:
        t = tls.get(peer)
        if t is None:
            continue
        if "error" in t:
            L.append("| %s | probe failed: %s | | |" % (peer, t["error"]))
        else:
            L.append("| %s | %s | %s | %s |" % (peer, t.get("version"), t.get("cipher"),
                                                "yes" if t.get("resumed") else "no"))
    L.append("")
    L.extend(render_rounds(runs, scen))
    if skipped:
        L.append("## Skipped peers")
        L.append("")
        for p, why in skipped.items():
            L.append("- %s: %s" % (p, why))
        L.append("")
    return "\n".join(L)


def uses_origin(scenario):
    """Whether a scenario's requests reach the origin (not static files or bare handshakes)."""
    kind, _, path = SCENARIOS[scenario][:3]
    return kind != "s_time" and not path.startswith("/static/")


def origin_cpu(scenario, v):
    return fmt(v.get("origin_cpu_us_per_req"), "") if uses_origin(scenario) else "–"


def render_rounds(runs, scen):
    """Every run by round: requests/s, then CPU µs per request of the proxy and of
    the origin (the medians above hide how much rounds differ)."""
    L = ["## Rounds", "",
         "Every run by round (in a round the peers run in turn, each round starting one "
         "peer later): req/s · proxy CPU µs/req · origin CPU µs/req.", ""]
    for s in scen:
        rs = [r for r in runs if r["scenario"] == s]
        if not rs:
            continue
        n = max(r["round"] for r in rs)
        L.append("| %s | %s |" % (s, " | ".join("round %d" % (i + 1) for i in range(n))))
        L.append("|---|%s" % ("---|" * n))
        for peer in PEERS:
            cells = []
            for i in range(n):
                r = next((r for r in rs if r["peer"] == peer and r["round"] == i + 1), None)
                cells.append("–" if r is None else "%s · %s · %s" % (
                    fmt(r.get("rps"), "int"), fmt(r.get("cpu_us_per_req"), ""),
                    origin_cpu(s, r)))
            if any(c != "–" for c in cells):
                L.append("| %s | %s |" % (peer, " | ".join(cells)))
        L.append("")
    return L


def put_section(path, name, body):
    """Puts `body` into the markdown file `path` as its section `## name`:
    replaces that section (up to the next `## ` heading) if the file has one,
    else appends it. For the scripts that run after bench.py (idle_conns.py,
    c10k.py) to show their results in latest.md too."""
    try:
        with open(path) as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        lines = []
    head = "## " + name
    new = [head, ""] + body.rstrip("\n").split("\n") + [""]
    if head in lines:
        i = lines.index(head)
        j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
        lines[i:j] = new
    else:
        while lines and lines[-1] == "":
            lines.pop()
        lines += ([""] if lines else []) + new
    write(path, "\n".join(lines).rstrip("\n") + "\n")


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_all()
