//! The client connection's stream before HTTP: the open-connection counts
//! (in total and per worker), and a deadline for every request head
//! (slowloris): a client that has not sent a complete head within
//! `header_timeout` of connecting, or of the first byte of a later request
//! on a keep-alive connection, is cut off, however slowly it trickles.

use crate::accept::{Counted, Socket};
use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN, IO,
};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface of cleartext HTTP/2 (h2c).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Open client connections, in total and per worker thread.
#[derive(Debug)]
pub struct Connections {
    total: AtomicI64,
    workers: Box<[AtomicI64]>,
    /// Hands out worker numbers to threads, in the order they first serve
    /// a connection.
    next_worker: AtomicUsize,
}

thread_local! {
    /// This thread's worker number (`usize::MAX`: none yet).
    static WORKER: Cell<usize> = const { Cell::new(usize::MAX) };
}

impl Connections {
    /// Counters for `workers` worker threads.
    pub fn new(workers: usize) -> Arc<Connections> {
        Arc::new(Connections {
            total: AtomicI64::new(0),
            workers: (0..workers.max(1)).map(|_| AtomicI64::new(0)).collect(),
            next_worker: AtomicUsize::new(0),
        })
    }

    /// Counts a connection on the calling worker until the guard drops;
    /// returns the new total too.
    pub fn open(self: &Arc<Self>) -> (i64, Open) {
        let worker = WORKER.with(|w| {
            if w.get() == usize::MAX {
                w.set(self.next_worker.fetch_add(1, Ordering::Relaxed) % self.workers.len());
            }
            w.get()
        });
        self.workers[worker].fetch_add(1, Ordering::Relaxed);
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        let guard = Open {
            conns: self.clone(),
            worker,
        };
        (total, guard)
    }

    /// Connections open now.
    pub fn total(&self) -> i64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Connections open now on each worker thread.
    pub fn per_worker(&self) -> Vec<i64> {
        self.workers
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect()
    }
}

/// One counted open connection.
#[derive(Debug)]
pub struct Open {
    conns: Arc<Connections>,
    worker: usize,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.conns.workers[self.worker].fetch_sub(1, Ordering::Relaxed);
        self.conns.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that fails reads once `limit` has passed without a complete
/// request head (an empty line after a non-empty one, [`HeadScan`](crate::net::head_scan::HeadScan);
/// the HTTP/2 preface holds one too): the
/// first one from connect, later ones (after [`HeadDeadline::next_request`])
/// from their first byte, so keep-alive idle time is not counted.
///
/// It also carries the connection's place in the open-connection counts and
/// gives it up as the close begins, before the client can see the close (as
/// nginx frees a connection slot before closing its socket): a client that
/// reconnects at once is not refused by `max_connections` for its own old
/// connection.
///
/// An idle connection holds no timer here: the deadline's timer is made
/// when a read has to wait for a head's bytes, and dropped once the head
/// is complete.
#[derive(Debug)]
pub struct HeadDeadline {
    /// Declared before `inner`, so it drops before the socket closes.
    counted: Option<Open>,
    inner: Inner,
    limit: Duration,
    /// When the head being read must be complete (while `armed`).
    deadline: tokio::time::Instant,
    /// The timer for `deadline`, while a read waits on an armed deadline.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether a head is being read against the deadline.
    armed: bool,
    /// Set when a request ended: the next bytes start a new head.
    next_head: std::sync::atomic::AtomicBool,
    /// Set when a parser has a complete head: the deadline ends.
    parsed: std::sync::atomic::AtomicBool,
    /// Where the head being read ends, found incrementally.
    scan: crate::net::head_scan::HeadScan,
    /// Bytes read by the lane and handed back: served before the socket.
    unread: Vec<u8>,
    unread_at: usize,
}

/// The client stream under the head deadline: a plain connection's socket
/// held here (no box, no Pingora socket stream: [`Socket`]), or any other
/// stream (TLS) as Pingora's boxed stream.
#[derive(Debug)]
enum Inner {
    Plain(Counted<Socket>),
    Boxed(Stream),
}

impl Inner {
    fn io(&self) -> &dyn IO {
        match self {
            Inner::Plain(s) => s,
            Inner::Boxed(s) => &**s,
        }
    }

