//! The lane's HTTP/1.1 loop: reads heads, plans each request, and serves
//! it (proxied or static) until the connection ends or is handed off.

use super::request::{LogFields, Parsed, Work};
use crate::net::head_scan::HeadScan;
use crate::net::stream::HeadDeadline;
use pingora::protocols::{Ssl, ALPN};
use pingora::server::ShutdownWatch;
use routes::config::AccessLog as LogFormat;
use std::time::{Duration, Instant};

/// How long an idle keep-alive connection may still bring one more request
/// once a graceful shutdown has begun (capped by the keep-alive timeout).
/// A client that sends its next request at once, as a busy one does, gets
/// it answered with `connection: close` instead of finding the connection
/// closed under it.
const LAST_CALL: Duration = Duration::from_secs(2);

use super::state::{
    give_back, hsts, local_port, peer_ip, poll_read_idle, read_idle, read_some, End, Lane, Outcome,
};
use super::timer::Timer;
use super::{local, relay, request};
use std::future::Future;
use std::task::Poll;

/// How long a keep-alive connection waits for its next request with its
/// request state at hand (the exchange's future, the upstream head buffer,
/// the upstream timer): a busy client's next request then costs nothing
/// more. Past it the connection gives that state up and waits with its
/// socket and a few fields only ([`Idle`]), and a request that comes later
/// sets it up again (one allocation).
const GRACE: Duration = Duration::from_secs(1);

/// What an HTTP/1.1 connection on the lane keeps between requests.
struct Idle {
    /// The connection's facts, as requests are planned with them, but for
    /// the peer's address as text: that is made for each stretch of
    /// requests ([`Lane::busy`]), so an idle connection holds no `String`.
    conn: request::Conn<'static>,
    /// Bytes read and not yet served (empty, without a buffer, while the
    /// connection waits for a request: [`read_idle`]).
    buf: Vec<u8>,
    /// Waits on the client (keep-alive, body, writes).
    timer: Timer,
    /// Tells of a graceful shutdown.
    shutdown: ShutdownWatch,
}

/// How a stretch of requests ([`Lane::busy`]) ended.
enum Step {
    /// No request came within [`GRACE`]: the connection waits on, idle.
    Idle,
    /// The connection is done with on the lane.
    End(End),
}

/// How a wait for the next request's first bytes ended.
enum Next {
    /// They are in `buf`.
    Input,
    /// Nothing came within the wait's limit.
    TimedOut,
    /// The client closed, the read failed, or the last call after a
    /// shutdown passed.
    Closed,
}

/// Waits up to `limit` for the first bytes of the next request (into
/// `st.buf`, which holds no buffer meanwhile). On graceful shutdown the
/// client gets a last call: a request that arrives within [`LAST_CALL`]
/// (capped by `keepalive`) is served (with `connection: close`), so a busy
/// keep-alive client is not cut off while its next request is on the way.
async fn next_request(
    io: &mut HeadDeadline,
    st: &mut Idle,
    limit: Duration,
    keepalive: Duration,
) -> Next {
    let Idle {
        buf,
        timer,
        shutdown,
        ..
    } = st;
    let first = if *shutdown.borrow() {
        Wait::Stopped
    } else {
        let changed = std::pin::pin!(shutdown.changed());
        wait_input(io, buf, timer, limit, Some(changed)).await
    };
    let read = match first {
        Wait::Read(r) => r,
        Wait::TimedOut => return Next::TimedOut,
        Wait::Stopped => {
            let last_call = LAST_CALL.min(keepalive);
            match wait_input::<std::future::Pending<()>>(io, buf, timer, last_call, None).await {
                Wait::Read(r) => r,
                Wait::TimedOut | Wait::Stopped => return Next::Closed,
            }
        }
    };
    match read {
        Ok(n) if n > 0 => Next::Input,
        _ => Next::Closed,
    }
}

/// How [`wait_input`] ended.
enum Wait {
    /// The read ended (bytes, the end, or an error).
    Read(std::io::Result<usize>),
    /// `stop` was ready first.
    Stopped,
    /// The time limit passed first.
    TimedOut,
}

/// Reads the first bytes of a request into `buf` ([`read_idle`]), for at
/// most `limit` (on `timer`, armed only if the read has to wait), unless
/// `stop` is ready first. Hand-written rather than `select!` over
/// [`Timer::within`]: this is what an idle connection waits in, and its
/// future is part of every idle connection (`select!` made it 400 bytes).
async fn wait_input<S: Future + ?Sized>(
    io: &mut HeadDeadline,
    buf: &mut Vec<u8>,
    timer: &mut Timer,
    limit: Duration,
    mut stop: Option<std::pin::Pin<&mut S>>,
) -> Wait {
    let mut armed = false;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = poll_read_idle(io, buf, cx) {
            return Poll::Ready(Wait::Read(r));
        }
        if let Some(stop) = stop.as_mut() {
            if stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wait::Stopped);
            }
        }
        if !armed {
            timer.start(limit);
            armed = true;
        }
        timer.poll_expired(cx).map(|()| Wait::TimedOut)
    })
    .await
}

