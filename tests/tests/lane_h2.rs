//! HTTP/2 streams on the lane end to end (cleartext prior knowledge, as
//! TLS ALPN h2 takes the same path once decrypted): proxied streams with
//! every upstream framing, many at once on one connection, HEAD, upstream
//! failures as 502, and the streams the lane leaves to Pingora's path
//! (request bodies, static files, redirects) on the same connection. It runs
//! on Pingora's path too (`::pingora`, the lane off), which answers a body
//! cut short by resetting the stream after the head.

use bytes::Bytes;
use e2e::scripted::{big_body, setup};

use e2e::h2c::{call, call_cut, connect};
use e2e::transport::Transport;

async fn get(send: &h2::client::SendRequest<Bytes>, path: &str) -> (u16, http::HeaderMap, Vec<u8>) {
    call(send, "GET", path, &[], b"").await
}

e2e::on_both_transports!(
    #[tokio::test]
    h2_streams_are_proxied_with_every_framing
);
async fn h2_streams_are_proxied_with_every_framing(t: Transport) {
    let (up, p, _www) = setup(t).await;
    let c = connect(p.ports.http).await;

    // The upstream gets one HTTP/1.1 head: Host from :authority, split
    // cookies joined, forwarding headers set; the client gets no
    // connection-specific headers back.
    let (status, headers, body) = call(
        &c,
        "GET",
        "/echo?q=1",
        &[
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("x-request-id", "h2-test-1"),
        ],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let seen = String::from_utf8(body).unwrap();
    assert!(seen.starts_with("GET /echo?q=1 HTTP/1.1\r\n"), "{seen}");
    let port = format!("x-forwarded-port: {}\r\n", p.ports.http.port());
    for line in [
        "host: app.test\r\n",
        "cookie: a=1; b=2\r\n",
        "x-forwarded-proto: http\r\n",
        "x-forwarded-host: app.test\r\n",
        "x-forwarded-for: 127.0.0.1\r\n",
        "x-request-id: h2-test-1\r\n",
        &port,
    ] {
        assert!(seen.contains(line), "{line:?} missing from {seen}");
    }
    assert_eq!(seen.matches("cookie:").count(), 1, "{seen}");
    assert_eq!(headers["x-request-id"], "h2-test-1");
    assert!(headers.contains_key("date"));

    let (status, headers, body) = get(&c, "/chunked").await;
    assert_eq!((status, body.as_slice()), (200, &b"hello world"[..]));
    assert!(!headers.contains_key("transfer-encoding"), "{headers:?}");
    assert_eq!(get(&c, "/close").await.2, b"until the end");
    assert_eq!(get(&c, "/interim").await.2, b"ok");
    assert_eq!(get(&c, "/split").await.2, b"later");
    // More than the initial flow-control window: sent as the client
    // releases capacity.
    assert_eq!(get(&c, "/big").await.2, big_body().as_bytes());
    let (status, headers, body) = call(&c, "HEAD", "/big", &[], b"").await;
    assert_eq!(status, 200);
    assert!(body.is_empty());
    assert_eq!(headers["content-length"], big_body().len().to_string());

    // Upstream failures: a clean 502 on that stream only, on both paths
    // (the head of `/cut`, a 200 promising 5 bytes, waits for the body).
    for path in ["/bad", "/cut"] {
        let (status, _, body) = call_cut(&c, "GET", path, &[], b"").await;
        assert_eq!(status, 502, "{path}");
        assert!(String::from_utf8_lossy(&body.expect("body")).contains("bad gateway"));
    }

    // Many streams at once on the one connection, each its own answer.
    let all = (0..40).map(|i| {
        let c = c.clone();
        async move { (i, get(&c, &format!("/many/{i}")).await) }
    });
    for (i, (status, _, body)) in futures_util::future::join_all(all).await {
        assert_eq!(status, 200);
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.starts_with(&format!("GET /many/{i} HTTP/1.1\r\n")),
            "{text}"
        );
    }

    // Pingora's path, same connection: a request body (split cookies
    // joined there too), a static file, a redirect.
    let form = [
        ("content-length", "12"),
        ("cookie", "a=1"),
        ("cookie", "b=2"),
    ];
    let (status, _, body) = call(&c, "POST", "/form", &form, b"name=duotone").await;
    assert_eq!(status, 200);
    let seen = String::from_utf8(body).unwrap();
    assert!(seen.starts_with("POST /form HTTP/1.1\r\n"), "{seen}");
    assert!(seen.contains("cookie: a=1; b=2\r\n"), "{seen}");
    assert_eq!(seen.matches("cookie:").count(), 1, "{seen}");
    assert!(seen.ends_with("name=duotone"), "{seen}");
    assert!(up.last().ends_with("name=duotone"));
    let (status, _, body) = get(&c, "/static/a.txt").await;
    assert_eq!((status, body.as_slice()), (200, &b"static file\n"[..]));
    let (status, headers, _) = get(&c, "/old/x").await;
    assert_eq!(status, 301);
    assert_eq!(headers["location"], "https://new.test/old/x");

    // And the lane still serves the connection afterwards.
    assert_eq!(get(&c, "/chunked").await.2, b"hello world");
}
