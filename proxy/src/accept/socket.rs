//! A plain (cleartext) client socket without Pingora's socket stream: the
//! Tokio socket and its peer address, nothing else. Pingora's `l4::Stream`
//! costs an idle connection ≈ 1 KiB more (its own 384 bytes, boxed; its
//! socket digest, 392 bytes behind an `Arc`, made at accept for the peer
//! address; a receive-timestamp buffer), none of which the lane uses. The
//! socket digest is made only when something asks for it (Pingora's path,
//! after a hand-off), from the peer address kept here.
//!
//! HTTPS connections keep Pingora's stream: the TLS handshake and the
//! pre-TLS steps (PROXY header, TLS-ALPN-01) work on it.

use async_trait::async_trait;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// An accepted plain TCP connection and its peer's address.
#[derive(Debug)]
pub struct Socket {
    tcp: TcpStream,
    /// The peer (the client, or the source a PROXY header named).
    peer: SocketAddr,
    /// Pingora's socket digest, made on first use.
    digest: OnceLock<Arc<SocketDigest>>,
}

impl Socket {
    /// `tcp`, accepted from `peer`.
    pub fn new(tcp: TcpStream, peer: SocketAddr) -> Self {
        Socket {
            tcp,
            peer,
            digest: OnceLock::new(),
        }
    }

    /// The Tokio socket and the peer's address (a socket digest made
    /// meanwhile goes; it is made again from these on first use).
    pub fn into_parts(self) -> (TcpStream, SocketAddr) {
        (self.tcp, self.peer)
    }

    /// The peer's address: the client's, or the source its PROXY header
    /// named.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The port this connection was accepted on (0 when unknown); a
    /// `getsockname`, as the socket digest's `local_addr` makes once.
    pub fn local_port(&self) -> u16 {
        match self.digest.get() {
            Some(d) => d
                .local_addr()
                .and_then(|a| a.as_inet())
                .map_or(0, |a| a.port()),
            None => self.tcp.local_addr().map_or(0, |a| a.port()),
        }
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp.as_raw_fd()
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Socket {
    /// As Pingora's socket stream: a failure only means the peer is gone.
    async fn shutdown(&mut self) {
        if let Err(e) = AsyncWriteExt::shutdown(&mut self.tcp).await {
            tracing::debug!("Failed to shutdown connection: {e:?}");
        }
    }
}

impl UniqueID for Socket {
    fn id(&self) -> UniqueIDType {
        self.tcp.as_raw_fd()
    }
}

impl Ssl for Socket {}

impl GetTimingDigest for Socket {
    /// One layer, as Pingora's socket stream reports it, without the
    /// accept time (nothing in Duotone reads it; keeping it would cost
    /// every idle connection 16 bytes).
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        vec![Some(TimingDigest::default())]
    }
}

impl GetProxyDigest for Socket {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for Socket {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        let digest = self.digest.get_or_init(|| {
            let digest = SocketDigest::from_raw_fd(self.tcp.as_raw_fd());
            // A new digest's cell is empty: this cannot fail.
            let _ = digest.peer_addr.set(Some(PeerAddr::Inet(self.peer)));
            Arc::new(digest)
        });
        Some(digest.clone())
    }

    /// A digest given by the PROXY protocol: its peer becomes this
    /// socket's.
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        if let Some(peer) = digest.peer_addr().and_then(|a| a.as_inet()) {
            self.peer = *peer;
        }
        self.digest = OnceLock::from(Arc::new(digest));
    }
}

/// Not supported (`Ok(false)`): connections are read through
/// [`HeadDeadline`](crate::net::stream::HeadDeadline), whose own `Peek`
/// tells cleartext HTTP/2 by its preface, with the bytes kept for the
/// reads that follow.
impl Peek for Socket {}