impl Lane {
    /// Serves requests on `io` until the connection ends or a request
    /// needs Pingora's path. `resumed`: the connection comes back from a
    /// request served on Pingora's path, and waits for its next request
    /// as any keep-alive connection does (a new one waits for its first
    /// bytes under the head deadline).
    ///
    /// This future is what an idle keep-alive connection holds: the
    /// requests themselves are served in a boxed future ([`Lane::busy`])
    /// that ends once the connection has been idle for [`GRACE`]. Past
    /// it, a plain connection is given up to be parked ([`End::Park`]);
    /// one over TLS waits here for the rest of the keep-alive timeout.
    /// A parked connection with input is served by a new call, as a new
    /// connection is.
    pub async fn serve(
        &self,
        io: &mut HeadDeadline,
        shutdown: &ShutdownWatch,
        resumed: bool,
    ) -> End {
        if matches!(io.selected_alpn_proto(), Some(ALPN::H2)) {
            return End::Handoff(Vec::new());
        }
        let mut st = Idle {
            conn: request::Conn {
                tls: io.get_ssl_digest().is_some(),
                client_ip: "",
                peer: peer_ip(io),
                acme: self.acme,
                port: local_port(io),
                peer_port: super::state::peer_port(io),
            },
            buf: Vec::new(),
            timer: Timer::default(),
            shutdown: shutdown.clone(),
        };
        // A new connection's first bytes (the head deadline bounds the
        // wait). A resumed one goes straight to `busy`, whose keep-alive
        // wait takes an empty buffer.
        if !resumed {
            match read_idle(io, &mut st.buf).await {
                Ok(n) if n > 0 => {}
                _ => return End::Closed,
            }
        }
        loop {
            match Box::pin(self.busy(io, &mut st)).await {
                Step::End(end) => return end,
                Step::Idle => {}
            }
            // Idle for GRACE already: the rest of the keep-alive timeout.
            let keepalive = self.control.load().table.config.limits.keepalive_timeout;
            let rest = keepalive.saturating_sub(GRACE);
            if io.parkable() {
                // Plain: parked, without this task (`accept::park`); the
                // next request is served by a new call of this function.
                return End::Park {
                    within: rest,
                    last_call: LAST_CALL.min(keepalive),
                };
            }
            match next_request(io, &mut st, rest, keepalive).await {
                Next::Input => {}
                Next::TimedOut | Next::Closed => return End::Closed,
            }
        }
    }

