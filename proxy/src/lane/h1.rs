//! The lane's HTTP/1.1 loop: reads heads, plans each request, and serves
//! it (proxied or static) until the connection ends or is handed off.

use super::request::{LogFields, Parsed, Work};
use super::timer::Timer;
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
    give_back, hsts, local_port, peer_ip, read_idle, read_some, End, Lane, Outcome,
};
use super::{local, relay, request};

impl Lane {
    /// Serves requests on `io` until the connection ends or a request
    /// needs Pingora's path.
    pub async fn serve(&self, io: &mut HeadDeadline, shutdown: &ShutdownWatch) -> End {
        if matches!(io.selected_alpn_proto(), Some(ALPN::H2)) {
            return End::Handoff(Vec::new());
        }
        let tls = io.get_ssl_digest().is_some();
        let peer = peer_ip(io);
        let ip = peer.map(|ip| ip.to_string()).unwrap_or_default();
        let mut shutdown = shutdown.clone();
        let mut buf: Vec<u8> = Vec::new();
        let mut out: Vec<u8> = Vec::new();
        let mut served = 0u64;
        // Waits on the client (keep-alive, body, writes) and on upstreams.
        let mut client_timer = Timer::default();
        let mut upstream_timer = Timer::default();
        let conn = request::Conn {
            tls,
            client_ip: &ip,
            peer,
            acme: self.acme,
            port: local_port(io),
            peer_port: super::state::peer_port(io),
        };
        let mut snap = self.control.load();
        loop {
            let mut log;
            // Each byte of a head is scanned once, however it trickles in;
            // it is parsed once, when complete.
            let mut scan = HeadScan::default();
            let mut scanned = 0;
            let plan = loop {
                if buf.len() > scanned {
                    let complete = scan.feed(&buf[scanned..]);
                    scanned = buf.len();
                    if complete {
                        // The routing table as of this request's arrival.
                        snap = self.control.load();
                        let config = &snap.table.config;
                        log = (config.access_log != LogFormat::Off).then(LogFields::default);
                        match request::plan(&buf, &snap, &conn, &self.ids, &mut out, log.as_mut()) {
                            Parsed::Lane(mut p) => {
                                io.head_parsed();
                                // Shutting down (SIGTERM, or an upgrade's
                                // hand-over): this is the connection's last
                                // response, and it says so.
                                p.close |= *shutdown.borrow();
                                break p;
                            }
                            Parsed::Partial | Parsed::Handoff => return End::Handoff(buf),
                        }
                    }
                    let head_limit = snap.table.config.limits.max_header_bytes;
                    if buf.len() > head_limit.saturating_add(4096) {
                        return End::Handoff(buf);
                    }
                }
                let limits = snap.table.config.limits;
                let read = if buf.is_empty() && served > 0 {
                    // Idle between requests: keep-alive timeout. On graceful
                    // shutdown the client gets a last call: a request that
                    // arrives within LAST_CALL is served (with `connection:
                    // close`), so a busy keep-alive client is not cut off
                    // while its next request is on the way.
                    let last_call = LAST_CALL.min(limits.keepalive_timeout);
                    let first = if *shutdown.borrow() {
                        None
                    } else {
                        tokio::select! {
                            biased;
                            r = client_timer.within(limits.keepalive_timeout, read_idle(io, &mut buf)) => Some(r),
                            _ = shutdown.changed() => None,
                        }
                    };
                    match first {
                        Some(r) => r,
                        None => {
                            client_timer
                                .within(last_call, read_idle(io, &mut buf))
                                .await
                        }
                    }
                } else if buf.is_empty() {
                    // A new connection's first bytes (the head deadline
                    // bounds the wait).
                    Ok(read_idle(io, &mut buf).await)
                } else {
                    // The head deadline (HeadDeadline) bounds this.
                    Ok(read_some(io, &mut buf).await)
                };
                match read {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return End::Closed,
                }
            };
            let start = Instant::now();
            let limits = snap.table.config.limits;
            let need = plan.head_len + plan.body_len;
            while buf.len() < need {
                match client_timer
                    .within(limits.body_timeout, read_some(io, &mut buf))
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
                        self.finish(&snap, &plan, &outcome, start, log, &ip, "HTTP/1.1");
                        return End::Closed;
                    }
                    _ => return End::Closed,
                }
            }
            let outcome = match &plan.work {
                Work::Proxy(service) => {
                    let head_len = out.len();
                    out.extend_from_slice(&buf[plan.head_len..need]);
                    let mut client = super::client::H1 {
                        io,
                        timeout: limits.body_timeout,
                        timer: &mut client_timer,
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
            buf.drain(..need);
            if buf.is_empty() {
                // Idle until the next request: no buffer held meanwhile
                // (`read_idle` reads into the worker's).
                give_back(&mut buf);
            }
            io.next_request();
            served += 1;
            self.finish(&snap, &plan, &outcome, start, log, &ip, "HTTP/1.1");
            // A response that did not say `connection: close` is followed
            // by the idle wait, also during a shutdown (its last call): the
            // client may already be sending its next request.
            if !outcome.keep_client || plan.close {
                return End::Closed;
            }
        }
    }
}
