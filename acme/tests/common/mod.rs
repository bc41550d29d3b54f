//! Shared helpers of the acme integration tests: TLS clients, a TLS echo
//! server using the store, an HTTP-01 responder, tracing.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use acme::{AcmeSettings, CertMeta, CertStore, Challenge};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Logs `acme` at info (override with RUST_LOG) into the test output.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("acme=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// ACME settings pointing at `pebble`.
pub fn settings(pebble: &e2e::pebble::Pebble, state: &Path, challenge: Challenge) -> AcmeSettings {
    AcmeSettings {
        email: Some("ops@duotone.test".into()),
        directory: pebble.directory_url(),
        challenge,
        ca_roots: Some(pebble.ca_bundle()),
        state_dir: state.to_path_buf(),
    }
}

/// What a TLS client saw.
#[derive(Debug)]
pub struct Peer {
    /// Certificate chain, leaf first (DER).
    pub chain: Vec<Vec<u8>>,
    /// Negotiated ALPN.
    pub alpn: Option<Vec<u8>>,
}

impl Peer {
    pub fn leaf(&self) -> &[u8] {
        self.chain.first().map(|c| c.as_slice()).unwrap_or_default()
    }
    pub fn meta(&self) -> CertMeta {
        CertMeta::parse(self.leaf()).expect("parsable leaf")
    }
}

#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS handshake with `addr`. `sni` `None` sends no SNI. With `roots`, the
/// chain must verify against them for `sni`; without, anything is accepted.
pub async fn handshake(
    addr: SocketAddr,
    sni: Option<&str>,
    roots: Option<RootCertStore>,
    alpn: &[&[u8]],
) -> anyhow::Result<Peer> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = match roots {
        Some(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = match sni {
        Some(host) => ServerName::try_from(host.to_string())?,
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let work = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let tls = connector.connect(name, tcp).await?;
        let (_, conn) = tls.get_ref();
        anyhow::Ok(Peer {
            chain: conn
                .peer_certificates()
                .unwrap_or_default()
                .iter()
                .map(|c| c.to_vec())
                .collect(),
            alpn: conn.alpn_protocol().map(|p| p.to_vec()),
        })
    };
    tokio::time::timeout(Duration::from_secs(10), work).await?
}

/// A tokio-rustls echo server using `acme::server_config(store.resolver())`.
pub async fn serve_tls(store: &Arc<CertStore>) -> SocketAddr {
    let config = acme::server_config(store.resolver()).expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Answers `GET /.well-known/acme-challenge/{token}` from the store on
/// `listener` (the plain listener Pebble dials for HTTP-01).
pub fn serve_http01(listener: TcpListener, store: Arc<CertStore>) {
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let answer = req
                        .uri()
                        .path()
                        .strip_prefix("/.well-known/acme-challenge/")
                        .and_then(|token| store.http01_key_auth(token));
                    async move {
                        let resp = match answer {
                            Some(key_auth) => {
                                hyper::Response::new(Full::new(Bytes::from(key_auth)))
                            }
                            None => {
                                let mut r = hyper::Response::new(Full::new(Bytes::new()));
                                *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                                r
                            }
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
}

/// Polls `f` every 20 ms until it is `Some` or `limit` passes.
pub async fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Source of the certificate served for spec `name`.
pub fn source_of(store: &CertStore, name: &str) -> Option<&'static str> {
    store
        .certificates()
        .into_iter()
        .find(|c| c.name == name)
        .map(|c| c.source)
}
