//! The HTTP/1.1 lane end to end: a scripted raw upstream answers with every
//! framing (length, chunked, close-delimited, interim 1xx, garbage) and a
//! raw client pipelines, mixes proxied and static requests on one
//! connection, and checks exactly what reached the upstream. Each test runs
//! on Pingora's path too (`::pingora`, the lane off); where the two answer
//! differently by design (a close-delimited body), the test says which
//! does what.

use e2e::scripted::{big_body, head_end, header, setup};
use e2e::transport::Transport;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response read off a raw connection: status, head, decoded body.
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Reads what arrives within 10 s into `buf`; returns the count (0: closed).
async fn read(s: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
        .await
        .expect("response in time")
        .expect("read");
    buf.extend_from_slice(&chunk[..n]);
    n
}

/// Reads one response (Content-Length, chunked, or until close; none for HEAD
/// or an interim 1xx).
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, head_request: bool) -> Resp {
    let end = loop {
        if let Some(e) = head_end(buf) {
            break e;
        }
        assert!(read(s, buf).await > 0, "closed before a response head");
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let status: u16 = head[9..12].parse().unwrap();
    let mut body = Vec::new();
    if head_request || (100..200).contains(&status) {
    } else if header(&head, "transfer-encoding").is_some() {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                assert!(read(s, buf).await > 0);
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap(), 16).unwrap();
            buf.drain(..line_end + 2);
            if size == 0 {
                // Trailer section up to the empty line.
                loop {
                    if buf.starts_with(b"\r\n") {
                        buf.drain(..2);
                        break;
                    }
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        buf.drain(..i + 2);
                        continue;
                    }
                    assert!(read(s, buf).await > 0);
                }
                break;
            }
            while buf.len() < size + 2 {
                assert!(read(s, buf).await > 0);
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
    } else if let Some(len) = header(&head, "content-length") {
        let len: usize = len.parse().unwrap();
        while buf.len() < len {
            assert!(read(s, buf).await > 0);
        }
        body = buf.drain(..len).collect();
    } else {
        while read(s, buf).await > 0 {}
        body = std::mem::take(buf);
    }
    Resp { status, head, body }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n")
}

e2e::on_both_transports!(
    #[tokio::test]
    every_response_framing_is_relayed_and_connections_stay_in_step
);
async fn every_response_framing_is_relayed_and_connections_stay_in_step(t: Transport) {
    let (up, p, _www) = setup(t).await;
    let mut c = TcpStream::connect(p.ports.http).await.unwrap();
    let mut buf = Vec::new();

    c.write_all(get("/chunked").as_bytes()).await.unwrap();
    let r = read_response(&mut c, &mut buf, false).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello world");
    assert!(header(&r.head, "x-request-id").is_some(), "{}", r.head);

    // An interim 103 before the answer is relayed on both paths (RFC 9110
    // §15.2 asks a proxy to forward 1xx responses).
    c.write_all(get("/interim").as_bytes()).await.unwrap();
    let mut r = read_response(&mut c, &mut buf, false).await;
    assert_eq!(r.status, 103, "{}", r.head);
    r = read_response(&mut c, &mut buf, false).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"ok"[..]),
        "{}",
        r.head
    );

    // Trailing bytes after a response: relayed exactly, connection not reused.
    for _ in 0..2 {
        c.write_all(get("/garbage").as_bytes()).await.unwrap();
        let r = read_response(&mut c, &mut buf, false).await;
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    }

    // The upstream closes each kept-alive connection after answering: the
    // next request still succeeds on a fresh one.
    for _ in 0..5 {
        c.write_all(get("/bye").as_bytes()).await.unwrap();
        let r = read_response(&mut c, &mut buf, false).await;
        assert_eq!((r.status, r.body.as_slice()), (200, &b"bye"[..]));
    }

    // Head and body apart: one response, whole.
    for _ in 0..2 {
        c.write_all(get("/split").as_bytes()).await.unwrap();
        let r = read_response(&mut c, &mut buf, false).await;
        assert_eq!((r.status, r.body.as_slice()), (200, &b"later"[..]));
    }

    // A body larger than one read, relayed byte for byte.
    c.write_all(get("/big").as_bytes()).await.unwrap();
    let r = read_response(&mut c, &mut buf, false).await;
    assert_eq!(r.status, 200);
    assert!(r.body == big_body().as_bytes(), "{} bytes", r.body.len());

    c.write_all(get("/bad").as_bytes()).await.unwrap();
    let r = read_response(&mut c, &mut buf, false).await;
    assert_eq!(r.status, 502, "{}", r.head);
    assert!(buf.is_empty());

    // The upstream closes after a head that promised a body: nothing has
    // reached the client yet (the head waits for the body's first bytes),
    // so it gets a clean 502 on both paths.
    let mut c = TcpStream::connect(p.ports.http).await.unwrap();
    let mut buf = Vec::new();
    c.write_all(get("/cut").as_bytes()).await.unwrap();
    let r = read_response(&mut c, &mut buf, false).await;
    assert_eq!(r.status, 502, "{}", r.head);

    // Close-delimited: all of it reaches the client. The lane relays it as
    // it is (the client is told, and gets EOF); Pingora's path re-frames it
    // chunked and keeps the connection.
    let mut c = TcpStream::connect(p.ports.http).await.unwrap();
    let mut buf = Vec::new();
    c.write_all(get("/close").as_bytes()).await.unwrap();
    let r = read_response(&mut c, &mut buf, false).await;
    assert_eq!(r.status, 200);
    if t == Transport::Pingora {
        assert_eq!(
            header(&r.head, "transfer-encoding"),
            Some("chunked"),
            "{}",
            r.head
        );
    } else {
        assert_eq!(header(&r.head, "connection"), Some("close"), "{}", r.head);
    }
    assert_eq!(r.body, b"until the end");
    drop(up);
}

