//! Real Pebble (Let's Encrypt's test CA) on ephemeral loopback ports.
//!
//! [`Pebble::new`] writes a CA and a `localhost`/`127.0.0.1` certificate for
//! Pebble's own HTTPS plus its JSON config; [`Pebble::start`] runs
//! `pebble-challtestsrv` (DNS answering 127.0.0.1 for every name) and
//! `pebble`, waits for the directory and fetches the issuing root (it changes
//! at every start). Child processes are killed on drop.
//!
//! Tests call [`pebble_or_skip`] first: without the `pebble` binary they
//! print why and return early, unless `DUOTONE_REQUIRE_PEBBLE=1` makes the
//! absence a failure.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// Where Pebble dials challenges and how long its certificates live.
#[derive(Debug, Clone, Copy, Default)]
pub struct PebbleOptions {
    /// Port Pebble dials for HTTP-01 (the plain listener under test).
    pub http_port: u16,
    /// Port Pebble dials for TLS-ALPN-01 (the TLS listener under test).
    pub tls_port: u16,
    /// `certificateValidityPeriod` in seconds (Pebble's default when `None`).
    pub validity_secs: Option<u64>,
}

/// A Pebble instance (possibly stopped).
pub struct Pebble {
    dir: tempfile::TempDir,
    opts: PebbleOptions,
    listen_port: u16,
    management_port: u16,
    dns_port: u16,
    challtest_management_port: u16,
    pebble: Option<Child>,
    challtestsrv: Option<Child>,
    root_pem: Option<String>,
}

/// `true` if the `pebble` and `pebble-challtestsrv` binaries are on `PATH`.
pub fn pebble_available() -> bool {
    ["pebble", "pebble-challtestsrv"].iter().all(|bin| {
        std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|p| p.join(bin).is_file()))
            .unwrap_or(false)
    })
}

/// Returns `true` if the test may use Pebble. Otherwise prints a loud skip
/// notice and returns `false`, or panics when `DUOTONE_REQUIRE_PEBBLE=1`.
pub fn pebble_or_skip(test: &str) -> bool {
    if pebble_available() {
        return true;
    }
    let msg = format!(
        "SKIPPED {test}: the `pebble` / `pebble-challtestsrv` binaries are not on PATH \
         (apt-get install pebble)"
    );
    if std::env::var("DUOTONE_REQUIRE_PEBBLE").as_deref() == Ok("1") {
        panic!("{msg}, and DUOTONE_REQUIRE_PEBBLE=1");
    }
    // Written to the real stderr so libtest's output capture cannot hide it.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n!!!!! {msg} !!!!!\n");
    false
}

impl Pebble {
    /// Prepares a Pebble (certificates, config, ports) without starting it.
    pub fn new(opts: PebbleOptions) -> anyhow::Result<Pebble> {
        let dir = tempfile::tempdir()?;
        write_tls_files(dir.path())?;
        let pebble = Pebble {
            dir,
            opts,
            listen_port: crate::free_port(),
            management_port: crate::free_port(),
            dns_port: crate::free_port(),
            challtest_management_port: crate::free_port(),
            pebble: None,
            challtestsrv: None,
            root_pem: None,
        };
        pebble.write_config()?;
        Ok(pebble)
    }

