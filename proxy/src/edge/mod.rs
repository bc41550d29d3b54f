//! The request path: Pingora's `ProxyHttp` for Duotone. Reads the snapshot
//! once per request, routes by host and path, and either answers locally
//! (static files, redirects, ACME challenges) or proxies to the live color.

pub mod exchange;
pub mod respond;
pub mod static_files;
pub mod tunnel;

use crate::control::{Control, Snapshot};
use crate::net::forwarded;
use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use routes::config::AccessLog as AccessLogFormat;
use routes::policy::{self, Attempts, Decision, View};
use routes::{Action, InFlight, MemberAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Answers ACME HTTP-01 challenges: token → key authorization (async: in
/// cluster mode a challenge another node published may need an etcd read).
pub type Http01Answers = Arc<
    dyn Fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send>>
        + Send
        + Sync,
>;

/// The proxy application.
pub struct Edge {
    /// The control plane (routing snapshot, live state).
    pub control: Arc<Control>,
    /// Request id generator.
    pub ids: Arc<forwarded::RequestIds>,
    /// Access log sink.
    pub access_log: Arc<crate::ops::access_log::AccessLog>,
    /// Answers ACME HTTP-01 challenges on the plain listener, when ACME is on.
    pub acme_http01: Option<Http01Answers>,
    /// Whether any route compresses responses (the compression module is
    /// only installed then, so other configs pay nothing for it).
    pub compression: bool,
}

/// Per-request state.
pub struct Ctx {
    snap: Option<Arc<Snapshot>>,
    site: usize,
    /// The site the host matched, when one did (its pages answer for the
    /// edge), even when no route did.
    page_site: Option<usize>,
    route: Option<(usize, usize)>,
    /// What the policy decided ([`routes::policy::decide`]), until acted on.
    decision: Option<Decision>,
    service: usize,
    /// An upgrade held by a pause: the snapshot of the resume and the
    /// service's index in it, which choose the color.
    resumed: Option<(Arc<Snapshot>, usize)>,
    /// The upstream attempts, once proxying began.
    attempts: Option<Attempts>,
    /// The next attempt replays the request on the same member.
    replay: bool,
    in_flight: Option<InFlight>,
    /// The upstream connection's descriptor, while connected.
    upstream_fd: Option<std::os::fd::RawFd>,
    /// After a 101: the upgraded connection, counted apart from requests.
    tunnel: Option<crate::edge::tunnel::Tunnel>,
    tls: bool,
    /// The real client ([`routes::client::resolve`]), once known.
    client: Option<routes::client::Client>,
    start: Instant,
    request_id: Option<http::HeaderValue>,
    body_limit: u64,
    body_seen: u64,
    static_bytes: u64,
    /// How the request went when [`exchange::serve`] proxied it.
    exchanged: Option<crate::lane::Outcome>,
    /// The request got no answer: the connection (HTTP/2: the stream) was
    /// closed instead ([`policy::CLOSE`]); logged as 444.
    silent_close: bool,
}

impl Ctx {
    fn route(&self) -> Option<&routes::Route> {
        let snap = self.snap.as_ref()?;
        let (s, r) = self.route?;
        snap.table.sites.get(s)?.routes.get(r)
    }

    /// The service proxied to: of the resume's snapshot when a pause held
    /// the request, else of the request's own.
    fn upstream_service(&self) -> Option<&routes::Service> {
        match &self.resumed {
            Some((snap, i)) => snap.table.services.get(*i),
            None => self.snap.as_ref()?.table.services.get(self.service),
        }
    }
}

fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// A small number naming the current worker thread.
fn worker_index() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    thread_local! {
        static INDEX: u64 = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    INDEX.with(|i| *i)
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = Ctx;

    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        if self.compression {
            // Disabled by default; enabled per request for `compress = true` routes.
            modules.add_module(
                pingora::modules::http::compression::ResponseCompressionBuilder::enable(0),
            );
        }
    }

    fn new_ctx(&self) -> Ctx {
        Ctx {
            snap: None,
            site: 0,
            page_site: None,
            route: None,
            decision: None,
            service: 0,
            resumed: None,
            attempts: None,
            replay: false,
            in_flight: None,
            upstream_fd: None,
            tunnel: None,
            tls: false,
            client: None,
            start: Instant::now(),
            request_id: None,
            body_limit: u64::MAX,
            body_seen: 0,
            static_bytes: 0,
            exchanged: None,
            silent_close: false,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let snap = self.control.load();
        if !session.is_http2() {
            // Pipelined requests are served in turn (RFC 9112 §9.3.2), never
            // dropped with the connection.
            session.as_downstream_mut().set_pipelining_enabled(true);
            crate::net::stream::HeadDeadline::head_parsed_on(session.as_downstream().stream());
        }
        ctx.tls = is_tls(session);
        ctx.client = client_ip(session).map(|peer| {
            routes::client::resolve(
                peer,
                &snap.table.config.server.trusted_proxies,
                session
                    .req_header()
                    .headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .map(|v| v.as_bytes()),
            )
        });
        // HTTP/1: the target exactly as sent (Pingora's parser is lenient,
        // e.g. it reads `GET /a b HTTP/1.1` as `/a%20b`).
        let raw_head = session
            .as_downstream()
            .as_http1()
            .map(|h1| h1.get_headers_raw_bytes());
        let raw_target = match &raw_head {
            Some(head) => routes::request::raw_target(head),
            None => Some(session.req_header().raw_path()),
        };
        let (target, unreadable) = match raw_target.map(routes::request::utf8_target) {
            Some(Ok(t)) => (t, None),
            Some(Err(r)) => ("", Some(r)),
            None => (
                "",
                Some(routes::request::Refusal {
                    status: 400,
                    reason: "malformed request line\n",
                }),
            ),
        };
        let req = session.req_header();
        let view = View {
            head: head_of(req, target),
            tls: ctx.tls,
            client: ctx.client.map(|c| c.ip),
            content_length: req
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok()),
            header_count: req.headers.len(),
            header_bytes: policy::header_bytes(
                req.uri.path_and_query().map_or(1, |p| p.as_str().len()),
                req.headers.iter().map(|(k, v)| (k.as_str().len(), v.len())),
            ),
            bad_framing: is_smuggling_attempt(session),
            acme: self.acme_http01.is_some(),
            unreadable,
        };
        let verdict = routes::policy::decide(&snap.table, &view);
        ctx.site = verdict.site.unwrap_or(0);
        ctx.page_site = verdict.site;
        ctx.route = verdict.site.zip(verdict.route);
        let rewrite = verdict
            .checked
            .as_ref()
            .and_then(|c| canonical_target(session.req_header(), c));
        ctx.decision = Some(verdict.decision);
        let req = session.req_header_mut();
        if let Some((host, uri)) = rewrite {
            if let Some(host) = host {
                req.insert_header(http::header::HOST, host)?;
            }
            req.set_uri(uri);
        }
        let connection = req
            .headers
            .get(http::header::CONNECTION)
            .map(|v| v.as_bytes());
        let upgrade = req.headers.contains_key(http::header::UPGRADE);
        if upgrade && !routes::request::is_upgrade(upgrade, connection) {
            // Not an upgrade without `Connection: upgrade` (RFC 9110 §7.8).
            req.remove_header(&http::header::UPGRADE);
        }
        if let Some((s, r)) = ctx.route {
            if snap.table.sites[s].routes[r].compress {
                // Must happen before the compression module reads Accept-Encoding.
                if let Some(c) = session
                    .downstream_modules_ctx
                    .get_mut::<pingora::modules::http::compression::ResponseCompression>(
                ) {
                    c.adjust_level(5);
                }
            }
        }
        ctx.snap = Some(snap);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let Some(snap) = ctx.snap.clone() else {
            return Err(Error::explain(ErrorType::InternalError, "no snapshot"));
        };
        let limits = &snap.table.config.limits;
        // Pingora turns keep-alive off for messages that must close (e.g.
        // both Content-Length and Transfer-Encoding); never turn it back on.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(limits.keepalive_timeout.as_secs().max(1)));
        }
        session.set_read_timeout(Some(limits.body_timeout));
        let Some(decision) = ctx.decision.take() else {
            return Err(Error::explain(ErrorType::InternalError, "no decision"));
        };
        let (routed, service) = match decision {
            Decision::Answer(a) => {
                ctx.silent_close = a.is_silent_close();
                return answer(session, a, &snap, ctx.page_site).await;
            }
            Decision::Challenge(token) => {
                let found = match self.acme_http01.as_ref() {
                    Some(acme) => acme(token).await,
                    None => None,
                };
                match found {
                    Some(key_auth) => respond::owned(session, 200, key_auth).await?,
                    None => {
                        return answer(session, policy::UNKNOWN_CHALLENGE, &snap, ctx.page_site)
                            .await
                    }
                }
                return Ok(true);
            }
            Decision::ToHttps => {
                // Only to the https listener that is open (the config's
                // address may name one a reload could not open; reloads
                // refuse that).
                let Some(https) = self.control.listeners().https else {
                    return answer(session, policy::NO_HTTPS, &snap, ctx.page_site).await;
                };
                let req = session.req_header();
                let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
                let location =
                    policy::https_location(forwarded::request_host(req), target, https.port());
                respond::redirect(session, 308, &location).await?;
                return Ok(true);
            }
            Decision::Proxy(r, service) => (r, Some(service)),
            Decision::Static(r) => (r, None),
            Decision::Redirect(r, status, location) => {
                if !self.admit(session, &snap, &r).await? {
                    return Ok(true);
                }
                let headers = &snap.table.sites[r.site].routes[r.route].headers;
                respond::redirect_with(session, status, &location, headers).await?;
                return Ok(true);
            }
        };
        let Some(site) = snap.table.sites.get(routed.site) else {
            let a = policy::no_site(snap.table.config.server.unknown_host);
            ctx.silent_close = a.is_silent_close();
            return answer(session, a, &snap, None).await;
        };
        let route = &site.routes[routed.route];
        let admitted = self.admit(session, &snap, &routed).await?;
        if !admitted {
            return Ok(true);
        }
        ctx.body_limit = route.max_body;
        match service {
            Some(i) => {
                ctx.service = i;
                if exchange::wants(session, &snap, i) {
                    exchange::serve(self, session, ctx, &snap, &routed, i).await?;
                    return Ok(true);
                }
                // An upgrade (Pingora's proxy): held while paused, as the
                // exchange holds every other request.
                if let Some(svc) = snap.table.services.get(i).filter(|s| s.paused) {
                    match crate::control::pause::hold(&self.control, &svc.name).await {
                        Ok(resumed) => {
                            let at = resumed
                                .table
                                .services
                                .iter()
                                .position(|s| s.name == svc.name);
                            ctx.resumed = at.map(|j| (resumed, j));
                        }
                        Err(refused) => {
                            respond::failure(session, &refused.failure(&snap, routed.site)).await?;
                            return Ok(true);
                        }
                    }
                }
                Ok(false)
            }
            None => {
                match snap.slots.get(route.slot).and_then(|s| s.files.clone()) {
                    Some(files) => {
                        let hsts = site.hsts.as_deref().filter(|_| ctx.tls);
                        ctx.static_bytes = crate::edge::static_files::serve(
                            session,
                            &files,
                            route.prefix.len(),
                            hsts,
                            &route.headers,
                            snap.pages.page(Some(routed.site), 404),
                        )
                        .await?;
                    }
                    None => {
                        respond::text(session, 500, "static route unavailable\n", &[]).await?;
                    }
                }
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_seen += b.len() as u64;
            if ctx.body_seen > ctx.body_limit {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body too large",
                ));
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let snap = ctx
            .snap
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route"))?;
        let (svc_snap, svc_index) = match &ctx.resumed {
            Some((s, i)) => (s.clone(), *i),
            None => (snap.clone(), ctx.service),
        };
        let svc = svc_snap
            .table
            .services
            .get(svc_index)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "unknown service"))?;
        let attempts = ctx.attempts.get_or_insert_with(|| {
            // Upgrades (WebSockets) follow the sticky cookie and preview
            // tokens as the exchange's requests do.
            let fields = || {
                session
                    .req_header()
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
            };
            Attempts::for_request(svc, fields, fastrand::u32(..))
        });
        let Some(pool) = svc.pools.get(attempts.pool()) else {
            return Err(Error::explain(ErrorType::InternalError, "unknown pool"));
        };
        if ctx.in_flight.is_none() {
            ctx.in_flight = Some(pool.stats.begin());
        }
        // A replay (`error_while_proxy`) goes to the same member on a fresh
        // connection, as on the lane; it is not another member's attempt.
        let replay = std::mem::take(&mut ctx.replay);
        let next = match attempts.member() {
            Some(i) if replay => Some(i),
            _ => attempts.next(svc, crate::clock::now_ms()),
        };
        let Some(i) = next else {
            return Err(Error::explain(
                ErrorType::ConnectNoRoute,
                "no upstream member left to try",
            )
            .into_up());
        };
        let member = pool
            .members
            .get(i)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "unknown member"))?;
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
                )
                .into_up())
            }
        };
        // One upstream pool per worker thread: a pooled connection's idle
        // watcher then runs on the thread that reuses it, avoiding Pingora's
        // cross-thread hand-off (which drops the connection when it races).
        peer.group_key = worker_index();
        let t = match ctx.route() {
            Some(route) => route.upstream_timeouts(svc),
            None => &svc.timeouts,
        };
        if replay {
            // A group of its own: Pingora's pool has no connection for it,
            // so it connects afresh (another pooled connection may be just
            // as stale), and closes that one once idle.
            peer.group_key = (1 << 63) | fastrand::u64(..);
        }
        peer.options.connection_timeout = Some(t.connect);
        peer.options.total_connection_timeout = Some(t.connect);
        // While the client's body is still to come, the upstream waits for
        // it: its silence is the client's, which `limits.body_timeout`
        // bounds (answered 408 in `fail_to_proxy`), so it must not run out
        // first and be taken for an upstream failure (504).
        let body_timeout = snap.table.config.limits.body_timeout;
        peer.options.read_timeout = Some(if session.is_body_done() {
            t.read
        } else {
            t.read.max(body_timeout)
        });
        peer.options.write_timeout = Some(t.write);
        peer.options.idle_timeout = Some(if replay { Duration::ZERO } else { t.idle });
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let svc = ctx.upstream_service();
        if let (Some(svc), Some(attempts)) = (svc, &ctx.attempts) {
            if crate::control::connect_failed(&self.control, svc, attempts) {
                e.set_retry(true);
            }
        }
        e
    }

    /// After an attempt failed once connected: retried (Pingora marks a
    /// reused connection that closed before any response byte) only when
    /// the method may be replayed, the rule the lane applies too.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let method = session.req_header().method.as_str().as_bytes();
        if !routes::replay::may_replay(method) || session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        ctx.replay = e.retry();
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
        let via = ctx
            .client
            .filter(|c| c.via_proxy)
            .and_then(|_| client_ip(session));
        forwarded::set_headers(
            upstream,
            ctx.client.map(|c| c.ip).or_else(|| client_ip(session)),
            via,
            ctx.tls,
            local_port(session),
            ctx.request_id.clone(),
        )?;
        let forwards =
            |n: &http::HeaderName| routes::request::forwards_field(n.as_str().as_bytes());
        if !upstream.headers.keys().all(forwards) {
            let dropped: Vec<http::HeaderName> = upstream
                .headers
                .keys()
                .filter(|n| !forwards(n))
                .cloned()
                .collect();
            for name in dropped {
                upstream.remove_header(&name);
            }
        }
        if let Some(n) = strip {
            forwarded::strip_prefix(upstream, n)?;
        }
        if session.req_header().version == http::Version::HTTP_2 {
            join_cookies(upstream)?;
        }
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::fd::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_fd = Some(fd);
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if resp.status.as_u16() == 101 {
            upgraded(resp, ctx);
        }
        strip_hop_by_hop(resp);
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
        if let Some(route) = ctx.route().filter(|r| !r.headers.is_empty()) {
            respond::add_headers(resp, &route.headers)?;
        }
        let svc = ctx
            .snap
            .as_ref()
            .and_then(|s| s.table.services.get(ctx.service));
        if let (Some(svc), Some(a)) = (svc, &ctx.attempts) {
            if let Some(cookie) = a.set_cookie(svc, ctx.tls) {
                resp.append_header(http::header::SET_COOKIE, cookie)?;
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(t) = &mut ctx.tunnel {
            t.relay(body, end_of_stream);
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            // The client stopped sending its body (the upstream, waiting
            // for it, may have timed out at the same time): a client
            // timeout, not an upstream failure.
            ErrorType::ReadTimedout
                if e.esource() == &ErrorSource::Downstream || !session.is_body_done() =>
            {
                408
            }
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
                408 => "request timeout: the request body did not arrive in time\n",
                400 => "bad request\n",
                _ => "error\n",
            };
            session.set_keepalive(None);
            // The site's page for the status, when it has one.
            let page = ctx
                .snap
                .clone()
                .filter(|snap| snap.pages.page(ctx.page_site, code).is_some());
            let written = match &page {
                Some(snap) => {
                    respond::failure(session, &snap.pages.failure(ctx.page_site, code)).await
                }
                None => respond::text(session, code, body, &[]).await,
            };
            if let Err(err) = written {
                tracing::debug!("failed to send error response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: reuse,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        ctx.in_flight = None;
        ctx.tunnel = None;
        crate::net::stream::HeadDeadline::request_done(session.as_downstream().stream());
        let status = match session.response_written() {
            Some(r) => r.status.as_u16(),
            None if ctx.silent_close => policy::CLOSE_STATUS,
            None => 0,
        };
        let Some(snap) = ctx.snap.take() else {
            return;
        };
        let route = ctx
            .route
            .and_then(|(s, r)| snap.table.sites.get(s)?.routes.get(r));
        let proxied = matches!(route.map(|r| &r.action), Some(Action::Proxy(_)));
        let attempts = ctx.attempts.as_ref().filter(|_| proxied);
        let (pool, member, ok) = match &ctx.exchanged {
            Some(o) => (Some(o.pool), o.member, o.ok && e.is_none()),
            None => (
                attempts.map(|a| a.pool()),
                attempts.and_then(|a| a.member()),
                e.is_none(),
            ),
        };
        let f = crate::record::Finished {
            site: Some(ctx.site),
            route: ctx.route,
            service: pool.map(|_| ctx.service),
            pool,
            member,
            ok,
            status,
            bytes: session.body_bytes_sent() as u64,
            static_bytes: ctx.static_bytes,
            elapsed: ctx.start.elapsed().as_secs_f64(),
            held: ctx.exchanged.as_ref().map_or(0.0, |o| o.held),
        };
        let req = session.req_header();
        // Answered locally (static, redirect, 4xx): still one id per line,
        // made only when a line is written.
        if ctx.request_id.is_none() && snap.table.config.access_log != AccessLogFormat::Off {
            ctx.request_id = Some(self.ids.for_request(req));
        }
        let request_id = ctx.request_id.as_ref();
        let header = |n: http::header::HeaderName| {
            req.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let client = ctx.client.map(|c| c.ip).or_else(|| client_ip(session));
        crate::record::record(&snap, &self.access_log, &f, || {
            Some(crate::ops::access_log::Request {
                client: client.map(|i| i.to_string()).unwrap_or_default(),
                host: forwarded::request_host(req),
                method: req.method.as_str(),
                uri: req.uri.path_and_query().map_or("/", |p| p.as_str()),
                proto: if session.is_http2() {
                    "HTTP/2.0"
                } else {
                    "HTTP/1.1"
                },
                request_id: request_id.and_then(|v| v.to_str().ok()).unwrap_or(""),
                referer: header(http::header::REFERER),
                user_agent: header(http::header::USER_AGENT),
            })
        });
    }
}

/// After a 101 from the upstream: the request becomes an upgraded
/// connection of its color ([`crate::edge::tunnel`]), counted apart from
/// requests, so a drain does not wait for it to end by itself.
fn upgraded(resp: &ResponseHeader, ctx: &mut Ctx) {
    let Some(stats) = ctx
        .upstream_service()
        .and_then(|svc| svc.pools.get(ctx.attempts.as_ref()?.pool()))
        .map(|p| p.stats.clone())
    else {
        return;
    };
    let websocket = resp
        .headers
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    // Registered before the request stops counting: never idle in between.
    ctx.tunnel = Some(crate::edge::tunnel::Tunnel::start(
        &stats,
        ctx.upstream_fd,
        websocket,
    ));
    ctx.in_flight = None;
}

/// True for HTTP/1 framing that proxies and upstreams may read differently:
/// Content-Length with Transfer-Encoding (Pingora drops the Content-Length,
/// so the raw head is checked), or any coding other than a single `chunked`.
fn is_smuggling_attempt(session: &Session) -> bool {
    let req = session.req_header();
    let mut te = req.headers.get_all(http::header::TRANSFER_ENCODING).iter();
    match (te.next(), te.next()) {
        (None, _) => false,
        (Some(v), None) => {
            if !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return true;
            }
            let raw = session
                .as_downstream()
                .as_http1()
                .map(|h1| h1.get_headers_raw_bytes())
                .unwrap_or_default();
            raw.split(|b| *b == b'\n')
                .any(|line| line.len() >= 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
        }
        (Some(_), Some(_)) => true,
    }
}

/// The client's IP address (IPv4-mapped IPv6 shown as IPv4).
fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical())
}

/// The port of the listener the client connected to (0 when unknown).
pub(crate) fn local_port(session: &Session) -> u16 {
    session
        .server_addr()
        .and_then(|a| a.as_inet())
        .map_or(0, |a| a.port())
}

/// The request line and host fields of a head Pingora parsed, as the
/// policy reads them; `target` is the target as received.
fn head_of<'a>(req: &'a RequestHeader, target: &'a str) -> routes::request::Head<'a> {
    use routes::request::{Head, Proto};
    let proto = match req.version {
        http::Version::HTTP_2 => Proto::Http2,
        http::Version::HTTP_10 | http::Version::HTTP_09 => Proto::Http10,
        _ => Proto::Http11,
    };
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    let host = hosts.next().map(|h| h.to_str().unwrap_or(""));
    Head {
        proto,
        method: req.method.as_str(),
        target,
        host,
        host_fields: usize::from(host.is_some()) + hosts.count(),
        authority: match proto {
            Proto::Http2 => req.uri.authority().map(|a| a.as_str()),
            _ => None,
        },
    }
}

/// Writes a local answer of the policy, closing the connection after it
/// when the answer says so: the maintenance page for [`policy::MAINTENANCE`],
/// the page of `site` (the site the host matched) for its status when it
/// has one, else the answer's text. A silent close ([`policy::CLOSE`])
/// writes nothing: HTTP/1.1 closes the connection once the request is
/// logged, HTTP/2 resets the stream (INTERNAL_ERROR, as nginx's `return 444`).
async fn answer(
    session: &mut Session,
    a: policy::Answer,
    snap: &Snapshot,
    site: Option<usize>,
) -> Result<bool> {
    if a.close {
        session.set_keepalive(None);
    }
    if a.is_silent_close() {
        session
            .as_downstream_mut()
            .shutdown_with_reason(h2::Reason::INTERNAL_ERROR);
        return Ok(true);
    }
    let challenge = [("www-authenticate", policy::AUTH_CHALLENGE)];
    let headers: &[(&str, &str)] = if a == policy::UNAUTHORIZED {
        &challenge
    } else {
        &[]
    };
    match site {
        Some(site) if a == policy::MAINTENANCE => {
            respond::failure(session, &snap.pages.maintenance(site)).await?
        }
        _ => match snap.pages.page(site, a.status) {
            Some(page) => {
                let f = crate::lane::client::Failure {
                    status: a.status,
                    retry_after: None,
                    page: Some(page),
                };
                respond::failure_with(session, &f, headers).await?
            }
            None => respond::text(session, a.status, a.reason, headers).await?,
        },
    }
    Ok(true)
}

impl Edge {
    /// Maintenance (the secret cookie), basic auth (when the route has it)
    /// and the body limit ([`policy::Routed::admit`]): false when an answer
    /// was written.
    async fn admit(
        &self,
        session: &mut Session,
        snap: &Snapshot,
        routed: &policy::Routed,
    ) -> Result<bool> {
        // Under maintenance, the secret cookie still reaches the app.
        let let_through = routed.maintenance
            && routes::maintenance::cookie_lets_through(
                &snap.table.config.maintenance,
                session
                    .req_header()
                    .headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .map(|v| v.as_bytes()),
            );
        let mut authenticated = false;
        // No (slow) password check for a request the maintenance page answers.
        if routed.auth && (let_through || !routed.maintenance) {
            let route = &snap.table.sites[routed.site].routes[routed.route];
            if let Some(auth) = snap.slots.get(route.slot).and_then(|s| s.auth.as_ref()) {
                let header = session
                    .req_header()
                    .headers
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes());
                authenticated = auth.check(header).await == crate::control::auth::Verdict::Allow;
            }
        }
        match routed.admit(authenticated, let_through) {
            Ok(()) => Ok(true),
            Err(a) => answer(session, a, snap, Some(routed.site))
                .await
                .map(|_| false),
        }
    }
}