    fn io_mut(&mut self) -> &mut dyn IO {
        match self {
            Inner::Plain(s) => s,
            Inner::Boxed(s) => &mut **s,
        }
    }
}

impl HeadDeadline {
    /// Arms the deadline now; `counted` is released when the close begins.
    pub fn new(inner: Stream, limit: Duration, counted: Open) -> Self {
        // A plain connection's socket comes out of its box.
        let inner = if IO::as_any(&*inner).is::<Counted<Socket>>() {
            match inner.into_any().downcast::<Counted<Socket>>() {
                Ok(plain) => Inner::Plain(*plain),
                Err(_) => unreachable!("the stream was just found to be a Counted<Socket>"),
            }
        } else {
            Inner::Boxed(inner)
        };
        Self::armed(inner, limit, Some(counted))
    }

    /// A plain connection given back by its parker
    /// ([`crate::accept::park`]) with input waiting: a new head is due,
    /// within `limit` from now.
    pub fn resumed(inner: Counted<Socket>, limit: Duration, counted: Option<Open>) -> Self {
        Self::armed(Inner::Plain(inner), limit, counted)
    }

    /// `inner` with a head due within `limit` from now.
    fn armed(inner: Inner, limit: Duration, counted: Option<Open>) -> Self {
        HeadDeadline {
            counted,
            inner,
            limit,
            deadline: tokio::time::Instant::now() + limit,
            sleep: None,
            armed: true,
            next_head: std::sync::atomic::AtomicBool::new(false),
            parsed: std::sync::atomic::AtomicBool::new(false),
            scan: Default::default(),
            unread: Vec::new(),
            unread_at: 0,
        }
    }

    /// Whether the connection can be parked between requests: a plain
    /// socket, with nothing read and not yet served.
    pub fn parkable(&self) -> bool {
        matches!(self.inner, Inner::Plain(_)) && self.unread_at >= self.unread.len()
    }

    /// The plain socket and the connection's count, to be parked (the head
    /// deadline's state goes: the next head gets a new one). None, and the
    /// connection dropped, unless [`HeadDeadline::parkable`].
    pub fn into_plain(self) -> Option<(Counted<Socket>, Option<Open>)> {
        if !self.parkable() {
            return None;
        }
        match self.inner {
            Inner::Plain(socket) => Some((socket, self.counted)),
            Inner::Boxed(_) => None,
        }
    }

    /// The peer's address: the client's, or the source its PROXY header
    /// named (None when unknown).
    pub fn peer(&self) -> Option<std::net::SocketAddr> {
        match &self.inner {
            Inner::Plain(s) => Some(s.get_ref().peer()),
            Inner::Boxed(s) => s
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied()),
        }
    }

