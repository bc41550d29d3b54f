//! TLS, end to end: the real binary against real Pebble (HTTP-01 and
//! TLS-ALPN-01 issuance, restart from the cache with the CA down, the CA down
//! at first start), static certificates (rotation, unknown SNI), plain-HTTP
//! redirects, HSTS, ACME challenges on TLS sites, and protocol versions.
//!
//! Pebble tests print a loud SKIPPED notice when the `pebble` binaries are
//! missing, unless `DUOTONE_REQUIRE_PEBBLE=1` makes that a failure.
//!
//! The tests that send requests over TLS (HTTP/2, HTTP/1.1 and no ALPN after
//! TLS-ALPN-01 issuance; HSTS, redirects and static files; TLS 1.2 and 1.3)
//! run twice: `::lane` and `::pingora` (`DUOTONE_LANE=off`, see
//! `e2e::transport`). The others are about certificates and handshakes,
//! which come before either transport; they run once.

use bytes::Bytes;
use e2e::client::{admin, Http, Resp};
use e2e::pebble::{pebble_or_skip, Pebble, PebbleOptions};
use e2e::proxy::Proxy;
use e2e::upstream::Upstream;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::{HandshakeKind, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;

const TOKEN: &str = "tls-test-token-0123456789";
const HOSTS: [&str; 2] = ["a.test", "www.a.test"];
const H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];
/// How long an ACME issuance may take (Pebble: ≈ 3 s; backoff after a CA
/// that was down adds a few seconds).
const ISSUANCE: Duration = Duration::from_secs(45);

// ---------------------------------------------------------------------------
// TLS client

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

use e2e::tls::AcceptAnything;
use e2e::transport::Transport;

/// How a test client connects.
#[derive(Clone, Copy)]
struct Client<'a> {
    /// Trust anchors; `None` accepts any certificate.
    roots: Option<&'a RootCertStore>,
    alpn: &'a [&'a [u8]],
    versions: &'a [&'static SupportedProtocolVersion],
}

impl<'a> Client<'a> {
    /// Verifies against `roots` only; offers h2 + http/1.1, TLS 1.3 + 1.2.
    fn trusting(roots: &'a RootCertStore) -> Self {
        Client {
            roots: Some(roots),
            alpn: H2_H1,
            versions: rustls::ALL_VERSIONS,
        }
    }

    /// Accepts any certificate.
    fn any() -> Self {
        Client {
            roots: None,
            alpn: H2_H1,
            versions: rustls::ALL_VERSIONS,
        }
    }

    fn alpn(self, alpn: &'a [&'a [u8]]) -> Self {
        Client { alpn, ..self }
    }

    fn versions(self, versions: &'a [&'static SupportedProtocolVersion]) -> Self {
        Client { versions, ..self }
    }
}

/// What the client saw of the handshake.
#[derive(Debug, Clone)]
struct Peer {
    /// Chain, leaf first (DER).
    chain: Vec<Vec<u8>>,
    alpn: Option<Vec<u8>>,
    version: Option<ProtocolVersion>,
    /// Full or resumed.
    kind: Option<HandshakeKind>,
}

