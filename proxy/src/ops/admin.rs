//! The admin API: JSON over HTTP/1.1 on its own listener, bearer-token auth
//! compared in constant time. Only `/healthz` is open.
//!
//! A loopback listener is reachable from any web page the operator opens, so
//! (as Caddy's admin endpoint does) every other request must name an allowed
//! `Host` (defeats DNS rebinding), carry no foreign `Origin` (defeats
//! cross-site requests), and a change (POST, PUT, PATCH, DELETE) must be
//! `Content-Type: application/json`, which a form or a "simple" `fetch`
//! cannot send without a CORS preflight that this API never grants.

use crate::control::{Ack, ChangeError, Control};
use crate::ops::views::ServiceView;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Largest accepted admin request body.
const MAX_BODY: usize = 64 * 1024;

/// Shared state of the admin listener.
pub struct Admin {
    /// The control plane.
    pub control: Arc<Control>,
    /// Required bearer token, if any.
    pub token: Option<String>,
    /// Extra endpoints (metrics, certificates) supplied by other modules.
    pub extras: crate::ops::admin_extras::Extras,
    /// The listener's own address (its IP and port are allowed in `Host`).
    pub listen: SocketAddr,
}

use crate::ops::json::{error, json_resp, Resp};

fn change_error(e: ChangeError) -> Resp {
    let status = match &e {
        ChangeError::UnknownService(_) | ChangeError::UnknownSite(_) => StatusCode::NOT_FOUND,
        ChangeError::Invalid(_) | ChangeError::BadConfig(_) => StatusCode::BAD_REQUEST,
        ChangeError::Unhealthy(_) | ChangeError::Conflict(_) => StatusCode::CONFLICT,
        ChangeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        ChangeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e)
}

/// A change's answer: `view` (the changed service or site), with
/// `"cluster": {"revision", "applied", "pending"}` beside it when the change
/// went through the cluster.
fn changed(view: Option<serde_json::Value>, ack: Ack, gone: &str) -> Resp {
    match view {
        Some(mut v) => {
            if let (Some(a), Some(obj)) = (ack, v.as_object_mut()) {
                obj.insert("cluster".into(), json!(a));
            }
            json_resp(StatusCode::OK, v)
        }
        None => error(StatusCode::NOT_FOUND, gone),
    }
}