e2e::on_both_transports!(
    #[tokio::test]
    pipelined_requests_bodies_and_handoff_on_one_connection
);
async fn pipelined_requests_bodies_and_handoff_on_one_connection(t: Transport) {
    let (up, p, _www) = setup(t).await;
    let mut c = TcpStream::connect(p.ports.http).await.unwrap();
    let mut buf = Vec::new();
    // Three pipelined requests in one write: GET, POST with a body, HEAD.
    let batch = format!(
        "{}POST /form HTTP/1.1\r\nHost: app.test\r\nContent-Length: 9\r\n\r\nname=duo!{}",
        get("/one"),
        "HEAD /three HTTP/1.1\r\nHost: app.test\r\n\r\n"
    );
    c.write_all(batch.as_bytes()).await.unwrap();
    let r1 = read_response(&mut c, &mut buf, false).await;
    assert!(String::from_utf8_lossy(&r1.body).starts_with("GET /one HTTP/1.1\r\n"));
    let r2 = read_response(&mut c, &mut buf, false).await;
    let echoed = String::from_utf8_lossy(&r2.body).into_owned();
    assert!(echoed.starts_with("POST /form HTTP/1.1\r\n"), "{echoed}");
    assert!(echoed.ends_with("\r\n\r\nname=duo!"), "{echoed}");
    let r3 = read_response(&mut c, &mut buf, true).await;
    assert_eq!(r3.status, 200);
    assert!(header(&r3.head, "content-length").is_some());

    // A static file (also on the lane), a redirect (handed to Pingora's
    // path), then a proxied request again (back on the lane), one connection.
    c.write_all(get("/static/a.txt").as_bytes()).await.unwrap();
    let r = read_response(&mut c, &mut buf, false).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"static file\n"[..]));
    c.write_all(get("/old/page").as_bytes()).await.unwrap();
    let r = read_response(&mut c, &mut buf, false).await;
    assert_eq!(r.status, 301);
    assert_eq!(
        header(&r.head, "location"),
        Some("https://new.test/old/page")
    );
    c.write_all(get("/after").as_bytes()).await.unwrap();
    let r = read_response(&mut c, &mut buf, false).await;
    assert!(String::from_utf8_lossy(&r.body).starts_with("GET /after HTTP/1.1\r\n"));

    // What reached the upstream: forwarding headers set by the edge, the
    // client's spoofed ones and hop-by-hop ones gone.
    let mut c = TcpStream::connect(p.ports.http).await.unwrap();
    let mut buf = Vec::new();
    c.write_all(
        b"GET /h?q=1 HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Request-Id: trace-42\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\n",
    )
    .await
    .unwrap();
    let r = read_response(&mut c, &mut buf, false).await;
    assert_eq!(header(&r.head, "x-request-id"), Some("trace-42"));
    let seen = up.last();
    let head = seen.to_ascii_lowercase();
    assert!(head.starts_with("get /h?q=1 http/1.1\r\n"), "{seen}");
    assert_eq!(
        header(&seen, "x-forwarded-for"),
        Some("127.0.0.1"),
        "{seen}"
    );
    assert_eq!(header(&seen, "x-real-ip"), Some("127.0.0.1"));
    assert_eq!(header(&seen, "x-forwarded-proto"), Some("http"));
    assert_eq!(header(&seen, "x-forwarded-host"), Some("app.test"));
    assert_eq!(header(&seen, "x-request-id"), Some("trace-42"));
    assert_eq!(header(&seen, "accept"), Some("*/*"));
    assert!(
        !head.contains("6.6.6.6") && !head.contains("connection:"),
        "{seen}"
    );

    // Connection: close from the client is honoured after the response.
    c.write_all(b"GET /last HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut c, &mut buf, false).await;
    assert_eq!(header(&r.head, "connection"), Some("close"));
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .unwrap();
    assert_eq!(n, 0);
    // All of it over very few upstream connections (kept alive per worker).
    let conns = *up.conns.lock().unwrap();
    assert!(conns <= 4, "{conns} upstream connections");
}