impl Peer {
    fn leaf(&self) -> Vec<u8> {
        self.chain.first().cloned().unwrap_or_default()
    }
}

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A client config for `client` (a fresh session cache of its own).
fn client_config(client: Client<'_>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let p = provider();
    let builder = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(client.versions)?;
    let mut config = match client.roots {
        Some(roots) => builder
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything(p)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = client.alpn.iter().map(|a| a.to_vec()).collect();
    Ok(Arc::new(config))
}

/// TLS handshake with `addr`; `sni` `None` sends no SNI (IP address name).
async fn connect(
    addr: SocketAddr,
    sni: Option<&str>,
    client: Client<'_>,
) -> anyhow::Result<(TlsStream, Peer)> {
    connect_with(addr, sni, client_config(client)?).await
}

/// TLS handshake with `addr` using `config` (and its session cache).
async fn connect_with(
    addr: SocketAddr,
    sni: Option<&str>,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<(TlsStream, Peer)> {
    let name = match sni {
        Some(host) => ServerName::try_from(host.to_string())?,
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls = tokio::time::timeout(Duration::from_secs(10), async {
        let tcp = TcpStream::connect(addr).await?;
        anyhow::Ok(connector.connect(name, tcp).await?)
    })
    .await??;
    let (_, conn) = tls.get_ref();
    let peer = Peer {
        chain: conn
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.to_vec())
            .collect(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        version: conn.protocol_version(),
        kind: conn.handshake_kind(),
    };
    Ok((tls, peer))
}

async fn handshake(
    addr: SocketAddr,
    sni: Option<&str>,
    client: Client<'_>,
) -> anyhow::Result<Peer> {
    Ok(connect(addr, sni, client).await?.1)
}

/// GET `path` with SNI and Host `host`, over h2 or http/1.1 as negotiated.
async fn https_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    client: Client<'_>,
) -> anyhow::Result<(Peer, Resp, http::Version)> {
    https_get_with(addr, host, path, client_config(client)?).await
}

/// [`https_get`] with a given client config (and its session cache).
async fn https_get_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<(Peer, Resp, http::Version)> {
    let (tls, peer) = connect_with(addr, Some(host), config).await?;
    let io = TokioIo::new(tls);
    let h2 = peer.alpn.as_deref() == Some(&b"h2"[..]);
    let work = async {
        let resp = if h2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            let req =
                http::Request::get(format!("https://{host}{path}")).body(Empty::<Bytes>::new())?;
            sender.send_request(req).await?
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            let req = http::Request::get(path)
                .header("host", host)
                .body(Empty::<Bytes>::new())?;
            sender.send_request(req).await?
        };
        let version = resp.version();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((
            Resp {
                status,
                headers,
                body,
            },
            version,
        ))
    };
    let (resp, version) = tokio::time::timeout(Duration::from_secs(10), work).await??;
    Ok((peer, resp, version))
}

/// Polls until a GET verified against `roots` only succeeds with 200.
async fn wait_verified(addr: SocketAddr, host: &str, roots: &RootCertStore) -> Option<Peer> {
    e2e::eventually(ISSUANCE, || async move {
        match https_get(addr, host, "/", Client::trusting(roots)).await {
            Ok((peer, r, _)) if r.status == 200 => Some(peer),
            _ => None,
        }
    })
    .await
}

/// DNS names in the certificate's subjectAltName (via `openssl x509`);
/// `None` without an `openssl` binary.
fn dns_sans(der: &[u8]) -> Option<Vec<String>> {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["x509", "-inform", "DER", "-noout", "-ext", "subjectAltName"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(der).ok()?;
    let out = child.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut sans: Vec<String> = text
        .split([',', '\n'])
        .filter_map(|s| s.trim().strip_prefix("DNS:").map(str::to_string))
        .collect();
    sans.sort();
    Some(sans)
}

// ---------------------------------------------------------------------------
// Proxy helpers

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

async fn certificate(p: &Proxy, name: &str) -> serde_json::Value {
    let r = admin("GET", &p.admin_url("/v1/certificates"), Some(TOKEN), None)
        .await
        .expect("GET /v1/certificates");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["certificates"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no certificate {name:?} in {}", r.text()))
}

async fn scrape(p: &Proxy) -> String {
    admin("GET", &p.admin_url("/metrics"), Some(TOKEN), None)
        .await
        .expect("GET /metrics")
        .text()
}

fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn sorted_strings(v: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// An ACME site for [`HOSTS`] and a plain-HTTP site `plain.test`.
fn acme_config(app: &Upstream, pebble: &Pebble, challenge: &str) -> String {
    format!(
        r#"
[server]
http = "{{http}}"
https = "{{https}}"
admin = "{{admin}}"
state_dir = "{{state}}"
admin_token = "{TOKEN}"
threads = 1

[acme]
email = "ops@duotone.test"
directory = "{directory}"
challenge = "{challenge}"
ca_roots = "{ca_roots}"

[[sites]]
hosts = ["a.test", "www.a.test"]
tls = "acme"
  [[sites.routes]]
  path = "/"
  service = "app"

[[sites]]
hosts = ["plain.test"]
  [[sites.routes]]
  path = "/"
  service = "app"

[services.app]
colors.blue = ["{app}"]
"#,
        directory = pebble.directory_url(),
        ca_roots = pebble.ca_bundle().display(),
        app = app.member()
    )
}

/// Checks what a freshly issued Pebble certificate looks like everywhere.
async fn check_issued(p: &Proxy, pebble: &Pebble, roots: &RootCertStore) -> Peer {
    let https = p.ports.https;
    let Some(first) = wait_verified(https, HOSTS[0], roots).await else {
        let info = certificate(p, "a.test").await;
        panic!(
            "no certificate verified by Pebble's root: {info}\n--- duotone ---\n{}\n{}",
            p.log(),
            pebble.log()
        );
    };
    for host in HOSTS {
        let (peer, r, _) = https_get(https, host, "/", Client::trusting(roots))
            .await
            .unwrap_or_else(|e| panic!("verified GET for {host}: {e}"));
        assert_eq!((r.status, r.text().as_str()), (200, "app"));
        assert_eq!(peer.leaf(), first.leaf(), "one certificate for both hosts");
    }
    if let Some(sans) = dns_sans(&first.leaf()) {
        assert_eq!(sans, ["a.test", "www.a.test"]);
    }
    let info = certificate(p, "a.test").await;
    assert_eq!(info["source"], "acme", "{info}");
    assert_eq!(sorted_strings(&info["sans"]), ["a.test", "www.a.test"]);
    assert!(
        info["issuer"].as_str().unwrap_or("").contains("Pebble"),
        "{info}"
    );
    assert!(info["not_after"].as_i64().unwrap_or(0) > now(), "{info}");
    let m = e2e::eventually(Duration::from_secs(5), || async {
        let m = scrape(p).await;
        (sample(&m, "duotone_acme_renewals_total").unwrap_or(0.0) >= 1.0).then_some(m)
    })
    .await
    .expect("duotone_acme_renewals_total >= 1");
    let expiry = sample(
        &m,
        r#"duotone_certificate_expiry_timestamp_seconds{name="a.test"}"#,
    )
    .unwrap_or_else(|| panic!("no expiry gauge:\n{m}"));
    assert!(expiry > now() as f64, "{expiry}");
    first
}

// ---------------------------------------------------------------------------
// ACME against Pebble

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issuance_then_restart_from_cache_with_ca_down() {
    if !pebble_or_skip("http01_issuance_then_restart_from_cache_with_ca_down") {
        return;
    }
    let app = Upstream::start("app").await;
    let mut pebble = Pebble::new(PebbleOptions::default()).expect("pebble");
    // First start with the CA not running yet, to learn the proxy's ports.
    let mut p = Proxy::start(&acme_config(&app, &pebble, "http-01")).await;
    let https = p.ports.https;

    // Before issuance: the self-signed fallback, never a failed handshake.
    for host in HOSTS {
        let (_, r, _) = https_get(https, host, "/", Client::any())
            .await
            .unwrap_or_else(|e| panic!("fallback for {host}: {e}"));
        assert_eq!((r.status, r.text().as_str()), (200, "app"));
    }
    let info = certificate(&p, "a.test").await;
    assert_eq!(
        (&info["source"], &info["configured"]),
        (&"self-signed".into(), &"acme".into()),
        "{info}"
    );

    // Pebble validates HTTP-01 on the proxy's plain listener. Restart the
    // proxy once Pebble runs so its first order meets a live CA.
    p.kill();
    pebble
        .set_challenge_ports(p.ports.http.port(), e2e::free_port())
        .expect("pebble ports");
    pebble.start().await.expect("start pebble");
    let roots = pebble.root_store().expect("pebble root");
    let started = Instant::now();
    p.spawn().await;
    let issued = check_issued(&p, &pebble, &roots).await;
    println!(
        "HTTP-01 issuance through duotone took {:?} (from process start)",
        started.elapsed()
    );

    // Restart with the CA down: the cached certificate is served at once.
    pebble.stop();
    p.kill();
    p.spawn().await;
    for host in HOSTS {
        let peer = handshake(https, Some(host), Client::trusting(&roots))
            .await
            .unwrap_or_else(|e| panic!("cached certificate for {host}: {e}"));
        assert_eq!(peer.leaf(), issued.leaf(), "same certificate after restart");
    }
    assert_eq!(certificate(&p, "a.test").await["source"], "acme");
}

e2e::on_both_transports!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    tls_alpn01_issuance_beside_h2_and_http11
);
async fn tls_alpn01_issuance_beside_h2_and_http11(t: Transport) {
    if !pebble_or_skip("tls_alpn01_issuance_beside_h2_and_http11") {
        return;
    }
    let app = Upstream::start("app").await;
    let mut pebble = Pebble::new(PebbleOptions::default()).expect("pebble");
    let mut p = Proxy::start_on(t, &acme_config(&app, &pebble, "tls-alpn-01")).await;
    let https = p.ports.https;
    p.kill();
    pebble
        .set_challenge_ports(e2e::free_port(), https.port())
        .expect("pebble ports");
    pebble.start().await.expect("start pebble");
    let roots = pebble.root_store().expect("pebble root");
    let started = Instant::now();
    p.spawn().await;
    check_issued(&p, &pebble, &roots).await;
    println!(
        "TLS-ALPN-01 issuance through duotone took {:?} (from process start)",
        started.elapsed()
    );
    assert!(
        p.log().contains("answered TLS-ALPN-01 validation"),
        "{}",
        p.log()
    );
    // Answered validations end their connection; that is not an error.
    let log = p.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("ERROR") && l.contains("handshake")),
        "{log}"
    );

    // The same listener keeps serving normal clients: h2, http/1.1, no ALPN.
    let cases: [(&[&[u8]], http::Version); 4] = [
        (H2_H1, http::Version::HTTP_2),
        (&[b"h2"], http::Version::HTTP_2),
        (&[b"http/1.1"], http::Version::HTTP_11),
        (&[], http::Version::HTTP_11),
    ];
    for (alpn, want) in cases {
        for host in HOSTS {
            let (_, r, version) = https_get(https, host, "/", Client::trusting(&roots).alpn(alpn))
                .await
                .unwrap_or_else(|e| panic!("{host} with ALPN {alpn:?}: {e}"));
            assert_eq!((r.status, r.text().as_str()), (200, "app"));
            assert_eq!(version, want, "ALPN {alpn:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_down_at_first_start_then_certificate_without_restart() {
    if !pebble_or_skip("ca_down_at_first_start_then_certificate_without_restart") {
        return;
    }
    let app = Upstream::start("app").await;
    let mut pebble = Pebble::new(PebbleOptions::default()).expect("pebble");
    let p = Proxy::start(&acme_config(&app, &pebble, "http-01")).await;
    let https = p.ports.https;
    pebble
        .set_challenge_ports(p.ports.http.port(), e2e::free_port())
        .expect("pebble ports");

    // Healthy without a CA: health, plain routes, the fallback certificate.
    assert_eq!(
        e2e::client::get_status(&p.admin_url("/healthz"))
            .await
            .unwrap(),
        200
    );
    let r = Http::new()
        .get_with(&p.url("/x"), &[("host", "plain.test")])
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "app"));
    let (_, r, _) = https_get(https, "a.test", "/", Client::any())
        .await
        .expect("fallback");
    assert_eq!((r.status, r.text().as_str()), (200, "app"));
    let failed = e2e::eventually(Duration::from_secs(10), || async {
        let info = certificate(&p, "a.test").await;
        (info["failures"].as_u64().unwrap_or(0) >= 1).then_some(info)
    })
    .await
    .expect("the failed order is counted");
    assert_eq!(failed["source"], "self-signed", "{failed}");
    assert!(failed["last_error"].is_string(), "{failed}");
    let m = scrape(&p).await;
    assert!(
        sample(&m, "duotone_acme_failures_total").unwrap_or(0.0) >= 1.0,
        "{m}"
    );

    // The CA comes up: the real certificate appears without a restart.
    let pid = p.pid();
    pebble.start().await.expect("start pebble");
    let roots = pebble.root_store().expect("pebble root");
    let started = Instant::now();
    check_issued(&p, &pebble, &roots).await;
    println!(
        "certificate {:?} after the CA came up (no restart)",
        started.elapsed()
    );
    assert_eq!(p.pid(), pid);
}

// ---------------------------------------------------------------------------
// Static certificates, redirects, HSTS, versions

/// A test CA issuing leaf certificates.
struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "duotone tls test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }

    /// Writes a new leaf for `hosts` to `cert`/`key` (each file replaced
    /// atomically); returns its DER.
    fn issue(&self, hosts: &[&str], cert: &Path, key: &Path) -> Vec<u8> {
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, hosts[0]);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = params.signed_by(&leaf_key, &self.cert, &self.key).unwrap();
        let write = |path: &Path, text: String| {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        };
        write(key, leaf_key.serialize_pem());
        write(cert, leaf.pem());
        leaf.der().to_vec()
    }
}