impl Admin {
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            // The scheme is case-insensitive (RFC 9110 §11.1).
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .unwrap_or("");
        given.as_bytes().ct_eq(token.as_bytes()).into()
    }

    /// Whether `authority` (a `Host` value or an origin's host and port,
    /// `default_port` when it has none) names this admin API: `localhost`,
    /// `127.0.0.1`, `[::1]` or the listener's own IP with the listener's
    /// port (any IP literal when the listener is on a wildcard address),
    /// or an entry of `server.admin_hosts`.
    fn host_allowed(&self, authority: &str, default_port: u16) -> bool {
        let Some((name, port)) = routes::config::split_authority(authority) else {
            return false;
        };
        let port = port.unwrap_or(default_port);
        let snap = self.control.load();
        let extra = &snap.table.config.server.admin_hosts;
        if extra
            .iter()
            .any(|h| h.name == name && h.port.is_none_or(|p| p == port))
        {
            return true;
        }
        if port != self.listen.port() {
            return false;
        }
        let ip = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(&name)
            .parse::<IpAddr>();
        match ip {
            // A name: only localhost (a rebinding attacker controls any other).
            Err(_) => name == "localhost",
            Ok(ip) => {
                ip.is_loopback() || ip == self.listen.ip() || self.listen.ip().is_unspecified()
            }
        }
    }

    /// Refuses requests a web page could have sent: a foreign or missing
    /// `Host`, a foreign `Origin`, or a change that is not JSON.
    fn browser_guard(&self, req: &Request<Incoming>) -> Option<Resp> {
        let headers = req.headers();
        let mut hosts = headers.get_all(http::header::HOST).iter();
        let host = match (hosts.next().map(|h| h.to_str()), hosts.next()) {
            (Some(Ok(h)), None) => h,
            (None, _) => return Some(error(StatusCode::FORBIDDEN, "missing Host header")),
            _ => return Some(error(StatusCode::FORBIDDEN, "one Host header expected")),
        };
        // An absolute-form target names the host too; both must be allowed.
        let target = req.uri().authority().map(|a| a.as_str());
        if let Some(bad) = [Some(host), target]
            .into_iter()
            .flatten()
            .find(|h| !self.host_allowed(h, 80))
        {
            return Some(error(
                StatusCode::FORBIDDEN,
                format!(
                    "host {bad:?} is not allowed for the admin API; \
                     add it to server.admin_hosts to reach the API by that name"
                ),
            ));
        }
        for origin in headers.get_all(http::header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            let allowed = match origin.split_once("://") {
                Some(("http", a)) => self.host_allowed(a, 80),
                Some(("https", a)) => self.host_allowed(a, 443),
                _ => false,
            };
            if !allowed {
                return Some(error(
                    StatusCode::FORBIDDEN,
                    format!("origin {origin:?} is not allowed for the admin API"),
                ));
            }
        }
        let changes = !matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        if changes && !is_json(req) {
            return Some(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "{} needs Content-Type: application/json (send {{}} for an empty body)",
                    req.method()
                ),
            ));
        }
        None
    }

    fn service_json(&self, name: &str) -> Option<serde_json::Value> {
        let (watches, snap) = self.control.watched_snapshot();
        let svc = snap.table.service(name)?;
        serde_json::to_value(ServiceView::of(svc, crate::clock::now_ms()).with_watch(&watches)).ok()
    }

    /// Handles one admin request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        if path == "/healthz" {
            return Response::new(Full::new(Bytes::from_static(b"ok\n")));
        }
        if let Some(refused) = self.browser_guard(&req) {
            tracing::debug!(%method, %path, "admin request refused: {:?}", refused.status());
            return refused;
        }
        if !self.authorized(&req) {
            let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (&method, segs.as_slice()) {
            (&Method::GET, ["metrics"]) => self.extras.metrics(),
            (&Method::GET, ["v1", "certificates"]) => {
                json_resp(StatusCode::OK, self.extras.certificates())
            }
            (&Method::GET, ["v1", "services"]) => {
                let (watches, snap) = self.control.watched_snapshot();
                let now = crate::clock::now_ms();
                let list: Vec<ServiceView> = snap
                    .table
                    .services
                    .iter()
                    .map(|s| ServiceView::of(s, now).with_watch(&watches))
                    .collect();
                json_resp(StatusCode::OK, json!({ "services": list }))
            }
            (&Method::GET, ["v1", "services", name]) => match self.service_json(name) {
                Some(v) => json_resp(StatusCode::OK, v),
                None => error(StatusCode::NOT_FOUND, format!("unknown service {name:?}")),
            },
            (&Method::GET, ["v1", "services", name, "preview", color]) => {
                let snap = self.control.load();
                match crate::ops::views::PreviewToken::of(&snap.table, name, color) {
                    Ok(t) => json_resp(StatusCode::OK, json!(t)),
                    Err(e) => change_error(e),
                }
            }
            (&Method::POST, ["v1", "services", name, "flip"]) => {
                let name = name.to_string();
                let query_force = match force_param(req.uri().query()) {
                    Ok(f) => f,
                    Err(e) => return error(StatusCode::BAD_REQUEST, e),
                };
                let mut body = match read_json::<FlipBody>(req, true).await {
                    Ok(b) => b.unwrap_or_default(),
                    Err(r) => return r,
                };
                body.force |= query_force;
                let (control, svc, to, force) = (
                    self.control.clone(),
                    name.clone(),
                    body.to.clone(),
                    body.force,
                );
                let result = blocking(move || control.flip(&svc, to.as_deref(), force)).await;
                match result {
                    Ok(ack) => {
                        tracing::info!(service = %name, to = ?body.to, force = body.force, "flipped");
                        changed(self.service_json(&name), ack, "service vanished")
                    }
                    Err(e) => change_error(e),
                }
            }
            (&Method::POST, ["v1", "services", name, "drain"]) => {
                let name = name.to_string();
                let query_force = match force_param(req.uri().query()) {
                    Ok(f) => f,
                    Err(e) => return error(StatusCode::BAD_REQUEST, e),
                };
                let body = match read_json::<DrainBody>(req, true).await {
                    Ok(b) => b.unwrap_or_default(),
                    Err(r) => return r,
                };
                let force = body.force || query_force;
                let (control, svc, color) = (self.control.clone(), name.clone(), body.color);
                match blocking(move || control.close_upgraded(&svc, color.as_deref(), force)).await
                {
                    Ok(closed) => match self.service_json(&name) {
                        Some(mut v) => {
                            v["closed"] = closed.into();
                            json_resp(StatusCode::OK, v)
                        }
                        None => error(StatusCode::NOT_FOUND, "service vanished"),
                    },
                    Err(e) => change_error(e),
                }
            }
            (&Method::PUT, ["v1", "services", name, "weights"]) => {
                let name = name.to_string();
                let query_force = match force_param(req.uri().query()) {
                    Ok(f) => f,
                    Err(e) => return error(StatusCode::BAD_REQUEST, e),
                };
                let body =
                    match read_json::<serde_json::Map<String, serde_json::Value>>(req, false).await
                    {
                        Ok(Some(w)) => w,
                        Ok(None) => return error(
                            StatusCode::BAD_REQUEST,
                            "expected a JSON object of weights, e.g. {\"blue\":90,\"green\":10}",
                        ),
                        Err(r) => return r,
                    };
                let (weights, body_force) = match weights_body(body) {
                    Ok(w) => w,
                    Err(e) => return error(StatusCode::BAD_REQUEST, e),
                };
                let force = query_force || body_force;
                let (control, svc) = (self.control.clone(), name.clone());
                match blocking(move || control.set_weights(&svc, weights, force)).await {
                    Ok(ack) => changed(self.service_json(&name), ack, "service vanished"),
                    Err(e) => change_error(e),
                }
            }
            (&Method::POST, ["v1", "services", name, "watch"]) => {
                let name = name.to_string();
                let watch = match read_json::<WatchBody>(req, false).await {
                    Ok(Some(b)) => match b.into_watch() {
                        Ok(w) => w,
                        Err(e) => return error(StatusCode::BAD_REQUEST, e),
                    },
                    Ok(None) => return error(StatusCode::BAD_REQUEST, "empty body"),
                    Err(r) => return r,
                };
                let (control, svc) = (self.control.clone(), name.clone());
                match blocking(move || control.watch(&svc, watch)).await {
                    Ok(_) => self
                        .service_json(&name)
                        .map(|v| json_resp(StatusCode::OK, v))
                        .unwrap_or_else(|| error(StatusCode::NOT_FOUND, "service vanished")),
                    Err(e) => change_error(e),
                }
            }
            (&Method::GET, ["v1", "cluster"]) => {
                let control = self.control.clone();
                match blocking(move || control.cluster_view()).await {
                    Ok(v) => json_resp(StatusCode::OK, v),
                    Err(ChangeError::Invalid(e)) => error(StatusCode::NOT_FOUND, e),
                    Err(e) => change_error(e),
                }
            }
            (&Method::GET, ["v1", "sites"]) => {
                let snap = self.control.load();
                let sites = crate::ops::views::SiteView::all(&snap.table);
                json_resp(StatusCode::OK, json!({ "sites": sites }))
            }
            (&Method::POST, ["v1", "services", name, "maintenance"]) => {
                let name = name.to_string();
                let on = match read_json::<MaintenanceBody>(req, false).await {
                    Ok(Some(b)) => b.on,
                    Ok(None) => return error(StatusCode::BAD_REQUEST, "expected {\"on\":true}"),
                    Err(r) => return r,
                };
                let (control, svc) = (self.control.clone(), name.clone());
                match blocking(move || control.set_service_maintenance(&svc, on)).await {
                    Ok(ack) => changed(self.service_json(&name), ack, "service vanished"),
                    Err(e) => change_error(e),
                }
            }
            (&Method::DELETE, ["v1", "services", name, "watch"]) => {
                let (control, svc) = (self.control.clone(), name.to_string());
                match blocking(move || control.cancel_watch(&svc)).await {
                    Ok(_) => self
                        .service_json(name)
                        .map(|v| json_resp(StatusCode::OK, v))
                        .unwrap_or_else(|| error(StatusCode::NOT_FOUND, "service vanished")),
                    Err(e) => change_error(e),
                }
            }
            (&Method::GET, ["v1", "services", name, "watch"]) => {
                if self.control.load().table.service(name).is_none() {
                    return error(StatusCode::NOT_FOUND, format!("unknown service {name:?}"));
                }
                match self.control.watch_view(name) {
                    Some(w) => json_resp(StatusCode::OK, json!(w)),
                    None => error(
                        StatusCode::NOT_FOUND,
                        format!("no watch of {name:?} since the proxy started"),
                    ),
                }
            }
            (&Method::POST, ["v1", "sites", name, "maintenance"]) => {
                let name = percent_decode(name);
                let on = match read_json::<MaintenanceBody>(req, false).await {
                    Ok(Some(b)) => b.on,
                    Ok(None) => return error(StatusCode::BAD_REQUEST, "expected {\"on\":true}"),
                    Err(r) => return r,
                };
                let (control, site) = (self.control.clone(), name.clone());
                match blocking(move || control.set_site_maintenance(&site, on)).await {
                    Ok(ack) => {
                        let snap = self.control.load();
                        let view = crate::ops::views::SiteView::all(&snap.table)
                            .into_iter()
                            .find(|s| s.name == name)
                            .map(|v| json!(v));
                        changed(view, ack, "site vanished")
                    }
                    Err(e) => change_error(e),
                }
            }
            (&Method::POST, ["v1", "services", name, action @ ("pause" | "resume")]) => {
                let (name, on) = (name.to_string(), *action == "pause");
                if let Err(r) = read_json::<EmptyBody>(req, true).await {
                    return r;
                }
                let (control, svc) = (self.control.clone(), name.clone());
                match blocking(move || control.pause(&svc, on)).await {
                    Ok(ack) => {
                        tracing::info!(service = %name, "{}", if on { "paused" } else { "resumed" });
                        changed(self.service_json(&name), ack, "service vanished")
                    }
                    Err(e) => change_error(e),
                }
            }
            (&Method::POST, ["v1", "reload"]) => {
                let control = self.control.clone();
                let result = blocking(move || control.reload_all()).await;
                self.extras.reloaded(result.is_ok());
                match result {
                    Ok((warnings, ack)) => {
                        tracing::info!("config reloaded");
                        let mut v = json!({ "reloaded": true, "warnings": warnings });
                        if let Some(a) = ack {
                            v["cluster"] = json!(a);
                        }
                        json_resp(StatusCode::OK, v)
                    }
                    Err(e) => {
                        tracing::warn!("reload refused: {e}");
                        change_error(e)
                    }
                }
            }
            (
                _,
                ["v1", "services"]
                | ["v1", "services", _]
                | ["v1", "reload"]
                | ["v1", "certificates"]
                | ["v1", "sites"]
                | ["v1", "cluster"]
                | ["metrics"],
            )
            | (
                _,
                ["v1", "services", _, "flip" | "weights" | "drain" | "maintenance" | "pause" | "resume" | "watch"],
            )
            | (_, ["v1", "services", _, "preview", _])
            | (_, ["v1", "sites", _, "maintenance"]) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {path}"),
            ),
            _ => error(StatusCode::NOT_FOUND, format!("no such endpoint {path}")),
        }
    }
}

