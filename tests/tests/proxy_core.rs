//! Proxy core, end to end: the real binary, real upstreams, real sockets.
//! Each test that proxies runs twice: `::lane` (the default) and `::pingora`
//! (`DUOTONE_LANE=off`), see `e2e::transport`.

use e2e::client::{raw, Http};
use e2e::proxy::{run_cli, Proxy};
use e2e::transport::Transport;
use e2e::upstream::Upstream;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;

fn two_sites(a: &Upstream, b: &Upstream, sock: &Upstream) -> String {
    format!(
        r#"
[server]
http = "{{http}}"
admin = "{{admin}}"
state_dir = "{{state}}"

[[sites]]
hosts = ["app.test"]
  [[sites.routes]]
  path = "/"
  service = "app"
  [[sites.routes]]
  path = "/api/"
  service = "api"
  [[sites.routes]]
  path = "/sock/"
  service = "sock"
  strip_prefix = true
  [[sites.routes]]
  path = "/old/"
  redirect = {{ to = "https://new.test$path", status = 301 }}

[[sites]]
hosts = ["*.wild.test"]
  [[sites.routes]]
  path = "/"
  service = "api"

[[sites]]
hosts = ["*"]
  [[sites.routes]]
  path = "/default/"
  service = "api"

[services.app]
colors.blue = ["{a}"]

[services.api]
colors.blue = ["{b}"]
read_timeout = "500ms"

[services.sock]
colors.blue = ["{s}"]
"#,
        a = a.member(),
        b = b.member(),
        s = sock.member()
    )
}

e2e::on_both_transports!(
    #[tokio::test]
    routes_by_host_and_longest_prefix_and_unix_sockets
);
async fn routes_by_host_and_longest_prefix_and_unix_sockets(t: Transport) {
    let a = Upstream::start("app").await;
    let b = Upstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let s = Upstream::start_unix("sock", dir.path().join("app.sock")).await;
    let p = Proxy::start_on(t, &two_sites(&a, &b, &s)).await;
    let http = Http::new();
    let get = |host: &'static str, path: &'static str| {
        let (http, url) = (http.clone(), p.url(path));
        async move { http.get_with(&url, &[("host", host)]).await.unwrap() }
    };
    assert_eq!(get("app.test", "/").await.text(), "app");
    assert_eq!(get("APP.test:80", "/x/y").await.text(), "app");
    assert_eq!(get("app.test", "/api/v1").await.text(), "api");
    assert_eq!(get("app.test", "/apix").await.text(), "app");
    assert_eq!(get("x.wild.test", "/").await.text(), "api");
    assert_eq!(get("deep.x.wild.test", "/").await.text(), "api");
    let r = get("nobody.test", "/").await;
    assert_eq!(r.status, 404);
    // Unix socket member, with the prefix stripped.
    let r = get("app.test", "/sock/headers?q=1").await;
    assert_eq!(r.status, 200, "{}", p.log());
    assert_eq!(r.json()["upstream"], "sock");
    assert_eq!(r.json()["uri"], "/headers?q=1");
    // Redirect route.
    let r = get("app.test", "/old/page?x=1").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), "https://new.test/old/page?x=1");
    // HTTP/2 cleartext (prior knowledge) reaches the same upstream.
    let r = Http::h2().get(&p.url("/default/h2")).await.unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, "api".to_string()),
        "{:?}",
        r.headers
    );
}

e2e::on_both_transports!(
    #[tokio::test]
    sets_forwarded_headers_and_request_id
);
async fn sets_forwarded_headers_and_request_id(t: Transport) {
    let a = Upstream::start("app").await;
    let b = Upstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let s = Upstream::start_unix("sock", dir.path().join("s.sock")).await;
    let p = Proxy::start_on(t, &two_sites(&a, &b, &s)).await;
    let r = Http::new()
        .get_with(
            &p.url("/headers"),
            &[
                ("host", "app.test"),
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-proto", "https"),
            ],
        )
        .await
        .unwrap();
    // Says what came back instead when it was not the echo (seen once under load).
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &r.json()["headers"];
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "client-supplied XFF must not be trusted"
    );
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "app.test");
    assert_eq!(h["host"], "app.test");
    let id = h["x-request-id"].as_str().unwrap();
    assert_eq!(id.len(), 24);
    assert_eq!(r.header("x-request-id"), id);
    // A sane incoming request id is kept end to end.
    let r = Http::new()
        .get_with(
            &p.url("/headers"),
            &[("host", "app.test"), ("x-request-id", "trace-42")],
        )
        .await
        .unwrap();
    assert_eq!(r.json()["headers"]["x-request-id"], "trace-42");
}

e2e::on_both_transports!(
    #[tokio::test]
    websocket_echo_through_the_proxy
);
async fn websocket_echo_through_the_proxy(t: Transport) {
    let a = Upstream::start("app").await;
    let b = Upstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let s = Upstream::start_unix("sock", dir.path().join("s.sock")).await;
    let p = Proxy::start_on(t, &two_sites(&a, &b, &s)).await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/ws", p.ports.http),
    )
    .unwrap();
    req.headers_mut()
        .insert("host", "app.test".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket handshake through proxy");
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(tokio_tungstenite::tungstenite::Message::text(format!(
            "ping {i}"
        )))
        .await
        .unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(msg.into_text().unwrap().as_str(), format!("app: ping {i}"));
    }
    ws.close(None).await.unwrap();
}