/// The URI to give the request when the canonical target differs from the
/// one received (and, for an absolute-form target, the Host to set), so
/// everything after routing (upstream request, static files, redirects,
/// the access log) sees what the route matched.
fn canonical_target(
    req: &RequestHeader,
    c: &routes::request::Checked<'_>,
) -> Option<(Option<http::HeaderValue>, http::Uri)> {
    let target = c.target();
    let received = req.uri.path_and_query().map_or("", |p| p.as_str());
    if !c.absolute && received == target && req.raw_path() == target.as_bytes() {
        // Already what is forwarded.
        return None;
    }
    let mut parts = http::uri::Parts::default();
    if req.version == http::Version::HTTP_2 {
        parts.scheme = req.uri.scheme().cloned();
        parts.authority = req.uri.authority().cloned();
    }
    parts.path_and_query = Some(target.parse().ok()?);
    let uri = http::Uri::from_parts(parts).ok()?;
    let host = if c.absolute {
        Some(http::HeaderValue::from_str(c.host).ok()?)
    } else {
        None
    };
    Some((host, uri))
}

/// Joins an HTTP/2 request's Cookie fields into one, separated by "; ", for
/// the HTTP/1.1 upstream (RFC 9113 §8.2.3), as the lane does.
fn join_cookies(upstream: &mut RequestHeader) -> Result<()> {
    let cookies = upstream.headers.get_all(http::header::COOKIE);
    if cookies.iter().nth(1).is_none() {
        return Ok(());
    }
    let mut joined = Vec::new();
    for (i, v) in cookies.iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    upstream.insert_header(http::header::COOKIE, joined)?;
    Ok(())
}

/// Removes an upstream response's hop-by-hop fields ([`crate::net::hop`]):
/// `Connection` and the fields it nominates, and the standard ones
/// (`Upgrade` and `Connection` stay on a 101: the upgrade needs them).
fn strip_hop_by_hop(resp: &mut ResponseHeader) {
    let upgrade = resp.status.as_u16() == 101;
    let nominates = resp
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|v| crate::net::hop::options(v.as_bytes()).nominates);
    if nominates {
        let values: Vec<http::HeaderValue> = resp
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .cloned()
            .collect();
        let names: Vec<http::HeaderName> = resp
            .headers
            .keys()
            .filter(|n| {
                values
                    .iter()
                    .any(|v| crate::net::hop::nominated(v.as_bytes(), n.as_str().as_bytes()))
            })
            .cloned()
            .collect();
        for n in names {
            if !(upgrade && n == http::header::UPGRADE) {
                resp.remove_header(&n);
            }
        }
    }
    for name in crate::net::hop::HOP_FIELDS {
        if !(upgrade && (name == "connection" || name == "upgrade")) {
            resp.remove_header(name);
        }
    }
}
