//! The lane: Duotone's own HTTP/1.1 loop for the common requests, one routed
//! to a service and proxied over a pooled upstream connection, with no task,
//! channel or header map per request: the head is parsed in place, the
//! upstream head written straight from it, and the response relayed.
//!
//! Static files are answered on the lane too. Everything else (redirects,
//! auth, allow lists, compression, upgrades, chunked or large uploads,
//! HTTP/1.0, bad or oversized heads, ACME challenges) is handed to
//! Pingora's full path together with the bytes already read; Pingora then
//! serves the rest of the connection, exactly as without the lane. HTTP/2
//! streams are served per stream ([`h2`]).

mod field;
pub mod h2;
mod local;
mod relay;
pub mod request;
pub mod response;
mod timer;
mod upstream;

use crate::access_log::{AccessLog, Entry};
use crate::conn::HeadDeadline;
use crate::control::{Control, Snapshot};
use crate::forwarded::RequestIds;
use crate::head_scan::HeadScan;
use pingora::protocols::{GetSocketDigest, Ssl, ALPN};
use pingora::server::ShutdownWatch;
use request::{LogFields, Parsed, Plan, Work};
use routes::config::AccessLog as LogFormat;
use std::sync::Arc;
use std::time::Instant;
use timer::Timer;
use tokio::io::{AsyncRead, AsyncReadExt};

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
}

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
                            Parsed::Lane(p) => {
                                io.head_parsed();
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
                    // Idle between requests: keep-alive timeout, and leave
                    // at once on graceful shutdown.
                    tokio::select! {
                        biased;
                        r = client_timer.within(limits.keepalive_timeout, read_some(io, &mut buf)) => r,
                        _ = shutdown.changed() => return End::Closed,
                    }
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
                        relay::fail(io, plan.head_method, 408, limits.body_timeout).await;
                        let outcome = Outcome {
                            status: 408,
                            bytes: 0,
                            pool: usize::MAX,
                            member: None,
                            ok: false,
                            keep_client: false,
                        };
                        self.finish(&snap, &plan, &outcome, start, log, &ip, "HTTP/1.1");
                        return End::Closed;
                    }
                    _ => return End::Closed,
                }
            }
            let outcome = match &plan.work {
                Work::Proxy(service) => {
                    out.extend_from_slice(&buf[plan.head_len..need]);
                    let mut client = relay::H1 {
                        io,
                        timeout: limits.body_timeout,
                        timer: &mut client_timer,
                        upstream_timer: &mut upstream_timer,
                    };
                    relay::exchange(self, &snap, &plan, *service, &out, &mut client, tls).await
                }
                Work::Static(req) => {
                    let hsts = hsts(&snap, plan.site, tls);
                    let add = snap
                        .table
                        .sites
                        .get(plan.site)
                        .and_then(|s| s.routes.get(plan.route))
                        .map_or(&routes::headers::AddHeaders::NONE, |r| &r.headers);
                    local::serve(req, hsts, add, plan.close, io, limits.body_timeout).await
                }
            };
            buf.drain(..need);
            io.next_request();
            served += 1;
            self.finish(&snap, &plan, &outcome, start, log, &ip, "HTTP/1.1");
            if !outcome.keep_client || plan.close || *shutdown.borrow() {
                return End::Closed;
            }
        }
    }

    /// Metrics, passive health and the access log line for one request.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        snap: &Snapshot,
        plan: &Plan,
        o: &Outcome,
        start: Instant,
        log: Option<LogFields>,
        ip: &str,
        proto: &'static str,
    ) {
        let Some(site) = snap.table.sites.get(plan.site) else {
            return;
        };
        let Some(route) = site.routes.get(plan.route) else {
            return;
        };
        let svc = match plan.work {
            Work::Proxy(i) => snap.table.services.get(i),
            Work::Static(_) => None,
        };
        let pool = svc.and_then(|s| s.pools.get(o.pool));
        let member = pool.and_then(|p| p.members.get(o.member?));
        if o.ok {
            if let Some(m) = member {
                m.health.succeed();
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        if let Some(slot) = snap.slots.get(route.slot) {
            match slot.metrics.colors.get(o.pool) {
                Some(c) => c.count(o.status),
                None => slot.metrics.local.count(o.status),
            }
            slot.metrics.duration.observe(elapsed);
            if svc.is_none() && o.bytes > 0 {
                slot.metrics.static_bytes.inc_by(o.bytes);
            }
        }
        let Some(log) = log else {
            return;
        };
        let upstream = member.map(|m| m.addr.to_string()).unwrap_or_default();
        let entry = Entry {
            client: if log.client.is_empty() {
                ip.to_string()
            } else {
                log.client
            },
            host: &log.host,
            method: &log.method,
            uri: &log.uri,
            proto,
            status: o.status,
            bytes: o.bytes as usize,
            duration: elapsed,
            site: &site.name,
            service: svc.map(|s| s.name.as_str()).unwrap_or(""),
            color: pool.map(|p| p.color.as_str()).unwrap_or(""),
            upstream: &upstream,
            request_id: std::str::from_utf8(plan.id.as_bytes()).unwrap_or(""),
            referer: &log.referer,
            user_agent: &log.user_agent,
        };
        self.access_log.log(snap.table.config.access_log, &entry);
    }
}

/// The site's Strict-Transport-Security value, on TLS connections only.
fn hsts(snap: &Snapshot, site: usize, tls: bool) -> Option<&str> {
    snap.table
        .sites
        .get(site)
        .and_then(|s| s.hsts.as_deref())
        .filter(|_| tls)
}

/// The connection peer's IP address (IPv4-mapped IPv6 as IPv4).
fn peer_ip(io: &HeadDeadline) -> Option<std::net::IpAddr> {
    io.get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
        .map(|ip| ip.to_canonical())
}

/// Reads what is available into the spare capacity of `buf`.
async fn read_some<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    r.read_buf(buf).await
}
