//! What the lane's HTTP/1.1 and HTTP/2 sides share: the lane's state,
//! how a connection or request ended, and small connection helpers.

use super::request::{LogFields, Plan, Work};
use crate::control::{Control, Snapshot};
use crate::net::forwarded::RequestIds;
use crate::net::stream::HeadDeadline;
use crate::ops::access_log::AccessLog;
use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// The lane's shared state.
pub struct Lane {
    /// The control plane (routing snapshot).
    pub control: Arc<Control>,
    /// Request ids, shared with Pingora's path.
    pub ids: Arc<RequestIds>,
    /// Access log, shared with Pingora's path.
    pub access_log: Arc<AccessLog>,
    /// Whether ACME HTTP-01 challenges are answered (by Pingora's path).
    pub acme: bool,
}

/// How the lane left a connection.
pub enum End {
    /// Closed (or to be closed): nothing more to do.
    Closed,
    /// Pingora's path takes over; these bytes were read and not consumed.
    Handoff(Vec<u8>),
    /// A plain HTTP/1.1 connection idle past the lane's grace: it waits for
    /// its next request parked ([`crate::accept::park`]), with no task of
    /// its own, and is served again by [`Lane::serve`] when input comes.
    Park {
        /// The rest of the keep-alive timeout: closed if nothing comes.
        within: std::time::Duration,
        /// How long it may still bring a request once a graceful shutdown
        /// has begun (its last call).
        last_call: std::time::Duration,
    },
}

/// What happened to one proxied request.
pub struct Outcome {
    /// Status sent to the client (0: none).
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    /// The pool (color) chosen (`usize::MAX` when answered locally).
    pub pool: usize,
    /// The member last tried.
    pub member: Option<usize>,
    /// The exchange completed without error.
    pub ok: bool,
    /// The client connection can serve another request.
    pub keep_client: bool,
    /// Seconds the request was held by a pause before it was sent (part of
    /// the client's wait, not of the app's latency).
    pub held: f64,
}

impl Lane {
    /// Metrics, passive health and the access log line for one request.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish(
        &self,
        snap: &Snapshot,
        plan: &Plan,
        o: &Outcome,
        start: Instant,
        log: Option<LogFields>,
        ip: &str,
        proto: &'static str,
    ) {
        let service = match plan.work {
            Work::Proxy(i) => Some(i),
            Work::Static(_) => None,
        };
        let f = crate::record::Finished {
            site: Some(plan.site),
            route: Some((plan.site, plan.route)),
            service,
            pool: service.map(|_| o.pool),
            member: o.member,
            ok: o.ok,
            status: o.status,
            bytes: o.bytes,
            static_bytes: if service.is_none() { o.bytes } else { 0 },
            held: o.held,
            elapsed: start.elapsed().as_secs_f64(),
        };
        let log = log.as_ref();
        crate::record::record(snap, &self.access_log, &f, || {
            let log = log?;
            Some(crate::ops::access_log::Request {
                client: if log.client.is_empty() {
                    ip.to_string()
                } else {
                    log.client.clone()
                },
                host: &log.host,
                method: &log.method,
                uri: &log.uri,
                proto,
                request_id: std::str::from_utf8(plan.id.as_bytes()).unwrap_or(""),
                referer: &log.referer,
                user_agent: &log.user_agent,
            })
        });
    }
}

/// The site's Strict-Transport-Security value, on TLS connections only.
pub(super) fn hsts(snap: &Snapshot, site: usize, tls: bool) -> Option<&str> {
    snap.table
        .sites
        .get(site)
        .and_then(|s| s.hsts.as_deref())
        .filter(|_| tls)
}

/// The connection peer's IP address (IPv4-mapped IPv6 as IPv4).
pub(super) fn peer_ip(io: &HeadDeadline) -> Option<std::net::IpAddr> {
    io.peer().map(|a| a.ip().to_canonical())
}

/// The connection peer's port (0 when unknown).
pub(super) fn peer_port(io: &HeadDeadline) -> u16 {
    io.peer().map_or(0, |a| a.port())
}

/// The port of the listener `io` was accepted on (0 when unknown).
pub(super) fn local_port(io: &HeadDeadline) -> u16 {
    io.local_port()
}

/// Reads what is available into the spare capacity of `buf`.
pub(super) async fn read_some<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_BYTES);
    }
    r.read_buf(buf).await
}

/// The size of a connection's read buffer, and of the worker's buffer for
/// reads on idle connections.
const READ_BYTES: usize = 4096;

/// How many read buffers of connections that went idle a worker keeps for
/// the next ones that get input.
const SPARES: usize = 32;

thread_local! {
    /// What an idle connection reads first is read here (one per worker
    /// thread), so that a connection waiting for its next request holds no
    /// buffer of its own.
    static IDLE_READ: RefCell<[u8; READ_BYTES]> = const { RefCell::new([0; READ_BYTES]) };
    /// Read buffers given back by connections that went idle (at most
    /// [`SPARES`]): a busy worker reuses them instead of an allocation per
    /// request.
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Takes `buf` (empty) from a connection that goes idle, keeping its
/// memory for the worker's next connection that gets input.
pub(super) fn give_back(buf: &mut Vec<u8>) {
    let spare = std::mem::take(buf);
    if spare.capacity() == READ_BYTES {
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARES {
                s.push(spare);
            }
        });
    }
}

/// Reads the first bytes of a request into `buf` (empty, and often without
/// capacity: an idle connection's) and returns how many. The wait holds no
/// buffer: the bytes are read into the worker's buffer, and only then
/// copied into `buf`, which takes a buffer given back by a connection that
/// went idle ([`give_back`]) or a new one.
pub(super) async fn read_idle<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_idle(r, buf, cx)).await
}

/// [`read_idle`] as a poll function, for a wait that polls it beside
/// other futures.
pub(super) fn poll_read_idle<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    cx: &mut std::task::Context<'_>,
) -> Poll<std::io::Result<usize>> {
    IDLE_READ.with(|scratch| {
        // Borrowed only within this poll: no other read runs meanwhile.
        let mut scratch = scratch.borrow_mut();
        let mut read = ReadBuf::new(&mut scratch[..]);
        match Pin::new(&mut *r).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                let got = read.filled();
                if buf.capacity() == 0 && !got.is_empty() {
                    *buf = SPARE
                        .with(|s| s.borrow_mut().pop())
                        .unwrap_or_else(|| Vec::with_capacity(READ_BYTES));
                }
                buf.extend_from_slice(got);
                Poll::Ready(Ok(got.len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
}