/// A proxy with a static-certificate site `static.test` (HSTS, a static
/// route, an `allow_http` route) and a plain site `plain.test`.
struct StaticSetup {
    ca: TestCa,
    files: tempfile::TempDir,
    leaf: Vec<u8>,
    p: Proxy,
    _app: Upstream,
}

impl StaticSetup {
    async fn start(t: Transport) -> StaticSetup {
        let app = Upstream::start("app").await;
        let ca = TestCa::new();
        let files = tempfile::tempdir().unwrap();
        let leaf = ca.issue(
            &["static.test"],
            &files.path().join("cert.pem"),
            &files.path().join("key.pem"),
        );
        std::fs::create_dir(files.path().join("www")).unwrap();
        std::fs::write(files.path().join("www/hello.txt"), "hello\n").unwrap();
        let config = format!(
            r#"
[server]
http = "{{http}}"
https = "{{https}}"
admin = "{{admin}}"
state_dir = "{{state}}"
admin_token = "{TOKEN}"
threads = 1

[[sites]]
hosts = ["static.test"]
tls = {{ cert = "{dir}/cert.pem", key = "{dir}/key.pem" }}
hsts = true
  [[sites.routes]]
  path = "/"
  service = "app"
  [[sites.routes]]
  path = "/files/"
  static = {{ root = "{dir}/www" }}
  [[sites.routes]]
  path = "/open/"
  service = "app"
  allow_http = true

[[sites]]
hosts = ["plain.test"]
  [[sites.routes]]
  path = "/"
  service = "app"

[services.app]
colors.blue = ["{app}"]
"#,
            dir = files.path().display(),
            app = app.member()
        );
        let p = Proxy::start_on(t, &config).await;
        StaticSetup {
            ca,
            files,
            leaf,
            p,
            _app: app,
        }
    }
}

