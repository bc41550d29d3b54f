//! What a finished request reports, once for every transport: passive
//! health (a member that answered is up), the color's outcome counters
//! (for watches), the route's metrics (status per color or local, duration,
//! static bytes), and the access log line.

use crate::control::Snapshot;
use crate::ops::access_log::{AccessLog, Entry, Request};
use routes::config::AccessLog as Format;

/// Where a finished request went and how it ended.
#[derive(Debug, Default, Clone, Copy)]
pub struct Finished {
    /// The site (index), when the host matched one.
    pub site: Option<usize>,
    /// The site and route (indices), when the path matched one.
    pub route: Option<(usize, usize)>,
    /// The service (index), when the request was proxied.
    pub service: Option<usize>,
    /// The pool (color index) proxied to.
    pub pool: Option<usize>,
    /// The member last tried.
    pub member: Option<usize>,
    /// The exchange completed without error (the member is healthy).
    pub ok: bool,
    /// The status sent (0: none).
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    /// Of those, bytes of a static file.
    pub static_bytes: u64,
    /// Seconds from the request's start.
    pub elapsed: f64,
    /// Of those, seconds the request was held by a pause before it was
    /// sent (left out of the color's latency).
    pub held: f64,
}

/// Reports `f` to health, metrics and (when on) the access log; `line` is
/// called only when a line is written.
pub fn record<'a>(
    snap: &Snapshot,
    access_log: &AccessLog,
    f: &Finished,
    line: impl FnOnce() -> Option<Request<'a>>,
) {
    let table = &snap.table;
    let route = f.route.and_then(|(s, r)| table.sites.get(s)?.routes.get(r));
    let svc = f.service.and_then(|i| table.services.get(i));
    let pool = svc.and_then(|s| s.pools.get(f.pool?));
    let member = pool.and_then(|p| p.members.get(f.member?));
    if f.ok {
        if let Some(m) = member {
            m.health.succeed();
        }
    }
    // The color's own outcome counters (shared across generations), which
    // watches judge: responses, 5xx, latency.
    if let Some(p) = pool {
        p.stats.finished(f.status, f.elapsed - f.held);
    }
    if let Some(slot) = route.and_then(|r| snap.slots.get(r.slot)) {
        let m = &slot.metrics;
        match pool.and(f.pool).and_then(|i| m.colors.get(i)) {
            Some(c) => c.count(f.status),
            None => m.local.count(f.status),
        }
        m.duration.observe(f.elapsed);
        if f.static_bytes > 0 {
            m.static_bytes.inc_by(f.static_bytes);
        }
    }
    let format = table.config.access_log;
    if format == Format::Off {
        return;
    }
    let Some(line) = line() else {
        return;
    };
    let upstream = member.map(routes::Member::written).unwrap_or_default();
    let entry = Entry {
        req: line,
        status: f.status,
        bytes: f.bytes as usize,
        duration: f.elapsed,
        site: f
            .site
            .and_then(|s| table.sites.get(s))
            .map_or("", |s| s.name.as_str()),
        service: svc.map_or("", |s| s.name.as_str()),
        color: pool.map_or("", |p| p.color.as_str()),
        upstream: &upstream,
    };
    access_log.log(format, &entry);
}