/// Runs a control-plane change (it compiles a table and fsyncs the state
/// file) off the async workers, so health checks and other admin requests
/// are not held up meanwhile.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ChangeError> + Send + 'static,
) -> Result<T, ChangeError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ChangeError::Internal(anyhow::anyhow!(
            "change task failed: {e}"
        )))
    })
}

/// Whether a request's `Content-Type` is `application/json` (parameters such
/// as `charset=utf-8` allowed).
fn is_json(req: &Request<Incoming>) -> bool {
    let mut values = req.headers().get_all(http::header::CONTENT_TYPE).iter();
    match (values.next().and_then(|v| v.to_str().ok()), values.next()) {
        (Some(ct), None) => ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("application/json"),
        _ => false,
    }
}

/// `?force=true` (or `1`); absent is `false`. Other parameters are 400.
fn force_param(query: Option<&str>) -> Result<bool, String> {
    let mut force = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        force = match pair.split_once('=').unwrap_or((pair, "true")) {
            ("force", "true" | "1") => true,
            ("force", "false" | "0") => false,
            _ => {
                return Err(format!(
                    "unknown query parameter {pair:?} (only force=true)"
                ))
            }
        };
    }
    Ok(force)
}

/// Body of `PUT /v1/services/{name}/weights`: `{"blue":90,"green":10}`, with
/// an optional `"force": true` beside the weights. (A color may be called
/// `force`: its weight is a number, the flag a boolean.)
fn weights_body(
    body: serde_json::Map<String, serde_json::Value>,
) -> Result<(BTreeMap<String, u32>, bool), String> {
    let mut force = false;
    let mut weights = BTreeMap::new();
    for (k, v) in body {
        match (k.as_str(), &v) {
            ("force", serde_json::Value::Bool(b)) => force = *b,
            ("force", v) if !v.is_number() => {
                return Err(format!(
                    "invalid JSON: \"force\" must be true or false, got {v}"
                ))
            }
            _ => {
                let w = v
                    .as_u64()
                    .and_then(|w| u32::try_from(w).ok())
                    .ok_or_else(|| {
                        format!(
                            "invalid JSON: weight of {k:?} must be a whole number from 0 to {}, got {v}",
                            u32::MAX
                        )
                    })?;
                weights.insert(k, w);
            }
        }
    }
    Ok((weights, force))
}

