//! Safe rustls configurations: TLS 1.2 + 1.3, ECDHE with AES-GCM or
//! ChaCha20-Poly1305 only, ALPN h2 + http/1.1, `aws-lc-rs` provider.

use std::sync::Arc;

use rustls::crypto::aws_lc_rs::cipher_suite as cs;
use rustls::crypto::CryptoProvider;
use rustls::server::ResolvesServerCert;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedCipherSuite};

use crate::CertError;

/// ALPN protocols offered by HTTPS listeners, most preferred first.
pub const ALPN_H2_HTTP11: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// ALPN protocol of TLS-ALPN-01 validation connections (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = rustls_acme::acme::ACME_TLS_ALPN_NAME;

/// In the server's order of preference (Mozilla's "intermediate" order):
/// AES-128-GCM first, as its SHA-256 key schedule and transcript hash run on
/// the CPU's SHA extensions where SHA-384 does not (a full handshake
/// measured ≈ 12 % of its CPU in SHA-512 blocks with AES-256-GCM-SHA384).
static SAFE_SUITES: &[SupportedCipherSuite] = &[
    cs::TLS13_AES_128_GCM_SHA256,
    cs::TLS13_AES_256_GCM_SHA384,
    cs::TLS13_CHACHA20_POLY1305_SHA256,
    cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// The protocol versions Duotone serves: TLS 1.3 and TLS 1.2.
pub fn default_tls_versions() -> &'static [&'static rustls::SupportedProtocolVersion] {
    VERSIONS
}

static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The `aws-lc-rs` provider restricted to ECDHE + AEAD cipher suites, key
/// exchange X25519MLKEM768 (post-quantum hybrid, for clients that offer it),
/// X25519, P-256, P-384.
///
/// aws-lc-rs rather than ring: its X25519 and random numbers (a user-space
/// DRBG instead of `getrandom` calls) are cheaper; a resumed TLS 1.3
/// handshake measured 139 µs of proxy CPU against 161 µs with ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: SAFE_SUITES.to_vec(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    })
}

/// Installs [`provider`] as the process-wide default unless one is already
/// installed. Pingora's `TlsSettings::build` uses the process default.
pub fn install_default_provider() {
    if CryptoProvider::get_default().is_none() {
        let _ = Arc::unwrap_or_clone(provider()).install_default();
    }
}

/// Stateless session tickets (TLS 1.3 and 1.2), encrypted with keys that
/// rotate every 6 hours: any number of clients can resume, on any worker
/// thread, where a server-side session cache holds 256 sessions. A resumed
/// handshake skips the certificate signature (a fresh key exchange is kept).
pub fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, CertError> {
    Ok(rustls::crypto::aws_lc_rs::Ticketer::new()?)
}

/// A server config with the safe versions and suites, ALPN h2 + http/1.1,
/// and certificates chosen by `resolver` (e.g. [`crate::CertStore::resolver`]).
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig, CertError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(default_tls_versions())?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN_H2_HTTP11.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A config that only answers TLS-ALPN-01 validation handshakes.
pub(crate) fn challenge_config(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<ServerConfig, CertError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(default_tls_versions())?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Ok(config)
}

/// The client config used to talk to the ACME directory: Web PKI roots plus
/// the PEM roots in `extra` (if any).
pub(crate) fn acme_client_config(
    extra: Option<&std::path::Path>,
) -> Result<ClientConfig, CertError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra {
        let pem = std::fs::read(path).map_err(|e| CertError::io(path, e))?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| CertError::Pem {
                path: path.into(),
                msg: e.to_string(),
            })?;
            roots.add(cert)?;
            added += 1;
        }
        if added == 0 {
            return Err(CertError::Pem {
                path: path.into(),
                msg: "no CERTIFICATE block".into(),
            });
        }
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(default_tls_versions())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
