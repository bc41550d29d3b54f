//! The upstream side of issue 16, on every path: the lane's HTTP/1.1 and
//! HTTP/2 clients, and Pingora's path (HTTP/2 streams with a body, chunked
//! uploads, and everything with `DUOTONE_LANE=off`).
//!
//! - A request is sent to the application twice only when its method is
//!   GET, HEAD, OPTIONS or TRACE: a pooled connection that closes after it
//!   was sent a POST, PATCH, PUT, DELETE or unknown-method request gets the
//!   client a 502, and the application saw it once (counted at arrival).
//! - Hop-by-hop response fields, and those the upstream's `Connection`
//!   nominates, are removed and the response relayed.
//! - A client that stalls its request body gets a 408, and the upstream
//!   member is not blamed (not ejected, no connect error, no 5xx).

use bytes::Bytes;
use e2e::proxy::Proxy;
use e2e::scripted::{head_end, header};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the upstream does with the requests on a connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answers the first request of each connection; reads the next one
    /// whole, then closes without sending a byte.
    FirstOnly,
    /// Answers every request, with hop-by-hop fields chosen by path
    /// ([`hop_fields`]).
    KeepAlive,
}

/// One request as it arrived.
#[derive(Clone, Debug)]
struct Arrival {
    method: String,
    path: String,
    /// Its place on its connection (0: the connection's first request).
    nth: usize,
}

/// A raw HTTP/1.1 upstream that records every request at arrival, on two
/// ports (two members of the pool: a retry could go to the other one).
struct Upstream {
    addrs: [SocketAddr; 2],
    seen: Arc<Mutex<Vec<Arrival>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Extra response fields by path, and whether they ask to close.
fn hop_fields(path: &str) -> &'static str {
    match path {
        "/secret" => "Connection: X-Secret\r\nX-Secret: 1\r\n",
        "/many" => "Connection: keep-alive, X-A, x-b\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\n",
        "/upgrade" => "Connection: Upgrade\r\nUpgrade: h2c\r\n",
        // Asks to close, but keeps the socket open: a proxy that reused it
        // anyway would be seen doing so.
        "/close" => "Connection: close\r\n",
        "/ka" => "Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n",
        _ => "",
    }
}

impl Upstream {
    async fn start(mode: Mode) -> Upstream {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(l.local_addr().unwrap());
            let seen = seen.clone();
            tasks.push(tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    tokio::spawn(serve(s, mode, seen.clone()));
                }
            }));
        }
        Upstream {
            addrs: [addrs[0], addrs[1]],
            seen,
            tasks,
        }
    }

    /// How many requests for `path` arrived.
    fn arrivals(&self, path: &str) -> Vec<Arrival> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|a| a.path == path).cloned().collect()
    }
}

