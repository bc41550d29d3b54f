//! The request policy: what happens to a request, decided once for every
//! transport. The lane (HTTP/1.1 and HTTP/2) and Pingora's path each read a
//! request into a [`View`], call [`decide`], and write the [`Decision`];
//! upstream attempts (pool and member choice, retries, ejection) go through
//! [`Attempts`]. Nothing here does I/O: rules are tested as functions.
//!
//! The order of the rules is the order a client sees them: header limits
//! (431), message framing (400), the request check ([`crate::request`]),
//! ACME challenges, the site (`server.unknown_host`: 404, 421 or a silent close), the route (404), the allow list (403),
//! HTTPS (308), maintenance (503, unless the client is on the allow list
//! or has the secret cookie), basic auth (401, checked by the transport: it
//! is slow by design), the body limit (413), then the route's action.

use crate::config::UnknownHost;
use crate::request::{check, Checked, Head};
use crate::table::{Action, RouteTable};
use std::net::IpAddr;

/// What a transport tells the policy about a request.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// The request line and host fields.
    pub head: Head<'a>,
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// The client (after `server.trusted_proxies`), when known.
    pub client: Option<IpAddr>,
    /// The declared Content-Length, if any.
    pub content_length: Option<u64>,
    /// How many header fields the request has.
    pub header_count: usize,
    /// Bytes of the target and header fields (names, values, 4 per field).
    pub header_bytes: usize,
    /// The framing is conflicting or unsupported (Transfer-Encoding other
    /// than one `chunked`, or beside Content-Length): a smuggling attempt.
    pub bad_framing: bool,
    /// Plain-HTTP ACME HTTP-01 challenges are answered on this listener.
    pub acme: bool,
    /// The transport could not read the target as text (not UTF-8, or no
    /// request line): refused with this, after the header limits.
    pub unreadable: Option<crate::request::Refusal>,
}

/// A local answer: status and a plain-text body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The status.
    pub status: u16,
    /// The body (one line of text).
    pub reason: &'static str,
    /// The connection closes after it (what follows may not be a request).
    pub close: bool,
}

impl Answer {
    /// Whether this is no answer ([`CLOSE_STATUS`]): the connection closes
    /// without a response.
    pub const fn is_silent_close(&self) -> bool {
        self.status == CLOSE_STATUS
    }

    const fn new(status: u16, reason: &'static str, close: bool) -> Answer {
        Answer {
            status,
            reason,
            close,
        }
    }
}

/// Too many or too large header fields.
pub const HEADERS_TOO_LARGE: Answer = Answer::new(431, "request header fields too large\n", false);
/// Conflicting or unsupported message framing.
pub const BAD_FRAMING: Answer =
    Answer::new(400, "conflicting or unsupported message framing\n", true);
/// No site serves the host (`server.unknown_host = 404`, the default).
pub const NO_SITE: Answer = Answer::new(404, "no site is configured for this host\n", false);
/// No site serves the host (`server.unknown_host = 421`).
pub const MISDIRECTED: Answer = Answer::new(421, "no site is configured for this host\n", false);
/// The status of an answer that is no answer: the transport closes the
/// connection without writing a response (HTTP/2: resets the stream) and
/// logs this status, as nginx's `return 444`.
pub const CLOSE_STATUS: u16 = 444;
/// No site serves the host (`server.unknown_host = "close"`): close the
/// connection without a response.
pub const CLOSE: Answer = Answer::new(CLOSE_STATUS, "", true);