    /// Prepares and starts a Pebble.
    ///
    /// Its ports are picked free but not held until Pebble binds them, so
    /// another test may take one meanwhile: a Pebble that exits at once is
    /// started again on new ports (three tries). Only here, before anyone
    /// knows the directory URL; [`Pebble::restart`] keeps its ports.
    pub async fn start_new(opts: PebbleOptions) -> anyhow::Result<Pebble> {
        let mut pebble = Pebble::new(opts)?;
        let mut tries = 0;
        loop {
            tries += 1;
            match pebble.start().await {
                Ok(()) => return Ok(pebble),
                Err(e) if tries < 3 && pebble.exited() => {
                    eprintln!("pebble did not start (try {tries}), new ports: {e:#}");
                    pebble.stop();
                    pebble.listen_port = crate::free_port();
                    pebble.management_port = crate::free_port();
                    pebble.dns_port = crate::free_port();
                    pebble.challtest_management_port = crate::free_port();
                    pebble.write_config()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether a started `pebble` (or `pebble-challtestsrv`) has exited.
    fn exited(&mut self) -> bool {
        [self.pebble.as_mut(), self.challtestsrv.as_mut()]
            .into_iter()
            .flatten()
            .any(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let mut cfg = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{}", self.listen_port),
            "managementListenAddress": format!("127.0.0.1:{}", self.management_port),
            "certificate": self.dir.path().join("localhost.pem"),
            "privateKey": self.dir.path().join("localhost.key"),
            "httpPort": self.opts.http_port,
            "tlsPort": self.opts.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(secs) = self.opts.validity_secs {
            cfg["certificateValidityPeriod"] = secs.into();
        }
        std::fs::write(
            self.config_path(),
            serde_json::to_vec_pretty(&serde_json::json!({ "pebble": cfg }))?,
        )?;
        Ok(())
    }

    /// Changes the ports Pebble dials for HTTP-01 and TLS-ALPN-01 (e.g. a
    /// proxy's listeners, known only once it runs). Takes effect at the next
    /// [`Pebble::start`] / [`Pebble::restart`]; the directory URL and
    /// `ca_bundle` stay the same.
    pub fn set_challenge_ports(&mut self, http_port: u16, tls_port: u16) -> anyhow::Result<()> {
        self.opts.http_port = http_port;
        self.opts.tls_port = tls_port;
        self.write_config()
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("pebble-config.json")
    }

    fn log_file(&self, name: &str) -> anyhow::Result<(Stdio, Stdio)> {
        let f = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join(name))?;
        Ok((Stdio::from(f.try_clone()?), Stdio::from(f)))
    }

    /// Starts `pebble-challtestsrv` and `pebble`, waits (10 s at most) until
    /// the directory answers, and fetches the issuing root.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        if self.pebble.is_some() {
            return Ok(());
        }
        let (out, err) = self.log_file("challtestsrv.log")?;
        let dns = format!("127.0.0.1:{}", self.dns_port);
        self.challtestsrv = Some(
            Command::new("pebble-challtestsrv")
                .args([
                    "-dns01",
                    &dns,
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                ])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args([
                    "-management",
                    &format!("127.0.0.1:{}", self.challtest_management_port),
                ])
                .stdout(out)
                .stderr(err)
                .spawn()
                .context("spawn pebble-challtestsrv")?,
        );
        let (out, err) = self.log_file("pebble.log")?;
        self.pebble = Some(
            Command::new("pebble")
                .arg("-config")
                .arg(self.config_path())
                .args(["-dnsserver", &dns])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .stdout(out)
                .stderr(err)
                .spawn()
                .context("spawn pebble")?,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Some(status)) = self.pebble.as_mut().map(|c| c.try_wait().ok().flatten()) {
                bail!("pebble exited with {status}:\n{}", self.log());
            }
            let dir_ok = matches!(self.get(&self.directory_url()).await, Ok((200, _)));
            if dir_ok {
                match self.get(&self.management_url("/roots/0")).await {
                    Ok((200, body)) => {
                        self.root_pem = Some(String::from_utf8(body)?);
                        return Ok(());
                    }
                    _ if Instant::now() > deadline => bail!("pebble root not available"),
                    _ => {}
                }
            }
            if Instant::now() > deadline {
                bail!("pebble did not answer in 10 s:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Kills both processes (the directory stops answering).
    pub fn stop(&mut self) {
        for child in [self.pebble.take(), self.challtestsrv.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        self.root_pem = None;
    }

    /// Stops and starts again (same ports; a new issuing root).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.start().await
    }

    /// `true` while started.
    pub fn running(&self) -> bool {
        self.pebble.is_some()
    }

    /// The ACME directory URL (known before start).
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.listen_port)
    }

    /// A management URL (`/roots/0`, `/intermediates/0`, ...).
    pub fn management_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.management_port)
    }

    /// PEM file of the CA that signed Pebble's own HTTPS certificate: trust
    /// it to talk to the directory (`ca_roots`).
    pub fn ca_bundle(&self) -> PathBuf {
        self.dir.path().join("minica.pem")
    }

    /// PEM of the root that issues certificates (while started).
    pub fn root_pem(&self) -> Option<&str> {
        self.root_pem.as_deref()
    }

    /// The issuing root as a rustls root store (while started).
    pub fn root_store(&self) -> anyhow::Result<rustls::RootCertStore> {
        let pem = self.root_pem().context("pebble is not running")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
            roots.add(cert?)?;
        }
        Ok(roots)
    }

    /// Options given at creation.
    pub fn options(&self) -> PebbleOptions {
        self.opts
    }

    /// Pebble's and challtestsrv's output so far.
    pub fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "--- pebble ---\n{}\n--- challtestsrv ---\n{}",
            read("pebble.log"),
            read("challtestsrv.log")
        )
    }

    /// Makes `pebble-challtestsrv` resolve `host` to `ip` (A record), e.g.
    /// to send the CA's validation to one chosen node.
    pub fn add_a(&self, host: &str, ip: &str) -> anyhow::Result<()> {
        use std::io::{Read, Write};
        let body = serde_json::json!({ "host": host, "addresses": [ip] }).to_string();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.challtest_management_port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "POST /add-a HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        anyhow::ensure!(answer.starts_with("HTTP/1.1 200"), "add-a: {answer}");
        Ok(())
    }

    /// How many lines of Pebble's log contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join("pebble.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// How many orders Pebble received (its log says "Added order" once each).
    pub fn orders(&self) -> usize {
        self.log_count("Added order")
    }

    async fn get(&self, url: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        https_get(url, &std::fs::read(self.ca_bundle())?).await
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes `minica.pem` (a CA) and `localhost.pem` / `localhost.key` (a leaf
/// for `localhost` and `127.0.0.1` signed by it) into `dir`.
fn write_tls_files(dir: &Path) -> anyhow::Result<()> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "duotone test minica");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;

    let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key)?;

    std::fs::write(dir.join("minica.pem"), ca_cert.pem())?;
    std::fs::write(dir.join("localhost.pem"), leaf_cert.pem())?;
    std::fs::write(dir.join("localhost.key"), leaf_key.serialize_pem())?;
    Ok(())
}

/// One HTTPS GET trusting only the CA certificates in `ca_pem`; returns the
/// status and body (10 s limit).
pub async fn https_get(url: &str, ca_pem: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let uri: http::Uri = url.parse()?;
    let host = uri.host().context("url without host")?.to_string();
    let port = uri.port_u16().unwrap_or(443);
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let work = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())?;
        let tls = connector.connect(name, tcp).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let req = http::Request::get(uri.path())
            .header("host", format!("{host}:{port}"))
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes().to_vec();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), work).await?
}