/// Body of `POST /v1/services/{name}/flip`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlipBody {
    to: Option<String>,
    #[serde(default)]
    force: bool,
}

/// `{"on": true}`: maintenance mode on or off.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceBody {
    on: bool,
}

/// A path segment with its `%XX` escapes decoded (a site named `*` may be
/// sent as `%2A`); invalid escapes are kept as written.
fn percent_decode(seg: &str) -> String {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Body of `POST /v1/services/{name}/pause` and `…/resume`: `{}` (or none).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

/// Body of `POST /v1/services/{name}/drain`: closes the upgraded
/// connections (WebSockets) of `color` now, or of every color taking no new
/// traffic when absent. A color that takes traffic needs `force`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    color: Option<String>,
    #[serde(default)]
    force: bool,
}

/// Body of `POST /v1/services/{name}/watch`: `{"color":"green",
/// "rollback_to":"blue","for":"60s","max_error_rate":0.02,
/// "max_latency":"800ms","min_requests":20}`; only `for` is required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchBody {
    color: Option<String>,
    rollback_to: Option<String>,
    #[serde(rename = "for")]
    window: String,
    #[serde(default = "default_max_error_rate")]
    max_error_rate: f64,
    max_latency: Option<String>,
    #[serde(default = "default_min_requests")]
    min_requests: u64,
}

