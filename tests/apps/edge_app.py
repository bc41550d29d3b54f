"""A small WSGI app (standard library only) for the end-to-end tests of
request and response buffering and of uwsgi members (issue #18), run under
gunicorn (`edge_app:application`) and uWSGI (`--wsgi-file edge_app.py`).

Views:
  /                  "ok"
  /healthz           "ok"
  /color             the COLOR environment variable, also in X-Upstream
  /big?mb=N|kb=N     N MiB (or KiB) of the fixed pattern `block()` repeated,
                     with Content-Length, written 64 KiB at a time
  /upload            (any method) reads the whole body and answers JSON: its
                     length and sha256, and the CONTENT_LENGTH,
                     HTTP_TRANSFER_ENCODING and HTTP_X_FORWARDED_PORT it saw
  /sse?key=K&n=N     text/event-stream: event 1 at once, then event i
                     (2..N) only once the test has created the file
                     `$DUOTONE_APP_DIR/K-i` (the test's go-ahead)
  /stream-no-buffer  the same as /sse (text/plain lines) with
                     `X-Accel-Buffering: no`
  /env?…             JSON of the CGI variables the request came with

When DUOTONE_APP_DIR is set, the app appends a line to
`$DUOTONE_APP_DIR/events` when a /big or /upload view starts and ends
("big start", "upload end pid=…"), so a test can see what reached the app
and when, without timing anything.
"""

import hashlib
import json
import os
import time
from urllib.parse import parse_qs

BLOCK = 64 * 1024
COLOR = os.environ.get("COLOR", "")
APP_DIR = os.environ.get("DUOTONE_APP_DIR", "")
# How long a streaming view waits for the test's go-ahead before giving up
# (a failure limit, not a timing).
GO_AHEAD_LIMIT_S = 60.0


def block():
    """64 KiB of bytes 0..255 repeated: what /big sends, BLOCK at a time."""
    return bytes(range(256)) * (BLOCK // 256)


PATTERN = block()


def event(what):
    if not APP_DIR:
        return
    line = "%s pid=%d\n" % (what, os.getpid())
    fd = os.open(os.path.join(APP_DIR, "events"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def query(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def text(start_response, body, status="200 OK", headers=()):
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain"),
                            ("Content-Length", str(len(data)))] + list(headers))
    return [data]


def as_json(start_response, value):
    data = json.dumps(value, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(data)))])
    return [data]


def wsgi_str(value):
    """A WSGI environ string (bytes as latin-1) as the UTF-8 text it holds."""
    try:
        return value.encode("latin-1").decode("utf-8", "replace")
    except (UnicodeEncodeError, AttributeError):
        return value


def read_body(environ):
    stream = environ["wsgi.input"]
    h = hashlib.sha256()
    n = 0
    length = environ.get("CONTENT_LENGTH", "")
    if length:
        left = int(length)
        while left > 0:
            chunk = stream.read(min(left, BLOCK))
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
            left -= len(chunk)
    else:
        # Chunked (gunicorn decodes it and ends the stream at the last chunk).
        while True:
            chunk = stream.read(BLOCK)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def big(environ, start_response):
    q = query(environ)
    size = int(q.get("mb", "0")) * 1024 * 1024 + int(q.get("kb", "0")) * 1024
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(size))])

    def body():
        event("big start")
        left = size
        while left > 0:
            n = min(left, BLOCK)
            yield PATTERN[:n]
            left -= n
        event("big end")

    return body()


def upload(environ, start_response):
    event("upload start")
    n, digest = read_body(environ)
    event("upload end")
    return as_json(start_response, {
        "len": n,
        "sha256": digest,
        "method": environ.get("REQUEST_METHOD", ""),
        "content_length": environ.get("CONTENT_LENGTH", ""),
        "transfer_encoding": environ.get("HTTP_TRANSFER_ENCODING", ""),
        "forwarded_port": environ.get("HTTP_X_FORWARDED_PORT", ""),
        "color": COLOR,
    })


def wait_for_go_ahead(key, i):
    path = os.path.join(APP_DIR, "%s-%d" % (key, i))
    end = time.monotonic() + GO_AHEAD_LIMIT_S
    while time.monotonic() < end:
        if os.path.exists(path):
            return True
        time.sleep(0.01)
    return False


def streaming(environ, start_response, content_type, headers, fmt):
    q = query(environ)
    key, n = q.get("key", "k"), int(q.get("n", "3"))
    start_response("200 OK", [("Content-Type", content_type), ("Cache-Control", "no-cache")]
                   + headers)

    def body():
        yield (fmt % 1).encode()
        for i in range(2, n + 1):
            if not wait_for_go_ahead(key, i):
                yield (fmt % 0).encode()  # no go-ahead: event 0 says so, and the stream ends
                return
            yield (fmt % i).encode()

    return body()


ENV_KEYS = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "REQUEST_URI", "SERVER_PROTOCOL",
            "SERVER_NAME", "SERVER_PORT", "REMOTE_ADDR", "REMOTE_PORT", "CONTENT_TYPE",
            "CONTENT_LENGTH", "HTTPS", "REQUEST_SCHEME", "wsgi.url_scheme")


def env(environ, start_response):
    out = {k: wsgi_str(environ[k]) for k in ENV_KEYS if k in environ}
    for k, v in environ.items():
        if k.startswith("HTTP_"):
            out[k] = wsgi_str(v)
    out["color"] = COLOR
    return as_json(start_response, out)


def application(environ, start_response):
    path = wsgi_str(environ.get("PATH_INFO", ""))
    if path in ("/", "/healthz"):
        return text(start_response, "ok")
    if path == "/color":
        return text(start_response, COLOR, headers=[("X-Upstream", COLOR)])
    if path == "/big":
        return big(environ, start_response)
    if path == "/upload":
        return upload(environ, start_response)
    if path == "/sse":
        return streaming(environ, start_response, "text/event-stream", [],
                         "data: event %d\n\n")
    if path == "/stream-no-buffer":
        return streaming(environ, start_response, "text/plain",
                         [("X-Accel-Buffering", "no")], "line %d\n")
    if path == "/env" or path.startswith("/env/"):
        return env(environ, start_response)
    return text(start_response, "not found: %s\n" % path, status="404 Not Found")
