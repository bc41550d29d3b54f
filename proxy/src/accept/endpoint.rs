//! One listening endpoint and what happens to a connection it accepted,
//! before HTTP: the socket stream with its peer address, the steps before
//! TLS (PROXY header, TLS-ALPN-01 validations), the TLS handshake, and then
//! the app, as Pingora's own listening service does it.

use super::counted::Counted;
use super::socket::Socket;
use super::spread::Open;
use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::listeners::{L4BufferSettings, PreTlsCallback};
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora::server::ShutdownWatch;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use tracing_log::log;

/// How long a connection may take from accept to a finished TLS handshake
/// (Pingora's limit).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// The `log` target of handshake failures: Pingora's listening service's,
/// whose records Duotone's log set-up ([`crate::ops::logging`]) counts as client
/// handshake failures and demotes to DEBUG, and which
/// `RUST_LOG=pingora_core=debug` shows, as its summary line says.
pub const HANDSHAKE_LOG_TARGET: &str = "pingora_core::services::listening";

/// One listening endpoint of the accept service.
pub struct Endpoint {
    /// `host:port` as configured; also its name in the hand-over table.
    pub addr: String,
    /// Buffer sizes of the accepted connections' socket streams (HTTPS;
    /// plain connections are read and written on the socket itself).
    pub buffers: L4BufferSettings,
    /// The TLS set-up of an HTTPS endpoint.
    pub tls: Option<Tls>,
}

/// The TLS side of an HTTPS endpoint.
pub struct Tls {
    /// The handshake (Pingora's, over a rustls config Duotone builds).
    pub acceptor: Acceptor,
    /// Run in order on the socket before the handshake; an error closes the
    /// connection.
    pub before: Vec<PreTlsCallback>,
}

impl Endpoint {
    /// A plain (cleartext) endpoint on `addr`.
    pub fn plain(addr: impl Into<String>) -> Self {
        Endpoint {
            addr: addr.into(),
            buffers: L4BufferSettings::default(),
            tls: None,
        }
    }

    /// An HTTPS endpoint on `addr`.
    pub fn tls(addr: impl Into<String>, buffers: L4BufferSettings, tls: Tls) -> Self {
        Endpoint {
            addr: addr.into(),
            buffers,
            tls: Some(tls),
        }
    }
}

/// Serves a connection accepted on `endpoint` on the calling worker, in a
/// task of its own: the handshake, then `app` until the connection ends.
/// `open` counts it on this worker until its close begins.
pub fn serve<A>(
    endpoint: Arc<Endpoint>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    open: Open,
    app: Arc<A>,
    shutdown: ShutdownWatch,
) where
    A: ServerApp + Send + Sync + 'static,
{
    if endpoint.tls.is_none() {
        // Plain HTTP: no handshake, and no Pingora socket stream (the
        // socket alone, [`Socket`]); its app runs in the connection's
        // only task. A second task (as for TLS below) would also cost each
        // new connection one more turn of the worker's run queue before its
        // first read, and a turn took up to 0.5 s with 10 000 clients
        // connecting at once (`benches/load/c10k.py`).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::error!("Accept() failed {e}");
            return;
        }
        let io: Stream = Box::new(Counted::new(Socket::new(tcp, peer), open));
        drop(tokio::spawn(run_app(io, app, shutdown)));
        return;
    }
    let mut l4 = socket_stream(tcp, peer);
    if let Err(e) = l4.set_nodelay() {
        tracing::error!("Accept() failed {e}");
        return;
    }
    tokio::spawn(async move {
        let handshake = pingora_timeout::timeout(HANDSHAKE_TIMEOUT, handshake(&endpoint, l4, open));
        match handshake.await {
            // A task of its own: the handshake's future (TLS's) is ~8 KB,
            // and in the same task it would stay for the whole life of
            // the connection (that task's future: 8 976 bytes).
            Ok(Ok(stream)) => drop(tokio::spawn(run_app(stream, app, shutdown))),
            Ok(Err(e)) => log::error!(
                target: HANDSHAKE_LOG_TARGET,
                "Downstream handshake error from {peer}: {e}"
            ),
            Err(_) => log::error!(target: HANDSHAKE_LOG_TARGET, "Downstream handshake timeout"),
        }
    });
}

/// Pingora's socket stream for an accepted TCP connection, with the peer
/// address in its socket digest (as Pingora's listener fills it).
fn socket_stream(tcp: tokio::net::TcpStream, peer: SocketAddr) -> L4Stream {
    let mut stream = L4Stream::from(tcp);
    let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
    // A new digest's cell is empty: this cannot fail.
    let _ = digest.peer_addr.set(Some(PeerAddr::Inet(peer)));
    stream.set_socket_digest(digest);
    stream
}

/// The steps before HTTP on HTTPS: buffers, the pre-TLS steps and the TLS
/// handshake.
async fn handshake(endpoint: &Endpoint, mut l4: L4Stream, open: Open) -> pingora::Result<Stream> {
    l4.set_buffer(endpoint.buffers);
    let mut io = Counted::new(l4, open);
    let Some(tls) = &endpoint.tls else {
        return Ok(Box::new(io));
    };
    for step in &tls.before {
        step.process(io.get_mut()).await?;
    }
    Ok(Box::new(tls.acceptor.tls_handshake(io).await?))
}

/// Hands `stream` to `app`, and again each stream it gives back (a reused
/// connection), as Pingora's listening service does.
async fn run_app<A: ServerApp + Send + Sync + 'static>(
    stream: Stream,
    app: Arc<A>,
    shutdown: ShutdownWatch,
) {
    let mut next = app.process_new(stream, &shutdown).await;
    while let Some(stream) = next {
        next = app.process_new(stream, &shutdown).await;
    }
}