    /// The port of the listener the connection was accepted on (0 when
    /// unknown).
    pub fn local_port(&self) -> u16 {
        match &self.inner {
            Inner::Plain(s) => s.get_ref().local_port(),
            Inner::Boxed(s) => s
                .get_socket_digest()
                .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).map(|a| a.port()))
                .unwrap_or(0),
        }
    }

    /// Puts `bytes` back in front of the stream: the next reads (and
    /// peeks) return them first. They have been through the head deadline.
    pub fn unread(&mut self, mut bytes: Vec<u8>) {
        bytes.extend_from_slice(&self.unread[self.unread_at..]);
        self.unread = bytes;
        self.unread_at = 0;
    }

    /// The head is complete: the deadline ends, and its timer goes.
    fn disarm(&mut self) {
        self.armed = false;
        self.sleep = None;
    }

    /// Reads from the socket, enforcing the head deadline.
    fn poll_read_socket(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self;
        if this.armed && this.parsed.swap(false, Ordering::Relaxed) {
            this.disarm();
        }
        if let Some(sleep) = this.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(timed_out()));
            }
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &res {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if this.armed {
                    if this.scan.feed(new) {
                        this.disarm();
                    }
                } else if !new.is_empty() && this.next_head.swap(false, Ordering::Relaxed) {
                    // A new head starts; most arrive whole in this one read.
                    this.scan = Default::default();
                    // Not when a parser already has this head (it came in an
                    // earlier read, pipelined): these bytes are its body.
                    if !this.scan.feed(new) && !this.parsed.swap(false, Ordering::Relaxed) {
                        this.armed = true;
                        this.deadline = tokio::time::Instant::now() + this.limit;
                    }
                }
            }
            // The read waits with a head due: the deadline's timer must
            // wake this task (made now, once per head that has to wait).
            Poll::Pending if this.armed && this.sleep.is_none() => {
                let deadline = this.deadline;
                let sleep = this
                    .sleep
                    .insert(Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(timed_out()));
                }
            }
            _ => {}
        }
        res
    }

    /// Marks the end of an HTTP/1 request: the next bytes read begin a new
    /// head, which gets `limit` from its first byte.
    pub fn next_request(&self) {
        self.parsed.store(false, Ordering::Relaxed);
        self.next_head.store(true, Ordering::Relaxed);
    }

    /// Marks a request head as parsed: its deadline ends even when the
    /// bytes seen did not show its end (e.g. the head arrived with the
    /// request before it, pipelined).
    pub fn head_parsed(&self) {
        self.parsed.store(true, Ordering::Relaxed);
    }

    /// Marks the head of the request on `stream` as parsed, if it is one of
    /// ours (a no-op for HTTP/2 and other streams).
    pub fn head_parsed_on(stream: Option<&Stream>) {
        if let Some(h) = stream.and_then(|s| s.as_any().downcast_ref::<HeadDeadline>()) {
            h.head_parsed();
        }
    }

    /// Marks the end of a request on the connection `stream`, if it is one
    /// of ours (a no-op for HTTP/2 and other streams).
    pub fn request_done(stream: Option<&Stream>) {
        if let Some(h) = stream.and_then(|s| s.as_any().downcast_ref::<HeadDeadline>()) {
            h.next_request();
        }
    }
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.unread_at < this.unread.len() {
            let rest = &this.unread[this.unread_at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.unread_at += n;
            if this.unread_at == this.unread.len() {
                this.unread = Vec::new();
                this.unread_at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        this.poll_read_socket(cx, buf)
    }
}

/// The error of a head that missed its deadline.
fn timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "client did not send a complete request head in time",
    )
}

crate::net::wrap::counted_stream!(HeadDeadline);

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.io().get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.io().get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.io().selected_alpn_proto()
    }
}

// The traits the head deadline's wrapper delegates to its `inner`.

impl AsyncRead for Inner {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Inner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Boxed(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Inner {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Inner::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Boxed(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Inner::Plain(s) => Pin::new(s).poll_flush(cx),
            Inner::Boxed(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Inner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Boxed(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Inner::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Inner::Boxed(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        self.io().is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Inner {
    async fn shutdown(&mut self) {
        self.io_mut().shutdown().await
    }
}

impl UniqueID for Inner {
    fn id(&self) -> UniqueIDType {
        self.io().id()
    }
}

impl GetTimingDigest for Inner {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.io().get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.io().get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.io().get_write_pending_time()
    }
}

impl GetProxyDigest for Inner {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.io().get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.io_mut().set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Inner {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.io().get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.io_mut().set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    /// Pingora peeks only to tell cleartext HTTP/2 by its preface. This
    /// waits for `buf.len()` bytes like a socket's peek, but returns as soon
    /// as the bytes read differ from the HTTP/2 preface (`buf` then holds
    /// them, zero-padded, so it cannot equal the preface): a short HTTP/1
    /// request such as `GET / HTTP/1.0` with no Host is not left waiting
    /// for bytes that never come. The bytes stay unread.
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        let mut bytes = self.unread.split_off(self.unread_at);
        self.unread.clear();
        self.unread_at = 0;
        let mut chunk = vec![0u8; 4096];
        let differs = |b: &[u8]| !H2_PREFACE.starts_with(&b[..b.len().min(H2_PREFACE.len())]);
        while bytes.len() < buf.len() && !differs(&bytes) {
            let mut rb = ReadBuf::new(&mut chunk);
            if let Err(e) = std::future::poll_fn(|cx| self.poll_read_socket(cx, &mut rb)).await {
                self.unread(bytes);
                return Err(e);
            }
            if rb.filled().is_empty() {
                self.unread(bytes);
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            bytes.extend_from_slice(rb.filled());
        }
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        buf[n..].fill(0);
        self.unread(bytes);
        Ok(true)
    }
}
