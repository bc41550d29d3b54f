//! What nginx, Traefik and Whitenoise users configure at the edge (issue
//! 19), end to end on every transport: the lane's HTTP/1.1, the lane's
//! HTTP/2 (h2c prior knowledge) and Pingora's path (`DUOTONE_LANE=off`).

use e2e::client::{Http, Resp};
use e2e::proxy::Proxy;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A raw HTTP/1.1 upstream: `/missing` is a 404, paths holding `slow`
/// answer after 1.5 s, everything else a 200 echoing the request head,
/// all with `X-Frame-Options: SAMEORIGIN` and `Server: app`.
async fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = e2e::scripted::head_end(&buf) else {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    if path.contains("slow") {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                    }
                    let (status, body) = match path.as_str() {
                        "/missing" => ("404 Not Found", "nope".to_string()),
                        _ => ("200 OK", head),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nX-Frame-Options: SAMEORIGIN\r\nServer: app\r\n\
                         Content-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The same config behind two proxies: the lane on, and off. Each entry:
/// a name, the proxy and the client to use (HTTP/1.1 or h2c).
async fn start(cfg: &str) -> (Proxy, Proxy) {
    let lane = Proxy::start(cfg).await;
    let pingora = Proxy::start_with_env(cfg, &[("DUOTONE_LANE", "off")]).await;
    (lane, pingora)
}

/// The three transports: lane h1, lane h2 (h2c), Pingora's path (h1 and h2).
fn transports<'a>(lane: &'a Proxy, pingora: &'a Proxy) -> Vec<(&'static str, &'a Proxy, Http)> {
    vec![
        ("lane h1", lane, Http::new()),
        ("lane h2", lane, Http::h2()),
        ("pingora h1", pingora, Http::new()),
        ("pingora h2", pingora, Http::h2()),
    ]
}

fn all(r: &Resp, name: &str) -> Vec<String> {
    r.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn site_and_route_headers_on_2xx_and_3xx_answers_of_every_kind() {
    let up = upstream().await;
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("app.css"), "body{}").unwrap();
    let cfg = format!(
        r#"
[server]
http = "{{http}}"
admin = "{{admin}}"
state_dir = "{{state}}"

[[sites]]
hosts = ["*"]
headers = {{ "X-Frame-Options" = "DENY", "X-Content-Type-Options" = "nosniff", "Server" = "" }}
  [[sites.routes]]
  path = "/"
  service = "app"
  [[sites.routes]]
  path = "/embed/"
  service = "app"
  headers = {{ "X-Frame-Options" = "SAMEORIGIN", "Content-Security-Policy" = "frame-ancestors 'self'" }}
  [[sites.routes]]
  path = "/static/"
  static = {{ root = "{www}" }}
  headers = {{ "Access-Control-Allow-Origin" = "*" }}
  [[sites.routes]]
  path = "/old/"
  redirect = {{ to = "/new/", status = 301 }}

[services.app]
colors.blue = ["{up}"]
"#,
        www = www.path().display()
    );
    let (lane, pingora) = start(&cfg).await;
    for (name, p, client) in transports(&lane, &pingora) {
        // Proxied 2xx: the site's fields replace the upstream's, an empty
        // value removes one.
        let r = client.get(&p.url("/page")).await.unwrap();
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(all(&r, "x-frame-options"), ["DENY"], "{name}");
        assert_eq!(all(&r, "x-content-type-options"), ["nosniff"], "{name}");
        assert!(r.headers.get("server").is_none(), "{name}: {:?}", r.headers);
        // The client's request is not touched by them.
        assert!(
            !r.text().to_ascii_lowercase().contains("x-frame-options"),
            "{name}"
        );

        // A route's value overrides the site's for the same name.
        let r = client.get(&p.url("/embed/x")).await.unwrap();
        assert_eq!(all(&r, "x-frame-options"), ["SAMEORIGIN"], "{name}");
        assert_eq!(
            r.header("content-security-policy"),
            "frame-ancestors 'self'",
            "{name}"
        );
        assert_eq!(r.header("x-content-type-options"), "nosniff", "{name}");

        // Static files: 200, and a 304 revalidation.
        let r = client.get(&p.url("/static/app.css")).await.unwrap();
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.header("access-control-allow-origin"), "*", "{name}");
        assert_eq!(r.header("x-frame-options"), "DENY", "{name}");
        let etag = r.header("etag").to_string();
        let r = client
            .get_with(&p.url("/static/app.css"), &[("if-none-match", &etag)])
            .await
            .unwrap();
        assert_eq!(r.status, 304, "{name}");
        assert_eq!(r.header("access-control-allow-origin"), "*", "{name}");

        // A redirect route.
        let r = client.get(&p.url("/old/x")).await.unwrap();
        assert_eq!(r.status, 301, "{name}");
        assert_eq!(r.header("location"), "/new/", "{name}");
        assert_eq!(r.header("x-frame-options"), "DENY", "{name}");

        // Errors are left as they are (nginx's add_header without
        // `always`): the upstream's 404 keeps its own fields, and the
        // edge's own 404 gets none.
        let r = client.get(&p.url("/missing")).await.unwrap();
        assert_eq!(r.status, 404, "{name}");
        assert_eq!(all(&r, "x-frame-options"), ["SAMEORIGIN"], "{name}");
        assert!(r.headers.get("x-content-type-options").is_none(), "{name}");
        let r = client.get(&p.url("/static/nothing.css")).await.unwrap();
        assert_eq!(r.status, 404, "{name}");
        assert!(
            r.headers.get("access-control-allow-origin").is_none(),
            "{name}"
        );
        assert!(r.headers.get("x-frame-options").is_none(), "{name}");
    }
}