e2e::on_both_transports!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    static_certificate_rotation_redirects_and_hsts
);
async fn static_certificate_rotation_redirects_and_hsts(t: Transport) {
    let s = StaticSetup::start(t).await;
    let (p, roots) = (&s.p, s.ca.roots());
    let https = p.ports.https;

    // Served for its host, verified by its CA; HSTS on HTTPS responses,
    // proxied and static alike.
    let (peer, r, _) = https_get(https, "static.test", "/x", Client::trusting(&roots))
        .await
        .expect("verified GET");
    assert_eq!(peer.leaf(), s.leaf);
    assert_eq!((r.status, r.text().as_str()), (200, "app"));
    let hsts = r.header("strict-transport-security").to_string();
    assert!(
        hsts.contains("max-age="),
        "HSTS on a proxied response: {hsts:?}"
    );
    // Over HTTP/2 the upstream still learns the client spoke HTTPS, to
    // which host.
    let (_, r, version) = https_get(https, "static.test", "/headers", Client::trusting(&roots))
        .await
        .expect("verified GET");
    assert_eq!(version, http::Version::HTTP_2);
    let seen = r.json();
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{seen}");
    assert_eq!(
        seen["headers"]["x-forwarded-port"],
        https.port().to_string(),
        "{seen}"
    );
    assert_eq!(seen["headers"]["host"], "static.test", "{seen}");
    assert_eq!(r.header("strict-transport-security"), hsts);
    let (_, r, _) = https_get(
        https,
        "static.test",
        "/files/hello.txt",
        Client::trusting(&roots),
    )
    .await
    .expect("static file");
    assert_eq!((r.status, r.text().as_str()), (200, "hello\n"));
    assert_eq!(
        r.header("strict-transport-security"),
        hsts,
        "HSTS on a static file"
    );
    let info = certificate(p, "static.test").await;
    assert_eq!(info["source"], "static", "{info}");

    // Plain HTTP: 308 to https with path and query, no HSTS.
    let http = Http::new();
    let r = http
        .get_with(&p.url("/deep/path?q=1&x=%20y"), &[("host", "static.test")])
        .await
        .unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        format!("https://static.test:{}/deep/path?q=1&x=%20y", https.port())
    );
    assert_eq!(r.header("strict-transport-security"), "");
    // `allow_http` routes are served on plain HTTP, without HSTS.
    let r = http
        .get_with(&p.url("/open/x"), &[("host", "static.test")])
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "app"));
    assert_eq!(r.header("strict-transport-security"), "");
    // ACME challenge paths are answered on plain HTTP, never redirected (no
    // order runs here, so the answer is a 404).
    let r = http
        .get_with(
            &p.url("/.well-known/acme-challenge/some-token"),
            &[("host", "static.test")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.header("location"), "");
    // A site without TLS is plain HTTP.
    let r = http
        .get_with(&p.url("/"), &[("host", "plain.test")])
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "app"));

    // Unknown SNI and no SNI: a certificate anyway, and no crash.
    for sni in [Some("unknown.test"), None] {
        let peer = handshake(https, sni, Client::any())
            .await
            .unwrap_or_else(|e| panic!("handshake with SNI {sni:?}: {e}"));
        assert!(!peer.chain.is_empty());
    }
    assert_eq!(
        e2e::client::get_status(&p.admin_url("/healthz"))
            .await
            .unwrap(),
        200
    );

    // Rewriting the files swaps the certificate without a restart.
    let pid = p.pid();
    let new_leaf = s.ca.issue(
        &["static.test"],
        &s.files.path().join("cert.pem"),
        &s.files.path().join("key.pem"),
    );
    assert_ne!(new_leaf, s.leaf);
    let started = Instant::now();
    e2e::eventually(Duration::from_secs(20), || async {
        let peer = handshake(https, Some("static.test"), Client::trusting(&roots))
            .await
            .ok()?;
        (peer.leaf() == new_leaf).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("rotated certificate not served:\n{}", p.log()));
    println!("static certificate swapped after {:?}", started.elapsed());
    assert_eq!(p.pid(), pid);
    let (_, r, _) = https_get(https, "static.test", "/", Client::trusting(&roots))
        .await
        .expect("GET with the new certificate");
    assert_eq!(r.status, 200);
}