/// The answer for a host that no site serves, as `server.unknown_host` says.
pub const fn no_site(unknown_host: UnknownHost) -> Answer {
    match unknown_host {
        UnknownHost::Close => CLOSE,
        UnknownHost::Status(404) => NO_SITE,
        UnknownHost::Status(421) => MISDIRECTED,
        UnknownHost::Status(status) => {
            Answer::new(status, "no site is configured for this host\n", false)
        }
    }
}
/// The site has no route for the path.
pub const NO_ROUTE: Answer = Answer::new(404, "not found\n", false);
/// The client is not on the route's allow list.
pub const FORBIDDEN: Answer = Answer::new(403, "forbidden\n", false);
/// Basic auth failed (sent with a `WWW-Authenticate` challenge).
pub const UNAUTHORIZED: Answer = Answer::new(401, "authentication required\n", false);
/// The `WWW-Authenticate` challenge sent with [`UNAUTHORIZED`].
pub const AUTH_CHALLENGE: &str = "Basic realm=\"restricted\", charset=\"UTF-8\"";
/// The declared body is over the route's limit.
pub const TOO_LARGE: Answer = Answer::new(413, "request body too large\n", true);
/// The site or service is in maintenance (written with the maintenance
/// page, `Retry-After` and `Cache-Control: no-store`).
pub const MAINTENANCE: Answer = Answer::new(
    503,
    "service unavailable: down for maintenance, back shortly\n",
    false,
);
/// A request body that could not be buffered (its temp file failed).
pub const NOT_BUFFERED: Answer = Answer::new(
    503,
    "service unavailable: the request body could not be buffered\n",
    true,
);
/// A client that stalled its request body.
pub const BODY_TIMEOUT: Answer = Answer::new(
    408,
    "request timeout: the request body did not arrive in time\n",
    true,
);
/// A request body cut short or malformed.
pub const BAD_BODY: Answer = Answer::new(400, "bad request body\n", true);
/// An unknown ACME challenge token.
pub const UNKNOWN_CHALLENGE: Answer = Answer::new(404, "unknown challenge\n", false);
/// The site wants HTTPS and no HTTPS listener is open.
pub const NO_HTTPS: Answer = Answer::new(
    503,
    "this site is served over https, which is not listening: restart duotone\n",
    false,
);

/// A request that matched a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// Site index in the table.
    pub site: usize,
    /// Route index in the site.
    pub route: usize,
    /// The route has basic auth: the transport checks credentials and
    /// calls [`Routed::admit`].
    pub auth: bool,
    /// The declared body is over the route's limit.
    pub too_large: bool,
    /// The site or the service is in maintenance and the client is not on
    /// the allow list: [`MAINTENANCE`] unless the transport finds the
    /// secret cookie ([`crate::maintenance::cookie_lets_through`]).
    pub maintenance: bool,
}

impl Routed {
    /// What follows the HTTPS rule: maintenance (`let_through`: the
    /// transport found the secret cookie; ignored when not in
    /// maintenance), then basic auth (`authenticated` is the transport's
    /// check, ignored for a route without auth), then the body limit.
    /// `Err` is the answer instead.
    pub fn admit(&self, authenticated: bool, let_through: bool) -> Result<(), Answer> {
        if self.maintenance && !let_through {
            Err(MAINTENANCE)
        } else if self.auth && !authenticated {
            Err(UNAUTHORIZED)
        } else if self.too_large {
            Err(TOO_LARGE)
        } else {
            Ok(())
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer locally.
    Answer(Answer),
    /// Answer the ACME HTTP-01 challenge for this token.
    Challenge(String),
    /// Redirect to the same host and target over HTTPS (308), on the HTTPS
    /// listener that is open (else [`NO_HTTPS`]).
    ToHttps,
    /// Proxy to service `service` (index in the table).
    Proxy(Routed, usize),
    /// Serve the route's files.
    Static(Routed),
    /// The route's redirect: `status` to `location`.
    Redirect(Routed, u16, String),
}

impl Decision {
    /// Whether a transport that only proxies and serves files, with no
    /// auth and no compression (the lane), must leave this request to the
    /// full path: anything but a proxied or static route, a route with
    /// basic auth or compression, a body over the route's limit, or a
    /// request under maintenance.
    #[inline]
    pub fn needs_full_path(&self, table: &RouteTable) -> bool {
        let Some(r) = self.routed() else {
            return true;
        };
        let redirect = matches!(self, Decision::Redirect(..));
        redirect
            || r.auth
            || r.too_large
            || r.maintenance
            || table.sites[r.site].routes[r.route].compress
    }

    /// The route, when one matched and the request got that far.
    pub fn routed(&self) -> Option<&Routed> {
        match self {
            Decision::Proxy(r, _) | Decision::Static(r) | Decision::Redirect(r, ..) => Some(r),
            _ => None,
        }
    }
}

/// The outcome of [`decide`]: the checked request (its canonical target,
/// which everything after routing uses) and the decision.
#[derive(Debug)]
pub struct Verdict<'a> {
    /// The request as routed, unless the request check refused it.
    pub checked: Option<Checked<'a>>,
    /// Where the host matched a site (index), even when no route did.
    pub site: Option<usize>,
    /// Where the path matched a route of that site (index), even when the
    /// request is refused after (allow list, HTTPS): its metrics count it.
    pub route: Option<usize>,
    /// What to do.
    pub decision: Decision,
}

/// Decides what happens to the request `view` under `table`.
#[inline]
pub fn decide<'a>(table: &RouteTable, view: &View<'a>) -> Verdict<'a> {
    let limits = &table.config.limits;
    let answer = |a| Verdict {
        checked: None,
        site: None,
        route: None,
        decision: Decision::Answer(a),
    };
    if view.header_count > limits.max_headers || view.header_bytes > limits.max_header_bytes {
        return answer(HEADERS_TOO_LARGE);
    }
    if view.bad_framing {
        return answer(BAD_FRAMING);
    }
    let refused = |r: crate::request::Refusal| answer(Answer::new(r.status, r.reason, true));
    if let Some(r) = view.unreadable {
        return refused(r);
    }
    let checked = match check(&view.head) {
        Ok(c) => c,
        Err(r) => return refused(r),
    };
    let mut verdict = Verdict {
        checked: None,
        site: None,
        route: None,
        decision: Decision::Answer(NO_SITE),
    };
    verdict.decision = route(table, view, &checked, &mut verdict);
    verdict.checked = Some(checked);
    verdict
}