async fn serve(mut s: TcpStream, mode: Mode, seen: Arc<Mutex<Vec<Arrival>>>) {
    let mut buf = Vec::new();
    let mut nth = 0;
    loop {
        let end = loop {
            if let Some(e) = head_end(&buf) {
                break e;
            }
            if !read_more(&mut s, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut line = head.split(' ');
        let method = line.next().unwrap_or("").to_string();
        let path = line.next().unwrap_or("").to_string();
        seen.lock().unwrap().push(Arrival {
            method: method.clone(),
            path: path.clone(),
            nth,
        });
        // The body: Content-Length, or chunked up to its last chunk.
        let body_end = if header(&head, "transfer-encoding").is_some() {
            loop {
                if let Some(i) = buf[end..].windows(5).position(|w| w == b"0\r\n\r\n") {
                    break end + i + 5;
                }
                if !read_more(&mut s, &mut buf).await {
                    return;
                }
            }
        } else {
            let len: usize = header(&head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < end + len {
                if !read_more(&mut s, &mut buf).await {
                    return;
                }
            }
            end + len
        };
        buf.drain(..body_end);
        if mode == Mode::FirstOnly && nth > 0 {
            return;
        }
        nth += 1;
        let body = format!("{method} {path}");
        let extra = match mode {
            Mode::KeepAlive => hop_fields(&path),
            Mode::FirstOnly => "",
        };
        let mut resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Kept: yes\r\n{extra}\r\n",
            body.len()
        );
        if method != "HEAD" {
            resp.push_str(&body);
        }
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// A site `app.test` proxying everything to `members`.
fn config(members: &[SocketAddr], body_timeout: &str, read_timeout: &str) -> String {
    let members = members
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[server]
http = "{{http}}"
admin = "{{admin}}"
state_dir = "{{state}}"

[limits]
body_timeout = "{body_timeout}"

[[sites]]
hosts = ["app.test"]
  [[sites.routes]]
  path = "/"
  service = "app"

[services.app]
colors.blue = [{members}]
read_timeout = "{read_timeout}"
"#
    )
}

/// The proxy in front of `up` (both its members, or its first), with the
/// lane on or off.
async fn proxy(
    up: &Upstream,
    both: bool,
    lane: bool,
    body_timeout: &str,
    read_timeout: &str,
) -> Proxy {
    let members = if both { &up.addrs[..] } else { &up.addrs[..1] };
    let env: &[(&str, &str)] = if lane {
        &[]
    } else {
        &[("DUOTONE_LANE", "off")]
    };
    Proxy::start_with_env(&config(members, body_timeout, read_timeout), env).await
}

/// A response read off a raw HTTP/1.1 connection.
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Reads one response (Content-Length or until close; no body for HEAD);
/// `None` when the connection closed before a response head.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, head_request: bool) -> Option<Resp> {
    let end = loop {
        if let Some(e) = head_end(buf) {
            break e;
        }
        if read(s, buf).await == 0 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let status = head[9..12].parse().unwrap();
    let body = match header(&head, "content-length") {
        _ if head_request => Vec::new(),
        Some(len) => {
            let len: usize = len.parse().unwrap();
            while buf.len() < len {
                assert!(read(s, buf).await > 0, "body cut short");
            }
            buf.drain(..len).collect()
        }
        None => {
            while read(s, buf).await > 0 {}
            std::mem::take(buf)
        }
    };
    Some(Resp { status, head, body })
}

/// Reads what arrives within 20 s into `buf`; returns the count (0: closed).
async fn read(s: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk))
        .await
        .expect("response in time")
        .unwrap_or(0);
    buf.extend_from_slice(&chunk[..n]);
    n
}

/// An HTTP/1.1 request with a small body when `body` is not empty.
fn h1_request(method: &str, path: &str, body: &str) -> String {
    let length = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    format!("{method} {path} HTTP/1.1\r\nHost: app.test\r\n{length}\r\n{body}")
}

use e2e::h2c::connect as h2_connect;

/// One HTTP/2 request, with Content-Length when it has a body.
async fn h2_call(
    send: &h2::client::SendRequest<Bytes>,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, http::HeaderMap, Vec<u8>) {
    let len = body.len().to_string();
    let headers: &[(&str, &str)] = if body.is_empty() {
        &[]
    } else {
        &[("content-length", &len)]
    };
    e2e::h2c::call(send, method, path, headers, body).await
}

/// The methods checked, and whether each may reach the application twice.
const METHODS: [(&str, bool); 7] = [
    ("POST", false),
    ("PATCH", false),
    ("DELETE", false),
    ("PUT", false),
    ("FOO", false),
    ("GET", true),
    ("HEAD", true),
];

/// Checks one request meant for a reused connection that the upstream
/// then closes: `Some` when it landed on one and went as its method says
/// (panics otherwise), `None` when the proxy used a fresh connection
/// instead (nothing shown: the caller tries again).
fn check_replay(up: &Upstream, method: &str, replay: bool, path: &str, status: u16) -> Option<()> {
    let seen = up.arrivals(path);
    assert!(!seen.is_empty(), "{method} {path} never arrived");
    if seen[0].nth == 0 {
        return None;
    }
    if replay {
        // Once on the reused connection, once more on a fresh one.
        assert_eq!(status, 200, "{method} {path}");
        assert_eq!(seen.len(), 2, "{method} {path}: {seen:?}");
        assert_eq!(seen[1].nth, 0, "{method} {path}: {seen:?}");
    } else {
        assert_eq!(status, 502, "{method} {path}");
        assert_eq!(seen.len(), 1, "{method} {path} reached the upstream twice");
    }
    assert!(seen.iter().all(|a| a.method == method), "{seen:?}");
    Some(())
}

/// HTTP/1.1: a warm-up request leaves a kept-alive upstream connection in
/// the pool; the request under test reuses it, and it closes.
async fn replay_h1(p: &Proxy, up: &Upstream, tag: &str, with_body: bool) {
    for (method, replay) in METHODS {
        let mut done = false;
        for round in 0..20 {
            let mut c = TcpStream::connect(p.ports.http).await.unwrap();
            let mut buf = Vec::new();
            let warm = format!("/warm/{tag}/{method}/{round}");
            c.write_all(h1_request("GET", &warm, "").as_bytes())
                .await
                .unwrap();
            let r = read_response(&mut c, &mut buf, false)
                .await
                .expect("warm-up");
            assert_eq!(r.status, 200, "{}", r.head);
            let path = format!("/t/{tag}/{method}/{round}");
            let body = if with_body && method != "GET" && method != "HEAD" {
                "a=1"
            } else {
                ""
            };
            c.write_all(h1_request(method, &path, body).as_bytes())
                .await
                .unwrap();
            let r = read_response(&mut c, &mut buf, method == "HEAD")
                .await
                .expect("a response");
            if method == "GET" && r.status == 200 {
                assert_eq!(r.body, format!("GET {path}").as_bytes());
            }
            if check_replay(up, method, replay, &path, r.status).is_some() {
                done = true;
                break;
            }
        }
        assert!(done, "{tag} {method}: never sent on a reused connection");
    }
}

/// HTTP/2: the same over one connection's streams; `with_body`: requests
/// carry a body (Pingora's path even with the lane on), warm-up included.
async fn replay_h2(p: &Proxy, up: &Upstream, tag: &str, with_body: bool) {
    let c = h2_connect(p.ports.http).await;
    for (method, replay) in METHODS {
        let mut done = false;
        for round in 0..20 {
            let body: &[u8] = if with_body && method != "GET" && method != "HEAD" {
                b"a=1"
            } else {
                b""
            };
            // GET: replayed itself if it lands on a pooled connection
            // that then closes; with a body, on Pingora's path.
            let warm = format!("/warm/{tag}/{method}/{round}");
            let (status, _, _) = h2_call(&c, "GET", &warm, body).await;
            assert_eq!(status, 200);
            let path = format!("/t/{tag}/{method}/{round}");
            let (status, _, _) = h2_call(&c, method, &path, body).await;
            if check_replay(up, method, replay, &path, status).is_some() {
                done = true;
                break;
            }
        }
        assert!(done, "{tag} {method}: never sent on a reused connection");
    }
}

#[tokio::test]
async fn requests_are_replayed_only_when_their_method_allows_on_every_path() {
    for lane in [true, false] {
        let up = Upstream::start(Mode::FirstOnly).await;
        let p = proxy(&up, true, lane, "10s", "5s").await;
        let tag = if lane { "lane" } else { "pingora" };
        replay_h1(&p, &up, &format!("{tag}-h1"), true).await;
        replay_h2(&p, &up, &format!("{tag}-h2"), false).await;
        // Streams with a body: Pingora's path whatever the lane's setting.
        replay_h2(&p, &up, &format!("{tag}-h2-body"), true).await;
    }
}

/// The response fields a client must never see from `path`'s answer
/// (lower case), besides Connection nominations.
fn stripped(path: &str) -> &'static [&'static str] {
    match path {
        "/secret" => &["x-secret"],
        "/many" => &["x-a", "x-b", "keep-alive"],
        "/upgrade" => &["upgrade"],
        "/ka" => &["keep-alive", "proxy-connection"],
        _ => &[],
    }
}

