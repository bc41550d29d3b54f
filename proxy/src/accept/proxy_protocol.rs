//! The PROXY protocol on client connections (`server.proxy_protocol`): the
//! header a load balancer sends first ([`routes::proxy_protocol::parse`])
//! is read before HTTP, or before the TLS handshake on the HTTPS listener
//! (Pingora's pre-TLS hook, [`PreTls`]). It is accepted only from a peer in
//! `server.trusted_proxies`; any other connection, or one without a valid
//! header, is closed. The source address it names becomes the connection's
//! peer address (its socket digest), so everything after it (trusted
//! proxies, `allow` lists, X-Forwarded-For, X-Real-IP, the access log)
//! sees the client.

use crate::control::Control;
use async_trait::async_trait;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use routes::proxy_protocol::{parse, Invalid, Parsed};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a connection was closed instead of served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The peer is not one of `server.trusted_proxies`.
    Untrusted,
    /// No valid header arrived (none, a malformed one, or not in time).
    BadHeader(&'static str),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Untrusted => f.write_str("PROXY protocol from a peer not in trusted_proxies"),
            Refused::BadHeader(why) => write!(f, "PROXY protocol: {why}"),
        }
    }
}

/// Reads the PROXY header from `io` and, when it names a client, makes
/// that the stream's peer address. `fd` is the connection's socket.
/// Returns the bytes read past the header (the client's own), to be read
/// again before the socket.
pub async fn accept<S>(
    io: &mut S,
    fd: RawFd,
    trusted: &[routes::config::IpNet],
    limit: Duration,
) -> Result<Vec<u8>, Refused>
where
    S: AsyncRead + GetSocketDigest + Unpin + ?Sized,
{
    let old = io.get_socket_digest();
    let peer = old
        .as_ref()
        .and_then(|d| d.peer_addr()?.as_inet().map(|a| a.ip()));
    if !peer.is_some_and(|p| routes::client::is_trusted(p.to_canonical(), trusted)) {
        return Err(Refused::Untrusted);
    }
    let (source, rest) = tokio::time::timeout(limit, read_header(io))
        .await
        .map_err(|_| Refused::BadHeader("no header in time"))??;
    if let Some(source) = source {
        io.set_socket_digest(with_peer(old.as_deref(), fd, source));
    }
    Ok(rest)
}

/// Reads until a complete header: its source address and the bytes after it.
async fn read_header<S>(io: &mut S) -> Result<(Option<SocketAddr>, Vec<u8>), Refused>
where
    S: AsyncRead + Unpin + ?Sized,
{
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        match parse(&buf) {
            Ok(Parsed::Partial) => {}
            Ok(Parsed::Done(h, n)) => return Ok((h.source, buf.split_off(n))),
            Err(Invalid::Missing) => return Err(Refused::BadHeader("no header")),
            Err(Invalid::Malformed) => return Err(Refused::BadHeader("malformed header")),
        }
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(Refused::BadHeader("closed before a header")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A socket digest like `old` with `peer` as the peer address.
fn with_peer(old: Option<&SocketDigest>, fd: RawFd, peer: SocketAddr) -> SocketDigest {
    let digest = SocketDigest::from_raw_fd(fd);
    let peer = SocketAddr::new(canonical(peer.ip()), peer.port());
    let _ = digest.peer_addr.set(Some(PeerAddr::Inet(peer)));
    let local = old.and_then(|o| o.local_addr().cloned());
    let _ = digest.local_addr.set(local);
    digest
}

fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The raw socket of a plain client stream (`-1` when it is not a socket
/// stream; the digest then carries its addresses without one).
pub fn raw_fd(stream: &pingora::protocols::Stream) -> RawFd {
    let any = stream.as_any();
    if let Some(plain) = any.downcast_ref::<crate::accept::Counted<crate::accept::Socket>>() {
        return plain.get_ref().as_raw_fd();
    }
    match any.downcast_ref::<crate::accept::Counted>() {
        Some(counted) => counted.get_ref().as_raw_fd(),
        None => any.downcast_ref::<L4Stream>().map_or(-1, |s| s.as_raw_fd()),
    }
}

/// Pingora's pre-TLS hook on the HTTPS listener: reads the PROXY header
/// before the ClientHello when `server.proxy_protocol` names `https`
/// (read from the running config, so a reload applies to new connections).
pub struct PreTls {
    /// The control plane (running config).
    pub control: Arc<Control>,
}

#[async_trait]
impl PreTlsProcess for PreTls {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let snap = self.control.load();
        let config = &snap.table.config;
        if !config.server.proxy_protocol.https {
            return Ok(());
        }
        let fd = stream.as_raw_fd();
        let trusted = &config.server.trusted_proxies;
        match accept(stream, fd, trusted, config.limits.header_timeout).await {
            Ok(rest) => {
                stream.rewind(&rest);
                Ok(())
            }
            Err(why) => {
                tracing::debug!("closing a connection: {why}");
                pingora::Error::e_explain(
                    pingora::ErrorType::Custom("proxy-protocol"),
                    why.to_string(),
                )
            }
        }
    }
}
