//! The request path: Pingora's `ProxyHttp` for Duotone. Reads the snapshot
//! once per request, routes by host and path, and either answers locally
//! (static files, redirects, ACME challenges) or proxies to the live color.

use crate::control::{Control, Snapshot};
use crate::forwarded;
use crate::respond;
use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use routes::{Action, InFlight, MemberAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a member that refused a connection is skipped.
const EJECT_MS: u64 = 5_000;

/// The proxy application.
pub struct Edge {
    /// The control plane (routing snapshot, live state).
    pub control: Arc<Control>,
    /// Request id generator.
    pub ids: forwarded::RequestIds,
}

/// Per-request state.
pub struct Ctx {
    snap: Option<Arc<Snapshot>>,
    site: usize,
    route: Option<(usize, usize)>,
    service: usize,
    pool: usize,
    member: usize,
    tried: u64,
    attempts: u32,
    in_flight: Option<InFlight>,
    tls: bool,
    start: Instant,
    request_id: Option<http::HeaderValue>,
}

impl Ctx {
    fn route(&self) -> Option<&routes::Route> {
        let snap = self.snap.as_ref()?;
        let (s, r) = self.route?;
        snap.table.sites.get(s)?.routes.get(r)
    }
}

fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// The request's host: `:authority` for HTTP/2, else the Host header.
pub fn request_host(req: &RequestHeader) -> &str {
    if let Some(a) = req.uri.authority() {
        return a.as_str();
    }
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            snap: None,
            site: 0,
            route: None,
            service: 0,
            pool: 0,
            member: 0,
            tried: 0,
            attempts: 0,
            in_flight: None,
            tls: false,
            start: Instant::now(),
            request_id: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snap = self.control.load();
        ctx.tls = is_tls(session);
        let req = session.req_header();
        let host = request_host(req);
        let path = req.uri.path();
        let Some((site_idx, site)) = snap.table.site(host) else {
            respond::text(session, 404, "no site is configured for this host\n", &[]).await?;
            return Ok(true);
        };
        let Some(route_idx) = site
            .routes
            .iter()
            .position(|r| path.starts_with(r.prefix.as_str()))
        else {
            respond::text(session, 404, "not found\n", &[]).await?;
            return Ok(true);
        };
        let route = &site.routes[route_idx];
        ctx.site = site_idx;
        ctx.route = Some((site_idx, route_idx));
        if site.tls && !ctx.tls && !route.allow_http {
            let location = forwarded::https_location(req, snap.table.config.server.https);
            respond::redirect(session, 308, &location).await?;
            return Ok(true);
        }
        match &route.action {
            Action::Proxy(i) => {
                ctx.service = *i;
                ctx.snap = Some(snap);
                Ok(false)
            }
            Action::Redirect { to, status } => {
                let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let location = to.replace("$path", pq);
                respond::redirect(session, *status, &location).await?;
                Ok(true)
            }
            Action::Static(_) => {
                let slot = route.slot;
                let prefix_len = route.prefix.len();
                ctx.snap = Some(snap.clone());
                match snap.slots.get(slot).and_then(|s| s.files.clone()) {
                    Some(files) => {
                        let _ = (files, prefix_len);
                        respond::text(session, 501, "static: wip\n", &[]).await?;
                    }
                    None => {
                        respond::text(session, 500, "static route unavailable\n", &[]).await?;
                    }
                }
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let snap = ctx
            .snap
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route"))?;
        let svc = snap
            .table
            .services
            .get(ctx.service)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "unknown service"))?;
        if ctx.attempts == 0 {
            ctx.pool = svc.choose_pool(fastrand::u32(..));
            ctx.in_flight = Some(svc.pools[ctx.pool].stats.begin());
        }
        ctx.attempts += 1;
        let pool = &svc.pools[ctx.pool];
        let now = crate::clock::now_ms();
        let Some(i) = pool.pick(now, ctx.tried) else {
            return Err(Error::explain(
                ErrorType::ConnectNoRoute,
                "no upstream member left to try",
            ));
        };
        ctx.member = i;
        if i < 64 {
            ctx.tried |= 1 << i;
        }
        let member = &pool.members[i];
        let mut peer = match (&member.addr, member.resolved) {
            (MemberAddr::Unix(path), _) => {
                let p = path.to_str().ok_or_else(|| {
                    Error::explain(ErrorType::InternalError, "unix path is not UTF-8")
                })?;
                HttpPeer::new_uds(p, false, String::new())?
            }
            (_, Some(addr)) => HttpPeer::new(addr, false, String::new()),
            (addr, None) => {
                return Err(Error::explain(
                    ErrorType::ConnectNoRoute,
                    format!("cannot resolve upstream {addr}"),
                ))
            }
        };
        let t = &svc.timeouts;
        peer.options.connection_timeout = Some(t.connect);
        peer.options.total_connection_timeout = Some(t.connect);
        peer.options.read_timeout = Some(t.read);
        peer.options.write_timeout = Some(t.write);
        peer.options.idle_timeout = Some(t.idle);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(snap) = &ctx.snap {
            if let Some(svc) = snap.table.services.get(ctx.service) {
                if let Some(m) = svc
                    .pools
                    .get(ctx.pool)
                    .and_then(|p| p.members.get(ctx.member))
                {
                    m.health.eject(crate::clock::now_ms(), EJECT_MS);
                }
                let left = svc.pools[ctx.pool].members.len() as u32 > ctx.attempts;
                if ctx.attempts <= svc.retries && left {
                    e.set_retry(true);
                }
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.request_id.is_none() {
            ctx.request_id = Some(self.ids.for_request(session.req_header()));
        }
        let strip = ctx
            .route()
            .filter(|r| r.strip_prefix)
            .map(|r| r.prefix.len());
        forwarded::apply(session, upstream, ctx.tls, ctx.request_id.clone())?;
        if let Some(n) = strip {
            forwarded::strip_prefix(upstream, n)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.tls {
            if let Some(hsts) = ctx
                .snap
                .as_ref()
                .and_then(|s| s.table.sites.get(ctx.site))
                .and_then(|s| s.hsts.as_deref())
            {
                resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts)?;
            }
        }
        if let Some(id) = &ctx.request_id {
            resp.insert_header("x-request-id", id.clone())?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                504
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        // Pingora closes the client connection after a failed proxy attempt,
        // so say so to HTTP/1 clients rather than advertise keep-alive.
        let reuse = false;
        if code > 0 && session.response_written().is_none() {
            let body = match code {
                502 => "bad gateway: the upstream failed\n",
                504 => "gateway timeout: the upstream did not answer in time\n",
                400 => "bad request\n",
                _ => "error\n",
            };
            session.set_keepalive(None);
            if let Err(err) = respond::text(session, code, body, &[]).await {
                tracing::debug!("failed to send error response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: reuse,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if e.is_none() {
            if let Some(m) = ctx
                .snap
                .as_ref()
                .and_then(|s| s.table.services.get(ctx.service))
                .and_then(|s| s.pools.get(ctx.pool))
                .and_then(|p| p.members.get(ctx.member))
            {
                m.health.succeed();
            }
        }
        let _ = session;
        ctx.in_flight = None;
        let _ = ctx.start.elapsed() > Duration::ZERO;
    }
}