e2e::on_both_transports!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    tls_13_and_12_accepted_11_refused
);
async fn tls_13_and_12_accepted_11_refused(t: Transport) {
    let s = StaticSetup::start(t).await;
    let (p, roots) = (&s.p, s.ca.roots());
    let https = p.ports.https;
    let cases: [(&[&'static SupportedProtocolVersion], ProtocolVersion); 2] = [
        (&[&rustls::version::TLS13], ProtocolVersion::TLSv1_3),
        (&[&rustls::version::TLS12], ProtocolVersion::TLSv1_2),
    ];
    for (versions, want) in cases {
        let (peer, r, _) = https_get(
            https,
            "static.test",
            "/",
            Client::trusting(&roots).versions(versions),
        )
        .await
        .unwrap_or_else(|e| panic!("{want:?}: {e}"));
        assert_eq!(peer.version, Some(want));
        assert_eq!((r.status, r.text().as_str()), (200, "app"));
    }

    // rustls cannot speak TLS 1.1: ask the openssl CLI, when it can.
    let help = tokio::process::Command::new("openssl")
        .args(["s_client", "-help"])
        .output()
        .await;
    let supports = help
        .map(|o| String::from_utf8_lossy(&o.stderr).contains("-tls1_1"))
        .unwrap_or(false);
    if !supports {
        eprintln!("SKIPPED the TLS 1.1 check: no openssl binary with -tls1_1");
        return;
    }
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new("openssl")
            .args(["s_client", "-connect", &https.to_string()])
            .args(["-servername", "static.test", "-tls1_1"])
            // OpenSSL 3 does not offer TLS 1.1 at its default security level.
            .args(["-cipher", "DEFAULT:@SECLEVEL=0"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("openssl s_client finished")
    .expect("run openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "TLS 1.1 handshake succeeded:\n{text}"
    );
    assert!(
        !text.contains("no protocols available"),
        "openssl never sent a TLS 1.1 hello:\n{text}"
    );
    // Refused by the server with an alert, no cipher agreed.
    assert!(
        text.contains("alert") && text.contains("Cipher is (NONE)"),
        "{text}"
    );
    // The proxy is unharmed.
    let (_, r, _) = https_get(https, "static.test", "/", Client::trusting(&roots))
        .await
        .expect("GET after the refused TLS 1.1 client");
    assert_eq!(r.status, 200);
}

/// Session tickets: every client resumes its session, however many clients
/// there are (a server-side cache would hold 256 sessions), on TLS 1.3 and
/// on TLS 1.2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_resumes_by_session_ticket() {
    let s = StaticSetup::start(Transport::Lane).await;
    let roots = s.ca.roots();
    let https = s.p.ports.https;
    let cases: [(&[&'static SupportedProtocolVersion], usize); 2] = [
        (&[&rustls::version::TLS13], 300),
        (&[&rustls::version::TLS12], 20),
    ];
    for (versions, clients) in cases {
        let configs: Vec<_> = (0..clients)
            .map(|_| client_config(Client::trusting(&roots).versions(versions)).unwrap())
            .collect();
        for round in [HandshakeKind::Full, HandshakeKind::Resumed] {
            for (i, config) in configs.iter().enumerate() {
                let (peer, r, _) = https_get_with(https, "static.test", "/", config.clone())
                    .await
                    .unwrap_or_else(|e| panic!("{versions:?} client {i}: {e}"));
                assert_eq!(r.status, 200);
                assert_eq!(
                    peer.kind,
                    Some(round),
                    "{versions:?} client {i} of {clients}"
                );
            }
        }
    }
}

/// Clients that send an IP address as SNI (wrk, h2load, some health
/// checkers) are served without a log line per handshake: rustls warns about
/// such a hello, and at the default levels that warning is not written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_address_sni_handshakes_write_no_log_line() {
    let s = StaticSetup::start(Transport::Lane).await;
    let https = s.p.ports.https;
    for _ in 0..3 {
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::process::Command::new("openssl")
                .args(["s_client", "-connect", &https.to_string()])
                .args(["-servername", "127.0.0.1"])
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("openssl s_client finished")
        .expect("run openssl (./dev test installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        // The handshake completed (with the fallback certificate: no SNI).
        assert!(text.contains("Cipher is TLS_"), "{text}");
    }
    // The proxy still answers, so anything it logged about those hellos is in the log by now.
    let (_, r, _) = https_get(https, "static.test", "/", Client::trusting(&s.ca.roots()))
        .await
        .expect("GET after the IP-SNI clients");
    assert_eq!(r.status, 200);
    let log = s.p.log();
    assert!(!log.contains("Illegal SNI"), "{log}");
}