const HOP_PATHS: [&str; 5] = ["/secret", "/many", "/upgrade", "/close", "/ka"];

#[tokio::test]
async fn hop_by_hop_response_fields_are_removed_and_the_response_relayed() {
    for lane in [true, false] {
        let up = Upstream::start(Mode::KeepAlive).await;
        let p = proxy(&up, false, lane, "10s", "5s").await;
        let tag = if lane { "lane" } else { "pingora" };

        // HTTP/1.1, one client connection.
        let mut c = TcpStream::connect(p.ports.http).await.unwrap();
        let mut buf = Vec::new();
        for path in HOP_PATHS {
            c.write_all(h1_request("GET", path, "").as_bytes())
                .await
                .unwrap();
            let r = read_response(&mut c, &mut buf, false)
                .await
                .expect("a response");
            assert_eq!(r.status, 200, "{tag} {path}: {}", r.head);
            assert_eq!(r.body, format!("GET {path}").as_bytes(), "{tag} {path}");
            assert_eq!(header(&r.head, "x-kept"), Some("yes"), "{}", r.head);
            for name in stripped(path) {
                assert!(header(&r.head, name).is_none(), "{tag} {path}: {}", r.head);
            }
            // Only the proxy's own Connection field, if any.
            if let Some(v) = header(&r.head, "connection") {
                let v = v.to_ascii_lowercase();
                assert!(
                    v == "keep-alive" || v == "close",
                    "{tag} {path}: {}",
                    r.head
                );
            }
            if path == "/many" {
                assert_eq!(header(&r.head, "x-c"), Some("3"), "{}", r.head);
            }
        }

        // HTTP/2 (h2 refuses connection-specific fields outright).
        let h2 = h2_connect(p.ports.http).await;
        for path in HOP_PATHS {
            let (status, headers, body) = h2_call(&h2, "GET", path, b"").await;
            assert_eq!(status, 200, "{tag} h2 {path}");
            assert_eq!(body, format!("GET {path}").as_bytes());
            assert_eq!(headers["x-kept"], "yes");
            for name in stripped(path) {
                assert!(!headers.contains_key(*name), "{tag} h2 {path}: {headers:?}");
            }
            assert!(!headers.contains_key("connection"), "{headers:?}");
            if path == "/many" {
                assert_eq!(headers["x-c"], "3");
            }
        }

        // Connection: close from the upstream: the connection that said
        // it is never sent another request (the next one arrives first on
        // a fresh connection), on both protocols.
        let mut c = TcpStream::connect(p.ports.http).await.unwrap();
        let mut buf = Vec::new();
        for round in 0..3 {
            let path = format!("/after-close/{round}");
            for p in ["/close", path.as_str()] {
                c.write_all(h1_request("GET", p, "").as_bytes())
                    .await
                    .unwrap();
                let r = read_response(&mut c, &mut buf, false)
                    .await
                    .expect("a response");
                assert_eq!(r.status, 200, "{tag} {p}: {}", r.head);
            }
            assert_eq!(up.arrivals(&path)[0].nth, 0, "{tag}: reused after close");
            let path = format!("/after-close-h2/{round}");
            assert_eq!(h2_call(&h2, "GET", "/close", b"").await.0, 200);
            assert_eq!(h2_call(&h2, "GET", &path, b"").await.0, 200);
            assert_eq!(up.arrivals(&path)[0].nth, 0, "{tag} h2: reused after close");
        }
    }
}