/// The rules after the request check, on the checked request; notes the
/// site and route matched in `at`.
#[inline]
fn route(
    table: &RouteTable,
    view: &View<'_>,
    checked: &Checked<'_>,
    at: &mut Verdict<'_>,
) -> Decision {
    let path = &*checked.path;
    if view.acme && !view.tls {
        if let Some(token) = path.strip_prefix("/.well-known/acme-challenge/") {
            return Decision::Challenge(token.to_string());
        }
    }
    let Some((site_idx, site)) = table.site(checked.host) else {
        return Decision::Answer(no_site(table.config.server.unknown_host));
    };
    at.site = Some(site_idx);
    let Some(route_idx) = site.position(path) else {
        return Decision::Answer(NO_ROUTE);
    };
    at.route = Some(route_idx);
    let route = &site.routes[route_idx];
    if !ip_allowed(&route.allow, view.client) {
        return Decision::Answer(FORBIDDEN);
    }
    if site.tls && !view.tls && !route.allow_http {
        return Decision::ToHttps;
    }
    let service = match route.action {
        Action::Proxy(i) => table.services.get(i),
        _ => None,
    };
    let maintenance = crate::maintenance::applies(site, service)
        && !crate::maintenance::allowed(&table.config.maintenance.allow, view.client);
    let routed = Routed {
        site: site_idx,
        route: route_idx,
        auth: !route.basic_auth.is_empty(),
        too_large: view.content_length.is_some_and(|n| n > route.max_body),
        maintenance,
    };
    match &route.action {
        Action::Proxy(service) => Decision::Proxy(routed, *service),
        Action::Static(_) => Decision::Static(routed),
        Action::Redirect { to, status } => {
            let location = to.replace("$path", &checked.target());
            Decision::Redirect(routed, *status, location)
        }
    }
}

/// What one header field counts toward [`View::header_bytes`]: its name
/// and value, and 4 bytes for `: ` and the line end.
pub const fn field_bytes(name: usize, value: usize) -> usize {
    name + value + 4
}

/// [`View::header_bytes`] of a request whose target is `target` bytes and
/// whose fields' names and values are `fields` bytes long.
pub fn header_bytes(target: usize, fields: impl Iterator<Item = (usize, usize)>) -> usize {
    fields.fold(target, |n, (name, value)| n + field_bytes(name, value))
}

/// Whether `client` may use a route whose allow list is `allow` (empty:
/// everyone; unknown client: only an empty list).
pub fn ip_allowed(allow: &[crate::config::IpNet], client: Option<IpAddr>) -> bool {
    if allow.is_empty() {
        return true;
    }
    client.is_some_and(|ip| allow.iter().any(|n| n.contains(ip)))
}