#[tokio::test]
async fn hashed_names_of_vite_and_webpack_and_a_configured_pattern_are_immutable() {
    let www = tempfile::tempdir().unwrap();
    for n in [
        "index-BdX3k9aQ.js",
        "chunk.5f3a2b1c.js",
        "app.3f2a9c81b7d4.css",
        "my-document.pdf",
        "app_v12.js",
    ] {
        std::fs::write(www.path().join(n), "x").unwrap();
    }
    let cfg = format!(
        r#"
[server]
http = "{{http}}"
admin = "{{admin}}"
state_dir = "{{state}}"

[[sites]]
hosts = ["*"]
  [[sites.routes]]
  path = "/static/"
  static = {{ root = "{www}", immutable_hashed = true }}
  [[sites.routes]]
  path = "/custom/"
  static = {{ root = "{www}", immutable_pattern = '_v[0-9]+\.js$' }}
"#,
        www = www.path().display()
    );
    let (lane, pingora) = start(&cfg).await;
    let immutable = "public, max-age=31536000, immutable";
    let short = "public, max-age=60, must-revalidate";
    for (name, p, client) in transports(&lane, &pingora) {
        for (path, want) in [
            ("/static/index-BdX3k9aQ.js", immutable),
            ("/static/chunk.5f3a2b1c.js", immutable),
            ("/static/app.3f2a9c81b7d4.css", immutable),
            ("/static/my-document.pdf", short),
            ("/static/app_v12.js", short),
            ("/custom/app_v12.js", immutable),
            ("/custom/index-BdX3k9aQ.js", short),
        ] {
            let r = client.get(&p.url(path)).await.unwrap();
            assert_eq!(r.status, 200, "{name}: {path}");
            assert_eq!(r.header("cache-control"), want, "{name}: {path}");
        }
    }
}

#[tokio::test]
async fn a_routes_read_timeout_overrides_its_services() {
    let up = upstream().await;
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
  service = "app"
  [[sites.routes]]
  path = "/quick/"
  service = "app"
  read_timeout = "300ms"

[services.app]
colors.blue = ["{up}"]
read_timeout = "10s"
"#
    );
    let (lane, pingora) = start(&cfg).await;
    for (name, p, client) in transports(&lane, &pingora) {
        // The upstream takes 1.5 s for paths holding "slow".
        let (quick, reports) = (p.url("/quick/slow"), p.url("/reports/slow"));
        let (short, long) = tokio::join!(client.get(&quick), client.get(&reports));
        let (short, long) = (short.unwrap(), long.unwrap());
        assert_eq!(short.status, 504, "{name}: {}", short.text());
        assert_eq!(long.status, 200, "{name}: {}", long.text());
        assert!(long.text().starts_with("GET /reports/slow "), "{name}");
        // The same route answers when the upstream is quick.
        let r = client.get(&p.url("/quick/fast")).await.unwrap();
        assert_eq!(r.status, 200, "{name}");
    }
}

