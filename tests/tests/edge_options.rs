//! What nginx, Traefik and Whitenoise users configure at the edge (issue
//! 19), end to end on every transport: the lane's HTTP/1.1, the lane's
//! HTTP/2 (h2c prior knowledge) and Pingora's path (`DUOTONE_LANE=off`).

use e2e::client::{Http, Resp};
use e2e::proxy::Proxy;
use std::net::SocketAddr;
use std::sync::Arc;
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
fn forwarded(r: &Resp) -> [String; 5] {
    let head = r.text();
    [
        "x-forwarded-for",
        "x-real-ip",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
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
        ("x-forwarded-port", "1"),
    ];
    for (name, p, client) in transports(&lane, &pingora) {
        let r = client.get_with(&p.url("/a"), &forged).await.unwrap();
        assert_eq!(r.status, 200, "{name}");
        let host = p.ports.http.to_string();
        let port = p.ports.http.port().to_string();
        assert_eq!(
            forwarded(&r),
            [
                "127.0.0.1",
                "127.0.0.1",
                "http",
                host.as_str(),
                port.as_str()
            ],
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
                    ("x-forwarded-port", "443"),
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
                "app.example",
                "443"
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

        // Without X-Forwarded-Proto/-Host/-Port the edge's own are sent.
        let r = client
            .get_with(&p.url("/b"), &[("x-forwarded-for", "192.0.2.1")])
            .await
            .unwrap();
        let host = p.ports.http.to_string();
        let port = p.ports.http.port().to_string();
        assert_eq!(
            forwarded(&r),
            [
                "192.0.2.1, 127.0.0.1",
                "192.0.2.1",
                "http",
                host.as_str(),
                port.as_str()
            ],
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

// ---------------------------------------------------------------------------
// PROXY protocol

/// A version 1 header naming `src` (IPv4).
fn pp_v1(src: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {src} 127.0.0.1 {port} 80\r\n").into_bytes()
}

/// A version 2 header: `PROXY` from `src`, or `LOCAL` when `None`.
fn pp_v2(src: Option<std::net::IpAddr>) -> Vec<u8> {
    let mut b = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    match src {
        None => b.extend_from_slice(&[0x20, 0x00, 0, 0]),
        Some(std::net::IpAddr::V4(ip)) => {
            b.extend_from_slice(&[0x21, 0x11, 0, 12]);
            b.extend_from_slice(&ip.octets());
            b.extend_from_slice(&[127, 0, 0, 1, 0x12, 0x67, 0, 80]);
        }
        Some(std::net::IpAddr::V6(ip)) => {
            b.extend_from_slice(&[0x21, 0x21, 0, 36]);
            b.extend_from_slice(&ip.octets());
            b.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
            b.extend_from_slice(&[0x12, 0x67, 0, 80]);
        }
    }
    b
}

fn pp_config(up: SocketAddr, trusted: &str, listeners: &str) -> String {
    format!(
        r#"
[server]
http = "{{http}}"
https = "{{https}}"
admin = "{{admin}}"
state_dir = "{{state}}"
trusted_proxies = {trusted}
proxy_protocol = {listeners}

[[sites]]
hosts = ["secure.test"]
tls = "self-signed"
  [[sites.routes]]
  path = "/"
  service = "app"

[[sites]]
hosts = ["*"]
  [[sites.routes]]
  path = "/"
  service = "app"
  [[sites.routes]]
  path = "/office/"
  service = "app"
  allow = ["192.0.2.0/24"]

[services.app]
colors.blue = ["{up}"]
"#
    )
}

/// One HTTP/1.1 request after `preamble` on a new plain connection: the
/// whole answer ("" when the proxy closed without one).
async fn after(addr: SocketAddr, preamble: &[u8], path: &str, extra: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n{extra}Connection: close\r\n\r\n");
    let bytes = [preamble, req.as_bytes()].concat();
    e2e::client::raw(addr, &bytes, Duration::from_secs(5)).await
}

/// The upstream's view of a forwarding field, from its echo in `text`.
fn seen<'a>(text: &'a str, name: &str) -> &'a str {
    e2e::scripted::header(text, name).unwrap_or("")
}

/// Accepts any server certificate (the site's is self-signed).
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One HTTP/1.1 request over TLS (SNI `secure.test`) after `preamble` in
/// the clear: the whole answer, or the handshake's error.
async fn tls_after(addr: SocketAddr, preamble: &[u8], path: &str) -> Result<String, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("secure.test").map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        tcp.write_all(preamble).await.map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: secure.test\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        Ok(String::from_utf8_lossy(&out).into_owned())
    })
    .await
    .map_err(|_| "timed out".to_string())?
}