    /// Serves requests on `io`, the first of which has begun to arrive (in
    /// `st.buf`), until the connection ends, a request needs Pingora's
    /// path, or no request comes within [`GRACE`].
    async fn busy(&self, io: &mut HeadDeadline, st: &mut Idle) -> Step {
        let tls = st.conn.tls;
        let ip = st.conn.peer.map(|ip| ip.to_string()).unwrap_or_default();
        let conn = request::Conn {
            client_ip: &ip,
            ..st.conn
        };
        let ip = ip.as_str();
        // The upstream head of each request.
        let mut out: Vec<u8> = Vec::new();
        // Waits on upstreams.
        let mut upstream_timer = Timer::default();
        let mut snap = self.control.load();
        loop {
            let mut log;
            // Each byte of a head is scanned once, however it trickles in;
            // it is parsed once, when complete.
            let mut scan = HeadScan::default();
            let mut scanned = 0;
            let plan = loop {
                if st.buf.len() > scanned {
                    let complete = scan.feed(&st.buf[scanned..]);
                    scanned = st.buf.len();
                    if complete {
                        // The routing table as of this request's arrival.
                        snap = self.control.load();
                        let config = &snap.table.config;
                        log = (config.access_log != LogFormat::Off).then(LogFields::default);
                        let parsed =
                            request::plan(&st.buf, &snap, &conn, &self.ids, &mut out, log.as_mut());
                        match parsed {
                            Parsed::Lane(mut p) => {
                                io.head_parsed();
                                // Shutting down (SIGTERM, or an upgrade's
                                // hand-over): this is the connection's last
                                // response, and it says so.
                                p.close |= *st.shutdown.borrow();
                                break p;
                            }
                            Parsed::Partial | Parsed::Handoff => {
                                return Step::End(End::Handoff(std::mem::take(&mut st.buf)))
                            }
                        }
                    }
                    let head_limit = snap.table.config.limits.max_header_bytes;
                    if st.buf.len() > head_limit.saturating_add(4096) {
                        return Step::End(End::Handoff(std::mem::take(&mut st.buf)));
                    }
                }
                let limits = snap.table.config.limits;
                let read = if st.buf.is_empty() {
                    // Idle between requests: within GRACE here, the rest of
                    // the keep-alive timeout in `serve`.
                    let keepalive = limits.keepalive_timeout;
                    match next_request(io, st, GRACE.min(keepalive), keepalive).await {
                        Next::Input => continue,
                        Next::TimedOut if keepalive > GRACE => return Step::Idle,
                        Next::TimedOut | Next::Closed => return Step::End(End::Closed),
                    }
                } else {
                    // The head deadline (HeadDeadline) bounds this.
                    read_some(io, &mut st.buf).await
                };
                match read {
                    Ok(n) if n > 0 => {}
                    _ => return Step::End(End::Closed),
                }
            };
            let start = Instant::now();
            let limits = snap.table.config.limits;
            let need = plan.head_len + plan.body_len;
            while st.buf.len() < need {
                match st
                    .timer
                    .within(limits.body_timeout, read_some(io, &mut st.buf))
                    .await
                {
                    Ok(Ok(n)) if n > 0 => {}
                    Err(()) => {
                        // The client stalled its body: its timeout (408, as
                        // on Pingora's path); no upstream was involved.
                        let timeout = snap.pages.failure(Some(plan.site), 408);
                        super::client::fail(io, plan.head_method, &timeout, limits.body_timeout)
                            .await;
                        let outcome = Outcome {
                            status: 408,
                            bytes: 0,
                            pool: usize::MAX,
                            member: None,
                            ok: false,
                            keep_client: false,
                            held: 0.0,
                        };
                        self.finish(&snap, &plan, &outcome, start, log, ip, "HTTP/1.1");
                        return Step::End(End::Closed);
                    }
                    _ => return Step::End(End::Closed),
                }
            }
            let outcome = match &plan.work {
                Work::Proxy(service) => {
                    let head_len = out.len();
                    out.extend_from_slice(&st.buf[plan.head_len..need]);
                    let mut client = super::client::H1 {
                        io,
                        timeout: limits.body_timeout,
                        timer: &mut st.timer,
                        upstream_timer: &mut upstream_timer,
                    };
                    let mut req = relay::Request {
                        bytes: &out,
                        head_len,
                        spool: None,
                        buffer: snap.response_buffer(plan.site, plan.route),
                        peer: crate::net::uwsgi::Facts {
                            tls,
                            remote_addr: plan.client,
                            remote_port: conn.peer_port,
                            server_port: conn.port,
                        },
                        stream: None,
                    };
                    let (control, service) = (&self.control, *service);
                    relay::exchange(control, &snap, &plan, service, &mut req, &mut client, tls)
                        .await
                }
                Work::Static(req) => {
                    let hsts = hsts(&snap, plan.site, tls);
                    let add = snap
                        .table
                        .sites
                        .get(plan.site)
                        .and_then(|s| s.routes.get(plan.route))
                        .map_or(&routes::headers::AddHeaders::NONE, |r| &r.headers);
                    let not_found = snap.pages.page(Some(plan.site), 404);
                    let timeout = limits.body_timeout;
                    local::serve(req, hsts, add, plan.close, io, timeout, not_found).await
                }
            };
            st.buf.drain(..need);
            if st.buf.is_empty() {
                // Idle until the next request: no buffer held meanwhile
                // (`read_idle` reads into the worker's).
                give_back(&mut st.buf);
            }
            io.next_request();
            self.finish(&snap, &plan, &outcome, start, log, ip, "HTTP/1.1");
            // A response that did not say `connection: close` is followed
            // by the idle wait, also during a shutdown (its last call): the
            // client may already be sending its next request.
            if !outcome.keep_client || plan.close {
                return Step::End(End::Closed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(unreachable_code, clippy::diverging_sub_expression)]

    /// What an idle connection holds (`serve`) against what serving
    /// requests takes (`busy`, boxed only while requests come):
    /// `cargo test -p duotone --lib lane::h1 -- --nocapture`.
    #[test]
    fn future_sizes() {
        let serve = || {
            super::Lane::serve(
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
            )
        };
        let busy = || super::Lane::busy(unreachable!(), unreachable!(), unreachable!());
        let (serve, busy) = (
            super::super::sizes::output(&serve),
            super::super::sizes::output(&busy),
        );
        println!("Lane::serve (idle connection): {serve} bytes; Lane::busy (boxed): {busy} bytes");
        let next = || {
            super::next_request(
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
            )
        };
        // What an idle connection's future is made of: the idle wait (with
        // the shutdown signal's `changed()` future), and the stream with the
        // head deadline.
        let changed = || pingora::server::ShutdownWatch::changed(unreachable!());
        println!(
            "next_request {} (of which changed() {}); Idle {}; HeadDeadline {} bytes",
            super::super::sizes::output(&next),
            super::super::sizes::output(&changed),
            std::mem::size_of::<super::Idle>(),
            std::mem::size_of::<crate::net::stream::HeadDeadline>(),
        );
        assert!(
            serve < busy,
            "the idle connection's future holds the requests' state"
        );
    }
}