e2e::on_both_transports!(
    #[tokio::test]
    requests_after_an_idle_pause_are_served_on_the_same_connection
);
/// The lane gives up a keep-alive connection's request state after 1 s
/// without a request and sets it up again for the next one: requests that
/// come after longer pauses are served as before, proxied and static.
async fn requests_after_an_idle_pause_are_served_on_the_same_connection(t: Transport) {
    let (up, p, _www) = setup(t).await;
    let mut c = TcpStream::connect(p.ports.http).await.unwrap();
    let mut buf = Vec::new();
    for path in ["/one", "/two", "/static/a.txt", "/three"] {
        c.write_all(get(path).as_bytes()).await.unwrap();
        let r = read_response(&mut c, &mut buf, false).await;
        assert_eq!(r.status, 200, "{path}: {}", r.head);
        if !path.starts_with("/static/") {
            let echoed = String::from_utf8_lossy(&r.body).into_owned();
            assert!(
                echoed.starts_with(&format!("GET {path} HTTP/1.1\r\n")),
                "{echoed}"
            );
        }
        // Idle past the lane's 1 s grace (the scenario, not a timing
        // assertion): the next request finds the connection idle.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    drop(up);
}

/// A burst of requests in flight at once leaves its upstream connections in
/// the pool: the next burst of the same size opens none. A pool of a fixed
/// 256 per worker closed the rest after one request, so that at 10 000
/// clients (`benches/load/c10k.py`) most requests opened a new connection.
/// The lane's own pool (Pingora's path has its own).
#[tokio::test]
async fn a_burst_of_requests_leaves_its_upstream_connections_pooled() {
    const N: u64 = 600;
    let up = e2e::upstream::Upstream::start("app").await;
    let config = format!(
        r#"
[server]
http = "{{http}}"
admin = "{{admin}}"
state_dir = "{{state}}"
threads = 1

[[sites]]
hosts = ["app.test"]
  [[sites.routes]]
  path = "/"
  service = "app"

[services.app]
live = "blue"
colors.blue = ["{}"]
"#,
        up.member()
    );
    let p = e2e::proxy::Proxy::start(&config).await;
    let addr = p
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut clients = Vec::new();
    for _ in 0..N {
        clients.push((
            TcpStream::connect(&addr).await.expect("connect"),
            Vec::new(),
        ));
    }
    let mut opened = 0;
    for round in 1..=2 {
        up.hold();
        for (c, _) in clients.iter_mut() {
            c.write_all(get("/hold").as_bytes()).await.unwrap();
        }
        // Every request is at the upstream, each on its own connection.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while up.held() < N * round {
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {N} arrived",
                up.held()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        up.release_held();
        for (c, buf) in clients.iter_mut() {
            assert_eq!(read_response(c, buf, false).await.status, 200);
        }
        if round == 1 {
            opened = up.conns();
            assert_eq!(opened, N, "one upstream connection per request in flight");
        }
    }
    assert_eq!(
        up.conns(),
        opened,
        "the second burst found its connections in the pool"
    );
}