/// One h2c request after `preamble`: status and body.
async fn h2c_after(addr: SocketAddr, preamble: &[u8], path: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(preamble).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.unwrap();
    let req = http::Request::builder()
        .uri(format!("http://app.test{path}"))
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_name_the_client_on_http_h2c_and_tls() {
    let up = upstream().await;
    let (lane, pingora) = start(&pp_config(up, r#"["127.0.0.1"]"#, "true")).await;
    let v6: std::net::IpAddr = "2001:db8::7".parse().unwrap();
    for (name, p) in [("lane", &lane), ("pingora", &pingora)] {
        let http = p.ports.http;
        // Version 1, then version 2 (IPv4 and IPv6): the source is the client.
        let t = after(http, &pp_v1("192.0.2.7", 56324), "/a", "").await;
        assert!(t.starts_with("HTTP/1.1 200"), "{name}: {t}");
        assert_eq!(seen(&t, "x-forwarded-for"), "192.0.2.7", "{name}: {t}");
        assert_eq!(seen(&t, "x-real-ip"), "192.0.2.7", "{name}");
        let t = after(http, &pp_v2(Some([192, 0, 2, 8].into())), "/a", "").await;
        assert_eq!(seen(&t, "x-forwarded-for"), "192.0.2.8", "{name}: {t}");
        let t = after(http, &pp_v2(Some(v6)), "/a", "").await;
        assert_eq!(seen(&t, "x-forwarded-for"), "2001:db8::7", "{name}: {t}");
        // The source is not trusted itself: its X-Forwarded-For is not believed.
        let t = after(
            http,
            &pp_v1("192.0.2.7", 1),
            "/a",
            "X-Forwarded-For: 6.6.6.6\r\n",
        )
        .await;
        assert_eq!(seen(&t, "x-forwarded-for"), "192.0.2.7", "{name}: {t}");
        // Allow lists judge the source.
        let t = after(http, &pp_v1("192.0.2.7", 1), "/office/x", "").await;
        assert!(t.starts_with("HTTP/1.1 200"), "{name}: {t}");
        let t = after(http, &pp_v1("203.0.113.7", 1), "/office/x", "").await;
        assert!(t.starts_with("HTTP/1.1 403"), "{name}: {t}");
        // LOCAL (a balancer's own health check): the peer stays, and being
        // trusted, its X-Forwarded-For is.
        let t = after(
            http,
            &pp_v2(None),
            "/a",
            "X-Forwarded-For: 198.51.100.9\r\n",
        )
        .await;
        assert_eq!(seen(&t, "x-real-ip"), "198.51.100.9", "{name}: {t}");
        // Without a header, or with a broken one: closed, unanswered.
        assert_eq!(after(http, b"", "/a", "").await, "", "{name}");
        assert_eq!(
            after(http, b"PROXY TCP4 1.2.3.4\r\n", "/a", "").await,
            "",
            "{name}"
        );

        // h2c after the header.
        let (status, body) = h2c_after(http, &pp_v1("192.0.2.9", 2), "/h2").await;
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(
            seen(&body, "x-forwarded-for"),
            "192.0.2.9",
            "{name}: {body}"
        );

        // TLS: the header comes before the ClientHello.
        let https = p.ports.https;
        for preamble in [pp_v1("192.0.2.10", 3), pp_v2(Some(v6))] {
            let t = tls_after(https, &preamble, "/tls").await.unwrap();
            assert!(t.starts_with("HTTP/1.1 200"), "{name}: {t}");
            let want = if preamble.starts_with(b"PROXY") {
                "192.0.2.10"
            } else {
                "2001:db8::7"
            };
            assert_eq!(seen(&t, "x-forwarded-for"), want, "{name}: {t}");
            assert_eq!(seen(&t, "x-forwarded-proto"), "https", "{name}: {t}");
        }
        assert!(tls_after(https, b"", "/tls").await.is_err(), "{name}");
    }
}

#[tokio::test]
async fn proxy_protocol_from_an_untrusted_peer_is_refused() {
    let up = upstream().await;
    let (lane, pingora) = start(&pp_config(up, r#"["10.0.0.0/8"]"#, r#"["http"]"#)).await;
    for (name, p) in [("lane", &lane), ("pingora", &pingora)] {
        assert_eq!(
            after(p.ports.http, &pp_v1("192.0.2.7", 1), "/a", "").await,
            "",
            "{name}"
        );
        assert_eq!(after(p.ports.http, b"", "/a", "").await, "", "{name}");
        // Only the http listener expects it.
        let t = tls_after(p.ports.https, b"", "/tls").await.unwrap();
        assert!(t.starts_with("HTTP/1.1 200"), "{name}: {t}");
        assert_eq!(seen(&t, "x-forwarded-for"), "127.0.0.1", "{name}: {t}");
    }
}

// ---------------------------------------------------------------------------
// server.unknown_host

/// A config with one site (`app.test`) and `unknown_host` set to `value`
/// (left out when `None`).
fn one_site(up: SocketAddr, value: Option<&str>) -> String {
    let unknown = value.map_or(String::new(), |v| format!("unknown_host = {v}\n"));
    format!(
        r#"
[server]
http = "{{http}}"
admin = "{{admin}}"
state_dir = "{{state}}"
{unknown}
[log]
access = "json"

[[sites]]
hosts = ["app.test"]
  [[sites.routes]]
  path = "/"
  service = "app"

[services.app]
colors.blue = ["{up}"]
"#
    )
}

/// One h2c request for `http://{host}/`: its status, or the error that
/// ended the stream (a reset) or the connection.
async fn h2c_status(
    send: &h2::client::SendRequest<bytes::Bytes>,
    host: &str,
) -> Result<u16, h2::Error> {
    let req = http::Request::builder()
        .uri(format!("http://{host}/"))
        .body(())
        .unwrap();
    let mut send = send.clone().ready().await?;
    let (resp, _) = send.send_request(req, true)?;
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .expect("an answer or a reset in time")?;
    Ok(resp.status().as_u16())
}

#[tokio::test]
async fn unknown_hosts_get_404_421_or_a_closed_connection() {
    let up = upstream().await;
    for (value, want) in [
        (None, 404),
        (Some("421"), 421),
        (Some("\"404\""), 404),
        (Some("\"close\""), 444),
    ] {
        let (lane, pingora) = start(&one_site(up, value)).await;
        for (name, p) in [("lane", &lane), ("pingora", &pingora)] {
            let http = p.ports.http;
            // HTTP/1.1: a known host on the same connection after it.
            let started = std::time::Instant::now();
            let text = e2e::client::raw(
                http,
                b"GET /u1 HTTP/1.1\r\nHost: other.test\r\n\r\nGET /k HTTP/1.1\r\nHost: app.test\r\n\r\n",
                Duration::from_secs(5),
            )
            .await;
            if want == 444 {
                assert_eq!(text, "", "{name} {value:?}: not a byte");
                assert!(
                    started.elapsed() < Duration::from_secs(4),
                    "{name} {value:?}: closed at once"
                );
            } else {
                let status = format!("HTTP/1.1 {want} ");
                assert!(text.starts_with(&status), "{name} {value:?}: {text}");
                assert!(
                    text.contains("no site is configured for this host"),
                    "{name} {value:?}: {text}"
                );
                // The connection stays open for the next request.
                assert!(
                    text.matches("HTTP/1.1 200 ").count() == 1,
                    "{name} {value:?}: {text}"
                );
            }

            // HTTP/2 (h2c): the stream is answered or reset; the
            // connection serves known hosts after it.
            let send = e2e::h2c::connect(http).await;
            match h2c_status(&send, "other.test").await {
                Ok(status) => assert_eq!(status, want, "{name} h2 {value:?}"),
                Err(e) => {
                    assert_eq!(want, 444, "{name} h2 {value:?}: {e}");
                    assert!(e.is_reset(), "{name} h2 {value:?}: {e}");
                }
            }
            assert_eq!(
                h2c_status(&send, "app.test").await.ok(),
                Some(200),
                "{name} h2 {value:?}"
            );

            // The access log has the status, 444 for a closed connection.
            let line = format!("\"status\":{want}");
            let logged = e2e::eventually(Duration::from_secs(5), || async {
                let log = p.log();
                let lines = log
                    .lines()
                    .filter(|l| l.contains("other.test") && l.contains(&line))
                    .count();
                (lines >= 2).then_some(())
            })
            .await;
            assert!(logged.is_some(), "{name} {value:?}: {}", p.log());
        }
    }
}