/// The `Location` of a [`Decision::ToHttps`] redirect: `host` without its
/// port, the HTTPS listener's port unless 443, and the target.
pub fn https_location(host: &str, target: &str, https_port: u16) -> String {
    let host = crate::host::strip_port(host);
    match https_port {
        443 => format!("https://{host}{target}"),
        port => format!("https://{host}:{port}{target}"),
    }
}

/// The upstream attempts of one proxied request: the pool (color) chosen
/// once (by weight, or by the sticky cookie or a preview token:
/// [`crate::canary`]), the members tried, and whether to try again.
#[derive(Debug, Clone)]
pub struct Attempts {
    pool: usize,
    member: Option<usize>,
    tried: u64,
    count: u32,
    chosen: crate::canary::Chosen,
}

/// How long a member that refused a connection is skipped.
pub const EJECT_MS: u64 = 5_000;

impl Attempts {
    /// Chooses the pool of `svc` by its weights (`roll` is uniform random),
    /// with no request fields to read (the canary rules do not apply).
    pub fn new(svc: &crate::pool::Service, roll: u32) -> Attempts {
        Self::with(svc.choose_pool(roll), crate::canary::Chosen::Plain)
    }

    /// Chooses the pool of `svc` for a request whose header fields
    /// `fields` gives (called only when the service has canary rules:
    /// [`crate::canary`]): a valid preview token's color, the sticky
    /// cookie's, or by weight (`roll` is uniform random).
    #[inline]
    pub fn for_request<'a, I: IntoIterator<Item = (&'a [u8], &'a [u8])>>(
        svc: &crate::pool::Service,
        fields: impl FnOnce() -> I,
        roll: u32,
    ) -> Attempts {
        let (pool, chosen) = crate::canary::choose(svc, fields, roll);
        Self::with(pool, chosen)
    }

    fn with(pool: usize, chosen: crate::canary::Chosen) -> Attempts {
        Attempts {
            pool,
            member: None,
            tried: 0,
            count: 0,
            chosen,
        }
    }

    /// The pool (color index) chosen.
    pub fn pool(&self) -> usize {
        self.pool
    }

    /// How the pool was chosen.
    pub fn chosen(&self) -> crate::canary::Chosen {
        self.chosen
    }

    /// The `Set-Cookie` value the response carries to pin the client to
    /// the pool chosen by weight ([`crate::canary::Chosen::Pin`]), `Secure`
    /// over TLS; `None` for any other choice.
    pub fn set_cookie<'s>(&self, svc: &'s crate::pool::Service, tls: bool) -> Option<&'s str> {
        match self.chosen {
            crate::canary::Chosen::Pin => svc.canary.set_cookie(self.pool, tls),
            _ => None,
        }
    }

    /// The member tried last.
    pub fn member(&self) -> Option<usize> {
        self.member
    }

    /// How many members have been tried.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The next member to try: round robin over available members not
    /// tried yet (fail open when none is available); `None` when every
    /// member has been tried.
    pub fn next(&mut self, svc: &crate::pool::Service, now_ms: u64) -> Option<usize> {
        self.count += 1;
        let i = svc.pools.get(self.pool)?.pick(now_ms, self.tried)?;
        self.member = Some(i);
        if i < 64 {
            self.tried |= 1 << i;
        }
        Some(i)
    }

    /// After a failed connect to the member last tried: ejects it for
    /// [`EJECT_MS`] and says whether another member may be tried (within
    /// the service's `retries` and its members).
    pub fn connect_failed(&self, svc: &crate::pool::Service, now_ms: u64) -> bool {
        let Some(pool) = svc.pools.get(self.pool) else {
            return false;
        };
        if let Some(m) = self.member.and_then(|i| pool.members.get(i)) {
            m.health.eject(now_ms, EJECT_MS);
        }
        self.count <= svc.retries && pool.members.len() as u32 > self.count
    }

    /// After a pooled (`reused`) upstream connection broke before any
    /// response byte: whether the request goes again to the same member on
    /// a fresh connection. Only if it did not leave (`sent` false) or its
    /// method may be replayed ([`crate::replay::may_replay`]).
    pub fn may_resend(reused: bool, sent: bool, method: &[u8]) -> bool {
        reused && (!sent || crate::replay::may_replay(method))
    }
}

#[cfg(test)]
mod tests;