e2e::on_both_transports!(
    #[tokio::test]
    upstream_down_is_502_and_slow_upstream_is_504
);
async fn upstream_down_is_502_and_slow_upstream_is_504(t: Transport) {
    let b = Upstream::start("api").await;
    let dead = e2e::free_port();
    let (hole, _queued, _listener) = e2e::blackhole();
    let cfg = format!(
        r#"
[server]
http = "{{http}}"
admin = "{{admin}}"
state_dir = "{{state}}"
[[sites]]
hosts = ["*"]
  [[sites.routes]]
  path = "/"
  service = "dead"
  [[sites.routes]]
  path = "/slow"
  service = "slow"
  [[sites.routes]]
  path = "/mixed/"
  service = "mixed"
  strip_prefix = true
[services.dead]
colors.blue = ["127.0.0.1:{dead}"]
connect_timeout = "1s"
[services.slow]
colors.blue = ["{b}"]
read_timeout = "300ms"
[services.mixed]
colors.blue = ["127.0.0.1:{dead}", "{b}"]
  [[sites.routes]]
  path = "/ghost/"
  service = "ghost"
  [[sites.routes]]
  path = "/hole/"
  service = "hole"
[services.ghost]
colors.blue = ["nosuchhost.invalid:80"]
[services.hole]
colors.blue = ["{hole}"]
connect_timeout = "300ms"
"#,
        b = b.member()
    );
    let p = Proxy::start_on(t, &cfg).await;
    let http = Http::new();
    let r = http.get(&p.url("/")).await.unwrap();
    assert_eq!(r.status, 502);
    assert!(r.text().contains("bad gateway"));
    let r = http.get(&p.url("/slow?ms=3000")).await.unwrap();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("gateway timeout"));
    let r = http.get(&p.url("/slow?ms=10")).await.unwrap();
    assert_eq!(r.status, 200);
    // A member whose name does not resolve: 502, not an internal error.
    let r = http.get(&p.url("/ghost/x")).await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    // A member that never completes the handshake: connect timeout, 504.
    let r = http.get(&p.url("/hole/x")).await.unwrap();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("gateway timeout"));
    // A member refusing connections is retried on the other member: no errors.
    for _ in 0..20 {
        let r = http.get(&p.url("/mixed/x")).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "api");
    }
}

e2e::on_both_transports!(
    #[tokio::test]
    malformed_requests_get_4xx_not_a_hang
);
async fn malformed_requests_get_4xx_not_a_hang(t: Transport) {
    let a = Upstream::start("app").await;
    let b = Upstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let s = Upstream::start_unix("sock", dir.path().join("s.sock")).await;
    let p = Proxy::start_on(t, &two_sites(&a, &b, &s)).await;
    for bad in [
        &b"GET / HTTP/1.1\r\nHost: app.test\r\nBad Header\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        b"G\x00T / HTTP/1.1\r\nHost: app.test\r\n\r\n",
        // Dot segments could route past a prefix's auth: refused.
        b"GET /api/../admin HTTP/1.1\r\nHost: app.test\r\n\r\n",
        b"GET /api/%2e%2E/admin HTTP/1.1\r\nHost: app.test\r\n\r\n",
        b"GET /./api/ HTTP/1.1\r\nHost: app.test\r\n\r\n",
    ] {
        let out = raw(p.ports.http, bad, Duration::from_secs(5)).await;
        assert!(
            out.starts_with("HTTP/1.1 400"),
            "{:?} -> {out:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        a.hits() + b.hits(),
        0,
        "nothing refused reached an upstream"
    );
    // Still serving afterwards.
    let r = Http::new()
        .get_with(&p.url("/"), &[("host", "app.test")])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn invalid_config_is_a_clear_error_and_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[server]\nhttp = \"127.0.0.1:1\"\n\n[[sites]]\nhosts = [\"a.test\"]\n  [[sites.routes]]\n  path = \"/\"\n  service = \"nope\"\n\n[services.api]\ncolors.blue = [\"127.0.0.1:1\", \"not an address\"]\n",
    )
    .unwrap();
    let path = cfg.to_str().unwrap();
    let (code, _out, err) = run_cli(&["check", "-c", path], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "{path}:8: sites[0].routes[0].service: unknown service \"nope\""
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{path}:11: services.api.colors.blue[1]:")),
        "{err}"
    );
    let (code, _out, err) = run_cli(&["run", "-c", path], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown service \"nope\""), "{err}");
    let (code, out, _) = run_cli(&["check", "-c", "/nonexistent/duotone.toml"], &[]);
    assert_eq!(code, 1, "{out}");
}

e2e::on_both_transports!(
    #[tokio::test]
    upstream_connections_are_kept_alive_and_reused
);
async fn upstream_connections_are_kept_alive_and_reused(t: Transport) {
    let a = Upstream::start("app").await;
    let b = Upstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let s = Upstream::start_unix("sock", dir.path().join("s.sock")).await;
    let p = Proxy::start_on(t, &two_sites(&a, &b, &s)).await;
    let http = Http::new();
    for i in 0..60 {
        let r = http
            .get_with(&p.url(&format!("/n{i}")), &[("host", "app.test")])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let r = http
            .get_with(&p.url("/sock/x"), &[("host", "app.test")])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(a.hits(), 60);
    // One pool per proxy worker thread: a handful of connections, not 60.
    assert!(
        a.conns() <= 4,
        "{} TCP connections for 60 requests",
        a.conns()
    );
    assert!(
        s.conns() <= 4,
        "{} unix connections for 60 requests",
        s.conns()
    );
}
