//! Each accepted client connection: the cap on concurrent connections,
//! the head deadline around its stream, and the dispatch between the lane
//! (HTTP/1.1 connections and HTTP/2 streams it serves) and Pingora's path.

use crate::accept::park::Parked;
use crate::accept::{Counted, Socket};
use crate::net::stream::{Connections, HeadDeadline, H2_PREFACE};
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::protocols::{Shutdown, Ssl, ALPN};
use pingora::server::ShutdownWatch;
use std::sync::Arc;

/// Wraps a Pingora app with connection limits and the head deadline.
pub struct Guarded<A> {
    inner: Arc<A>,
    /// Open client connections (shared with metrics).
    pub conns: Arc<Connections>,
    control: Arc<crate::control::Control>,
    lane: Option<Arc<crate::lane::Lane>>,
}

impl<A> Guarded<A> {
    /// Wraps `inner`; limits are read per connection so reloads apply.
    /// With a `lane`, requests it serves (HTTP/1.1 connections and HTTP/2
    /// streams) never reach `inner`.
    pub fn new(
        inner: A,
        conns: Arc<Connections>,
        control: Arc<crate::control::Control>,
        lane: Option<crate::lane::Lane>,
    ) -> Self {
        Guarded {
            inner: Arc::new(inner),
            conns,
            control,
            lane: lane.map(Arc::new),
        }
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> Guarded<A> {
    /// Serves one HTTP/1.x request on Pingora's path (its first bytes are
    /// unread in `stream`). Returns the connection when it can serve
    /// another request, as Pingora's own loop would reuse it.
    async fn one_on_pingora(
        &self,
        stream: HeadDeadline,
        shutdown: &ShutdownWatch,
    ) -> Option<HeadDeadline> {
        let mut session = ServerSession::new_http1(Box::new(stream));
        // As Pingora's loop: no reuse once shutting down. The keep-alive
        // wait itself is the lane's (`keepalive_timeout`).
        let keepalive = (!*shutdown.borrow()).then_some(KEEPALIVE_SECS);
        session.set_keepalive(keepalive);
        let reused = self.inner.process_new_http(session, shutdown).await?;
        let (stream, settings) = reused.consume();
        let mut stream = match stream.into_any().downcast::<HeadDeadline>() {
            Ok(stream) => *stream,
            Err(_) => return None,
        };
        // A request pipelined behind this one, read with it: served next.
        if let Some(next) = settings.and_then(|mut s| s.take_pipelined_prefix()) {
            stream.unread(next.to_vec());
        }
        Some(stream)
    }
}

/// The keep-alive Pingora's session is told of: it only decides whether
/// the connection is reusable; the lane waits for the next request.
const KEEPALIVE_SECS: u64 = 60;

impl<A> Guarded<A> {
    /// Admits a new connection: counted, under `max_connections`, its
    /// PROXY header read (when configured), under its head deadline. None:
    /// refused, or closed.
    async fn admit(&self, stream: Stream) -> Option<HeadDeadline> {
        let (limits, proxy_protocol) = {
            let snap = self.control.load();
            let config = &snap.table.config;
            (config.limits, config.server.proxy_protocol.http)
        };
        let (now, open) = self.conns.open();
        if now > limits.max_connections as i64 {
            tracing::warn!(
                active = now,
                "max_connections reached: refusing a connection"
            );
            // Uncounted before the socket closes (`open` drops first).
            return None;
        }
        let mut stream = stream;
        let mut rest = Vec::new();
        if proxy_protocol && stream.get_ssl_digest().is_none() {
            // Plain HTTP (TLS streams had theirs before the handshake:
            // `proxy_protocol::PreTls`).
            let snap = self.control.load();
            let trusted = &snap.table.config.server.trusted_proxies;
            let fd = crate::accept::proxy_protocol::raw_fd(&stream);
            // Boxed, as is the HTTP/2 session below: this future lives as
            // long as the connection, and inline each would make every
            // connection's as large as the largest of them (the HTTP/2
            // session made it 12.4 KB instead of 3.8 KB).
            let read = Box::pin(crate::accept::proxy_protocol::accept(
                &mut *stream,
                fd,
                trusted,
                limits.header_timeout,
            ));
            match read.await {
                Ok(r) => rest = r,
                Err(why) => {
                    tracing::debug!("closing a connection: {why}");
                    return None;
                }
            }
        }
        let mut stream = HeadDeadline::new(stream, limits.header_timeout, open);
        if !rest.is_empty() {
            stream.unread(rest);
        }
        Some(stream)
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> Guarded<A> {
    /// Serves an admitted connection: on the lane (HTTP/1.1, and HTTP/2
    /// streams), with each request the lane hands off served on Pingora's
    /// path and the connection back on the lane after it; without a lane,
    /// on Pingora's path. A plain HTTP/1.1 connection idle past the lane's
    /// grace is parked ([`crate::accept::park`]) and this ends; it is
    /// served again by a call from [`Guarded::resume`] in a task of its own.
    async fn serve(self: &Arc<Self>, mut stream: HeadDeadline, shutdown: &ShutdownWatch) {
        let Some(lane) = &self.lane else {
            self.inner.process_new(Box::new(stream), shutdown).await;
            return;
        };
        let mut resumed = false;
        loop {
            let read = match lane.serve(&mut stream, shutdown, resumed).await {
                crate::lane::End::Closed => {
                    stream.shutdown().await;
                    return;
                }
                crate::lane::End::Park { within, last_call } => {
                    self.park(stream, within, last_call, shutdown);
                    return;
                }
                crate::lane::End::Handoff(read) => read,
            };
            // HTTP/2: by ALPN on TLS, by its preface in the clear (only as
            // a connection's first bytes).
            let h2 = match stream.get_ssl_digest() {
                Some(_) => matches!(stream.selected_alpn_proto(), Some(ALPN::H2)),
                None => !resumed && read.starts_with(H2_PREFACE),
            };
            stream.unread(read);
            if h2 {
                let (lane, app) = (lane.clone(), self.inner.clone());
                Box::pin(crate::lane::h2::serve_connection(
                    lane, app, stream, shutdown,
                ))
                .await;
                return;
            }
            // One request on Pingora's path, boxed (its future is large),
            // then back to the lane: the connection waits for its next
            // request there, as cheaply as any other.
            match Box::pin(self.one_on_pingora(stream, shutdown)).await {
                Some(back) => stream = back,
                None => return,
            }
            resumed = true;
        }
    }

    /// Parks the idle plain connection `stream` on this worker's parker
    /// for at most `within` (`last_call` once a shutdown has begun).
    fn park(
        self: &Arc<Self>,
        stream: HeadDeadline,
        within: std::time::Duration,
        last_call: std::time::Duration,
        shutdown: &ShutdownWatch,
    ) {
        // The lane parks only what `parkable()` allows.
        let Some((counted, conns)) = stream.into_plain() else {
            return;
        };
        let (socket, load, answered) = counted.into_parts();
        let (tcp, peer) = socket.into_parts();
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::debug!("parking a connection failed: {e}");
                return;
            }
        };
        let conn = Parked {
            tcp,
            peer,
            load,
            conns,
            answered,
        };
        crate::accept::park::park(conn, within, last_call, shutdown, || {
            let (me, shutdown) = (self.clone(), shutdown.clone());
            Arc::new(move |conn| {
                drop(tokio::spawn(me.clone().resume(conn, shutdown.clone())));
            })
        });
    }

    /// Serves a parked connection again, once input came: as a new
    /// connection's first read, without the set-up (it is still counted;
    /// its PROXY header was read).
    async fn resume(self: Arc<Self>, conn: Parked, shutdown: ShutdownWatch) {
        let header_timeout = self.control.load().table.config.limits.header_timeout;
        let tcp = match tokio::net::TcpStream::from_std(conn.tcp) {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::debug!("resuming a parked connection failed: {e}");
                return;
            }
        };
        let socket = Socket::new(tcp, conn.peer);
        let counted = Counted::<Socket>::from_parts(socket, conn.load, conn.answered);
        let stream = HeadDeadline::resumed(counted, header_timeout, conn.conns);
        self.serve(stream, &shutdown).await;
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Set up in a future of its own: its locals (the limits, the
        // PROXY header's read) are not kept by this one, which lives as
        // long as the connection.
        let stream = self.admit(stream).await?;
        self.serve(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