/// A config trusting `trusted` as proxies, with an allow-listed route.
fn trusting(up: SocketAddr, trusted: &str) -> String {
    format!(
        r#"
[server]
http = "{{http}}"
admin = "{{admin}}"
state_dir = "{{state}}"
trusted_proxies = {trusted}

[log]
access = "json"

[[sites]]
hosts = ["*"]
  [[sites.routes]]
  path = "/"
  service = "app"
  [[sites.routes]]
  path = "/office/"
  service = "app"
  allow = ["198.51.100.0/24", "2001:db8::/32"]

[services.app]
colors.blue = ["{up}"]
"#
    )
}

/// The forwarding fields the upstream received (from its echo).
fn forwarded(r: &Resp) -> [String; 4] {
    let head = r.text();
    [
        "x-forwarded-for",
        "x-real-ip",
        "x-forwarded-proto",
        "x-forwarded-host",
    ]
    .map(|n| e2e::scripted::header(&head, n).unwrap_or("").to_string())
}

#[tokio::test]
async fn an_untrusted_peer_cannot_forge_its_address() {
    let up = upstream().await;
    // The test's connections come from 127.0.0.1, which is not trusted.
    let (lane, pingora) = start(&trusting(up, r#"["10.0.0.0/8", "::1"]"#)).await;
    let forged = [
        ("x-forwarded-for", "198.51.100.7"),
        ("x-real-ip", "198.51.100.7"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
    ];
    for (name, p, client) in transports(&lane, &pingora) {
        let r = client.get_with(&p.url("/a"), &forged).await.unwrap();
        assert_eq!(r.status, 200, "{name}");
        let host = p.ports.http.to_string();
        assert_eq!(
            forwarded(&r),
            ["127.0.0.1", "127.0.0.1", "http", host.as_str()],
            "{name}: {}",
            r.text()
        );
        let r = client.get_with(&p.url("/office/x"), &forged).await.unwrap();
        assert_eq!(r.status, 403, "{name}");
    }
}

#[tokio::test]
async fn a_trusted_proxys_chain_is_kept_and_names_the_client() {
    let up = upstream().await;
    let (lane, pingora) = start(&trusting(up, r#"["127.0.0.1", "10.0.0.0/8", "fd00::/8"]"#)).await;
    for (name, p, client) in transports(&lane, &pingora) {
        // The client, a forged entry left of it, and two of our proxies.
        let path = format!("/chain-{}", name.replace(' ', "-"));
        let r = client
            .get_with(
                &p.url(&path),
                &[
                    ("x-forwarded-for", "6.6.6.6, 198.51.100.7"),
                    ("x-forwarded-for", "10.1.1.1"),
                    ("x-forwarded-proto", "https"),
                    ("x-forwarded-host", "app.example"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(
            forwarded(&r),
            [
                "6.6.6.6, 198.51.100.7, 10.1.1.1, 127.0.0.1",
                "198.51.100.7",
                "https",
                "app.example"
            ],
            "{name}: {}",
            r.text()
        );
        // The access log names the real client.
        let logged = e2e::eventually(Duration::from_secs(5), || async {
            p.log()
                .lines()
                .any(|l| l.contains(&path) && l.contains("\"198.51.100.7\""))
                .then_some(())
        })
        .await;
        assert!(logged.is_some(), "{name}: {}", p.log());

        // Without X-Forwarded-Proto/-Host the edge's own are sent.
        let r = client
            .get_with(&p.url("/b"), &[("x-forwarded-for", "192.0.2.1")])
            .await
            .unwrap();
        let host = p.ports.http.to_string();
        assert_eq!(
            forwarded(&r),
            ["192.0.2.1, 127.0.0.1", "192.0.2.1", "http", host.as_str()],
            "{name}"
        );

        // IPv6: the rightmost untrusted address of the chain.
        let r = client
            .get_with(
                &p.url("/c"),
                &[("x-forwarded-for", "2001:db8::7, [fd00::2]:443")],
            )
            .await
            .unwrap();
        assert_eq!(forwarded(&r)[1], "2001:db8::7", "{name}");

        // Allow lists judge the real client.
        for (xff, want) in [
            ("198.51.100.7", 200),
            ("2001:db8::9, 10.0.0.1", 200),
            ("203.0.113.1", 403),
            ("198.51.100.7, 203.0.113.1", 403),
        ] {
            let r = client
                .get_with(&p.url("/office/x"), &[("x-forwarded-for", xff)])
                .await
                .unwrap();
            assert_eq!(r.status, want, "{name}: {xff}");
        }
    }
}
