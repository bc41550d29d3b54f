//! Pingora glue: an HTTPS listener whose certificates come from a
//! [`CertStore`], and a pre-TLS hook answering TLS-ALPN-01 validations.
//!
//! Pingora's ALPN setting holds either h2+http/1.1 or one custom protocol,
//! so `acme-tls/1` cannot be offered beside h2. Instead, [`TlsAlpnHook`]
//! runs before Pingora's handshake, peeks the ClientHello with
//! [`rustls::server::Acceptor`], answers `acme-tls/1` connections itself
//! with a challenge-only config, and rewinds every other connection so
//! Pingora's handshake sees the untouched bytes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig, PreTlsCallback, PreTlsProcess, ALPN};
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::services::listening::Service;
use rustls::server::{Accepted, Acceptor, ClientHello};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_rustls::StartHandshake;

use crate::tls::{install_default_provider, ACME_TLS_ALPN};
use crate::{CertError, CertStore, Challenge};

/// The explanation of the error that ends an answered TLS-ALPN-01
/// validation connection (Pingora logs it as a failed handshake; Duotone's
/// log set-up recognises it by this text and keeps it out of the errors).
pub const VALIDATION_ANSWERED: &str = "TLS-ALPN-01 validation answered (not an error)";

/// How long a client may take to send its ClientHello to the hook.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Pingora TLS settings for `store`: its SNI resolver, ALPN h2 + http/1.1,
/// TLS 1.2 + 1.3 (Pingora's fixed versions) and the safe suites (installs
/// [`crate::tls::provider`] as the process default if none is installed).
/// Pingora builds the rustls config itself, so sessions resume from its
/// server-side cache only; a listener that builds its own config (as
/// Duotone's does) adds [`crate::tls::ticketer`].
pub fn tls_settings(store: &Arc<CertStore>) -> Result<TlsSettings, CertError> {
    install_default_provider();
    // With a resolver set, the (empty) paths are never read.
    let mut settings =
        TlsSettings::intermediate("", "").map_err(|e| CertError::Listener(e.to_string()))?;
    settings.set_cert_resolver(store.resolver());
    settings.set_alpn(ALPN::H2H1);
    Ok(settings)
}

/// Adds an HTTPS endpoint on `addr` to `svc`, serving certificates from
/// `store`. With TLS-ALPN-01 configured, also installs [`TlsAlpnHook`] as the
/// service's pre-TLS callback (it applies to all TLS endpoints of `svc`).
pub fn add_https<A>(
    svc: &mut Service<A>,
    addr: &str,
    store: Arc<CertStore>,
) -> Result<(), CertError> {
    add_https_with(svc, addr, store, None)
}

/// Like [`add_https`], with `before` run on every connection before the
/// TLS handshake (and before a TLS-ALPN-01 check), e.g. to read a PROXY
/// protocol header.
pub fn add_https_with<A>(
    svc: &mut Service<A>,
    addr: &str,
    store: Arc<CertStore>,
    before: Option<PreTlsCallback>,
) -> Result<(), CertError> {
    let settings = tls_settings(&store)?;
    let alpn: Option<PreTlsCallback> = if store.challenge() == Some(Challenge::TlsAlpn01) {
        Some(Arc::new(TlsAlpnHook::new(store.clone())?))
    } else {
        None
    };
    let hook: Option<PreTlsCallback> = match (before, alpn) {
        (Some(a), Some(b)) => Some(Arc::new(Chain(a, b))),
        (a, b) => a.or(b),
    };
    if let Some(hook) = hook {
        svc.endpoints().set_pre_tls_callback(hook);
    }
    svc.add_listener(
        ListenerConfig::tcp(addr)
            .tls(settings)
            .l4_buffer(client_buffers()),
    );
    Ok(())
}

/// Two pre-TLS hooks, one after the other.
struct Chain(PreTlsCallback, PreTlsCallback);

#[async_trait]
impl PreTlsProcess for Chain {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        self.0.process(stream).await?;
        self.1.process(stream).await
    }
}