/// The member is up and not ejected, no connect error was counted, and no
/// response was counted as a 5xx.
async fn upstream_not_blamed(p: &Proxy) {
    let r = e2e::client::admin("GET", &p.admin_url("/v1/services/app"), None, None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let member = &v["colors"]["blue"]["members"][0];
    assert_eq!(member["ejected"], false, "{v}");
    assert_eq!(member["healthy"], true, "{v}");
    let r = e2e::client::admin("GET", &p.admin_url("/metrics"), None, None)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&r.body).into_owned();
    for line in text.lines() {
        let value = line.rsplit(' ').next().unwrap_or("");
        if line.starts_with("duotone_upstream_connect_errors_total{")
            || (line.starts_with("duotone_requests_total{") && line.contains("\"5xx\""))
        {
            assert_eq!(value, "0", "{line}");
        }
    }
}

/// Sends `head` and `part` of a body, then nothing: the proxy must answer
/// 408 (or just close), never a 5xx.
async fn stall_h1(p: &Proxy, head: &str, part: &str) {
    let mut c = TcpStream::connect(p.ports.http).await.unwrap();
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(part.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    if let Some(r) = read_response(&mut c, &mut buf, false).await {
        assert_eq!(r.status, 408, "{head:?}: {}", r.head);
        assert_eq!(header(&r.head, "connection"), Some("close"), "{}", r.head);
    }
}

#[tokio::test]
async fn a_stalled_request_body_is_the_clients_timeout_not_the_upstreams() {
    // body_timeout shorter than the upstream's read timeout, then longer
    // (the upstream, waiting for the body, must not time out first).
    for (lane, body_timeout, read_timeout) in [
        (true, "1s", "5s"),
        (false, "1s", "5s"),
        (true, "2s", "1s"),
        (false, "2s", "1s"),
    ] {
        let up = Upstream::start(Mode::KeepAlive).await;
        let p = proxy(&up, false, lane, body_timeout, read_timeout).await;
        // A small Content-Length body (read whole by the lane before it
        // connects), and a chunked one (Pingora's path).
        stall_h1(
            &p,
            "POST /small HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\n",
            "hello",
        )
        .await;
        stall_h1(
            &p,
            "POST /chunked HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n",
            "5\r\nhello\r\n",
        )
        .await;
        assert!(up.arrivals("/small").len() <= 1);
        // HTTP/2: a stream with half its body (Pingora's path).
        let h2 = h2_connect(p.ports.http).await;
        let req = http::Request::builder()
            .method("POST")
            .uri("http://app.test/h2-stalled")
            .header("content-length", "10")
            .body(())
            .unwrap();
        let mut send = h2.clone().ready().await.unwrap();
        let (resp, mut stream) = send.send_request(req, false).unwrap();
        stream
            .send_data(Bytes::from_static(b"hello"), false)
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(20), resp)
            .await
            .expect("an answer in time");
        if let Ok(resp) = resp {
            assert_eq!(resp.status(), 408, "lane {lane}, body {body_timeout}");
        }
        upstream_not_blamed(&p).await;
        // And the upstream still serves.
        let (status, _, body) = h2_call(&h2, "GET", "/after", b"").await;
        assert_eq!((status, body.as_slice()), (200, &b"GET /after"[..]));
        drop(stream);
    }
}