/// `max_error_rate` when not given: 2 %.
fn default_max_error_rate() -> f64 {
    0.02
}

/// `min_requests` when not given.
fn default_min_requests() -> u64 {
    20
}

impl WatchBody {
    fn into_watch(self) -> Result<crate::control::watch::Watch, String> {
        let duration = |key: &str, s: &str| {
            routes::duration::parse(s).map_err(|e| format!("invalid JSON: {key:?}: {e}"))
        };
        Ok(crate::control::watch::Watch {
            color: self.color,
            rollback_to: self.rollback_to,
            limits: routes::watch::Limits {
                window: duration("for", &self.window)?,
                max_error_rate: self.max_error_rate,
                max_latency: self
                    .max_latency
                    .map(|s| duration("max_latency", &s))
                    .transpose()?,
                min_requests: self.min_requests,
            },
        })
    }
}

/// Reads a JSON body; `Ok(None)` for an empty body when `empty_ok`.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    empty_ok: bool,
) -> Result<Option<T>, Resp> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("cannot read body: {e}"),
            )
        })?
        .to_bytes();
    if body.iter().all(u8::is_ascii_whitespace) {
        return if empty_ok {
            Ok(None)
        } else {
            Err(error(StatusCode::BAD_REQUEST, "empty body"))
        };
    }
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))?;
    // Serde would also read a struct from an array; only objects are meant.
    if !value.is_object() {
        return Err(error(StatusCode::BAD_REQUEST, "expected a JSON object"));
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))
}

/// Serves the admin API on `listener` until `shutdown` (a graceful
/// shutdown or an upgrade's hand-over): then it stops accepting and lets
/// the requests in progress finish.
pub async fn serve(
    admin: Arc<Admin>,
    listener: std::net::TcpListener,
    shutdown: pingora::server::ShutdownWatch,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("admin listener: {e}");
            return;
        }
    };
    let mut stop = shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut stop) => {
                // Shutting down or handing over to a new process: the new
                // one answers from now on (the socket stays open for it).
                tracing::info!("admin API: no longer accepting");
                return;
            }
        };
        let (stream, _) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("admin accept: {e}");
                continue;
            }
        };
        let admin = admin.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, std::convert::Infallible>(admin.handle(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            let done = tokio::select! {
                r = conn.as_mut() => Some(r),
                () = stopped(&mut stop) => None,
            };
            // On shutdown the request in progress finishes and the
            // connection closes after it (idle ones at once).
            let result = match done {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!("admin connection: {e}");
            }
        });
    }
}

/// Completes once `shutdown` turns true (or can no longer change).
async fn stopped(shutdown: &mut pingora::server::ShutdownWatch) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}