/// Buffers of accepted client connections: none. No read buffer (Pingora's
/// HTTP reader and rustls each keep their own, so a 64 KiB `BufReader` only
/// adds a copy per read and a 64 KiB memset per connection, 2 % of a full
/// TLS handshake's CPU), and no write buffer: rustls and the `h2` crate
/// gather their records and frames themselves, and Duotone's lane writes a
/// response's head and body at once, so Pingora's 1 460-byte write buffer
/// only held 1.5 KiB per idle connection (#21). (Pingora's own HTTP/1.1
/// path writes a head and its body in two writes without it.)
pub fn client_buffers() -> L4BufferSettings {
    L4BufferSettings::default().read(0).write(0)
}

/// Pre-TLS callback answering TLS-ALPN-01 validation connections.
pub struct TlsAlpnHook {
    config: Arc<ServerConfig>,
    store: Arc<CertStore>,
}

/// Resolves every handshake to one certificate (a shared TLS-ALPN-01 one).
#[derive(Debug)]
struct OneCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl TlsAlpnHook {
    /// A hook answering challenges of `store`'s ACME orders.
    pub fn new(store: Arc<CertStore>) -> Result<Self, CertError> {
        Ok(TlsAlpnHook {
            config: Arc::new(crate::tls::challenge_config(store.challenge_resolver())?),
            store,
        })
    }

    /// Reads the ClientHello of `stream`. Returns what was read and, if the
    /// hello parsed, the accepted handshake.
    async fn read_hello<S: AsyncRead + Unpin>(stream: &mut S) -> (Vec<u8>, Option<Accepted>) {
        let mut acceptor = Acceptor::default();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return (seen, None),
                Ok(n) => n,
            };
            seen.extend_from_slice(&buf[..n]);
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                match acceptor.read_tls(&mut rest) {
                    Ok(0) | Err(_) => return (seen, None),
                    Ok(_) => {}
                }
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => return (seen, Some(accepted)),
                Ok(None) => {}
                Err(_) => return (seen, None),
            }
        }
    }
}

/// `true` if the ClientHello offers exactly ALPN `acme-tls/1` (RFC 8737).
pub fn is_tls_alpn_challenge(hello: &ClientHello<'_>) -> bool {
    hello.alpn().into_iter().flatten().eq([ACME_TLS_ALPN])
}

#[async_trait]
impl PreTlsProcess for TlsAlpnHook {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let Ok((seen, accepted)) =
            tokio::time::timeout(HELLO_TIMEOUT, Self::read_hello(stream)).await
        else {
            return pingora::Error::e_explain(
                pingora::ErrorType::ReadTimedout,
                "no ClientHello in time",
            );
        };
        let Some(accepted) = accepted.filter(|a| is_tls_alpn_challenge(&a.client_hello())) else {
            // Not a validation: Pingora's handshake reads the same bytes again.
            stream.rewind(&seen);
            return Ok(());
        };
        let sni = accepted.client_hello().server_name().map(str::to_string);
        // Cluster mode: the challenge may come from another node's order;
        // its certificate is built here from the published key authorization.
        let mut config = self.config.clone();
        if self.store.is_shared() {
            if let Some(cert) = match sni.as_deref() {
                Some(domain) => self.store.shared_tls_alpn_cert(domain).await,
                None => None,
            } {
                match crate::tls::challenge_config(Arc::new(OneCert(cert))) {
                    Ok(c) => config = Arc::new(c),
                    Err(e) => tracing::warn!(error = %e, "TLS-ALPN-01 config"),
                }
            }
        }
        let handshake = StartHandshake::from_parts(accepted, &mut *stream);
        match tokio::time::timeout(HELLO_TIMEOUT, handshake.into_stream(config)).await {
            Ok(Ok(mut tls)) => {
                tracing::info!(
                    sni = sni.as_deref().unwrap_or(""),
                    "answered TLS-ALPN-01 validation"
                );
                let _ = tls.shutdown().await;
            }
            Ok(Err(e)) => {
                tracing::warn!(sni = sni.as_deref().unwrap_or(""), error = %e, "TLS-ALPN-01 validation handshake failed");
            }
            Err(_) => tracing::warn!("TLS-ALPN-01 validation handshake timed out"),
        }
        // Ends the connection: it was a validation, not a client.
        pingora::Error::e_explain(
            pingora::ErrorType::Custom("acme-tls-alpn-01"),
            VALIDATION_ANSWERED,
        )
    }
}
