//! The admin API: JSON over HTTP/1.1 on its own listener, bearer-token auth
//! compared in constant time. Only `/healthz` is open.
//!
//! A loopback listener is reachable from any web page the operator opens, so
//! (as Caddy's admin endpoint does) every other request must name an allowed
//! `Host` (defeats DNS rebinding), carry no foreign `Origin` (defeats
//! cross-site requests), and a change (POST, PUT, PATCH, DELETE) must be
//! `Content-Type: application/json`, which a form or a "simple" `fetch`
//! cannot send without a CORS preflight that this API never grants.

use crate::control::{ChangeError, Control};
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
        ChangeError::UnknownService(_) => StatusCode::NOT_FOUND,
        ChangeError::Invalid(_) | ChangeError::BadConfig(_) => StatusCode::BAD_REQUEST,
        ChangeError::Unhealthy(_) | ChangeError::Conflict(_) => StatusCode::CONFLICT,
        ChangeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e)
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
        let snap = self.control.load();
        let svc = snap.table.service(name)?;
        serde_json::to_value(ServiceView::of(svc, crate::clock::now_ms())).ok()
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
                let snap = self.control.load();
                let now = crate::clock::now_ms();
                let list: Vec<ServiceView> = snap
                    .table
                    .services
                    .iter()
                    .map(|s| ServiceView::of(s, now))
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
                    Ok(()) => {
                        tracing::info!(service = %name, to = ?body.to, force = body.force, "flipped");
                        self.service_json(&name)
                            .map(|v| json_resp(StatusCode::OK, v))
                            .unwrap_or_else(|| error(StatusCode::NOT_FOUND, "service vanished"))
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
                    Ok(()) => self
                        .service_json(&name)
                        .map(|v| json_resp(StatusCode::OK, v))
                        .unwrap_or_else(|| error(StatusCode::NOT_FOUND, "service vanished")),
                    Err(e) => change_error(e),
                }
            }
            (&Method::POST, ["v1", "reload"]) => {
                let control = self.control.clone();
                let result = blocking(move || control.reload()).await;
                self.extras.reloaded(result.is_ok());
                match result {
                    Ok(warnings) => {
                        tracing::info!("config reloaded");
                        json_resp(
                            StatusCode::OK,
                            json!({ "reloaded": true, "warnings": warnings }),
                        )
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
                | ["metrics"],
            )
            | (_, ["v1", "services", _, "flip" | "weights" | "drain"])
            | (_, ["v1", "services", _, "preview", _]) => error(
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

/// Serves the admin API on `listener` until the process ends.
pub async fn serve(admin: Arc<Admin>, listener: std::net::TcpListener) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("admin listener: {e}");
            return;
        }
    };
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("admin accept: {e}");
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, std::convert::Infallible>(admin.handle(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!("admin connection: {e}");
            }
        });
    }
}
