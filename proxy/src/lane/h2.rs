//! HTTP/2 on the lane. Pingora's accept loop still runs the connection
//! (handshake, stream checks, graceful shutdown, idle timeout, and h2's
//! buffers freed after 1 s with no stream in flight); each stream
//! that is a body-less request proxied to a service is served here, over
//! the lane's pooled HTTP/1.1 upstream connections: the upstream head is
//! written straight from the stream's fields and the response head parsed
//! in place, with none of Pingora's per-request proxy machinery (header
//! conversions, body channels, connector pool). Every other stream goes to
//! Pingora's full path as before.

use super::client::{self, Client};
use super::field::Field;
use super::relay;
use super::request::{self, LogFields, Plan, Work};
use super::response::HeadOut;
use super::state::Lane;
use super::timer::Timer;
use ::h2::server::SendResponse;
use ::h2::SendStream;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use pingora::apps::HttpServerApp;
use pingora::http::RequestHeader;
use pingora::protocols::http::v2::server::{self as h2srv, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, GetProxyDigest, GetSocketDigest, GetTimingDigest, Ssl};
use pingora::server::ShutdownWatch;
use routes::config::AccessLog as LogFormat;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What every stream of a connection shares.
pub struct ConnInfo {
    /// The client's IP address as text.
    pub ip: String,
    /// The peer's IP address.
    pub peer: Option<std::net::IpAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The port of the listener the client connected to (0: unknown).
    pub port: u16,
    /// The peer's port (0: unknown).
    pub peer_port: u16,
}

/// Runs an HTTP/2 connection: streams the lane serves are answered here,
/// the rest by `app` (Pingora's path).
pub async fn serve_connection<A>(
    lane: Arc<Lane>,
    app: Arc<A>,
    stream: crate::net::stream::HeadDeadline,
    shutdown: &ShutdownWatch,
) where
    A: HttpServerApp + Send + Sync + 'static,
{
    let peer = super::state::peer_ip(&stream);
    let info = Arc::new(ConnInfo {
        ip: peer.map(|ip| ip.to_string()).unwrap_or_default(),
        peer,
        tls: stream.get_ssl_digest().is_some(),
        port: super::state::local_port(&stream),
        peer_port: super::state::peer_port(&stream),
    });
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let conn = match h2srv::handshake(Box::new(stream), app.h2_options()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("HTTP/2 handshake failed: {e}");
            return;
        }
    };
    let idle = app.server_options().and_then(|o| o.h2_idle_timeout);
    let watch = shutdown.clone();
    h2srv::accept_downstream_sessions(conn, digest, shutdown.clone(), idle, |session, guard| {
        let (lane, app, info, shutdown) = (lane.clone(), app.clone(), info.clone(), watch.clone());
        // Boxed: the task then moves a pointer, not the whole stream state,
        // when it is created and when it completes.
        tokio::spawn(Box::pin(async move {
            // Held for the stream's life: the idle timeout sees it busy.
            let _guard = guard;
            if let Some(session) = lane.serve_h2(session, &info).await {
                app.process_new_http(ServerSession::new_http2(session), &shutdown)
                    .await;
            }
        }));
    })
    .await;
}

impl Lane {
    /// Serves one HTTP/2 stream if it is a request the lane proxies;
    /// otherwise gives it back untouched.
    pub async fn serve_h2(&self, session: HttpSession, info: &ConnInfo) -> Option<HttpSession> {
        let snap = self.control.load();
        let config = &snap.table.config;
        let conn = request::Conn {
            tls: info.tls,
            client_ip: &info.ip,
            peer: info.peer,
            acme: self.acme,
            port: info.port,
            peer_port: info.peer_port,
        };
        let req = session.req_header();
        if !session.is_body_empty() || req.headers.contains_key(http::header::CONTENT_LENGTH) {
            return Some(session);
        }
        let mut log = (config.access_log != LogFormat::Off).then(LogFields::default);
        let mut out = Vec::with_capacity(512);
        let Some((plan, service)) = plan(req, &snap, &conn, &self.ids, &mut out, log.as_mut())
        else {
            return Some(session);
        };
        let start = Instant::now();
        let (_, _body, respond) = session.into_h2_parts();
        let mut client = Stream {
            respond,
            body: None,
            timeout: config.limits.body_timeout,
            upstream_timer: Timer::default(),
        };
        let mut req = relay::Request {
            bytes: &out,
            head_len: out.len(),
            spool: None,
            buffer: snap.response_buffer(plan.site, plan.route),
            peer: crate::net::uwsgi::Facts {
                tls: info.tls,
                remote_addr: plan.client,
                remote_port: info.peer_port,
                server_port: info.port,
            },
            stream: None,
        };
        let (control, tls) = (&self.control, info.tls);
        let outcome =
            relay::exchange(control, &snap, &plan, service, &mut req, &mut client, tls).await;
        self.finish(&snap, &plan, &outcome, start, log, &info.ip, "HTTP/2.0");
        None
    }
}

/// Checks a stream's request and, when the lane proxies it, writes the
/// upstream HTTP/1.1 head into `out`; returns the plan and the service.
fn plan(
    req: &RequestHeader,
    snap: &crate::control::Snapshot,
    conn: &request::Conn<'_>,
    ids: &crate::net::forwarded::RequestIds,
    out: &mut Vec<u8>,
    log: Option<&mut LogFields>,
) -> Option<(Plan, usize)> {
    let method = req.method.as_str();
    let target = req.uri.path_and_query()?.as_str();
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    let host = hosts.next().map(|h| h.to_str().unwrap_or(""));
    let head = routes::request::Head {
        proto: routes::request::Proto::Http2,
        method,
        target,
        host,
        host_fields: usize::from(host.is_some()) + hosts.count(),
        authority: req.uri.authority().map(|a| a.as_str()),
    };
    let via = request::Via::of(
        conn,
        &snap.table.config.server.trusted_proxies,
        req.headers
            .iter()
            .map(|(n, v)| (Field::of(n.as_str()), v.as_bytes()))
            .filter(|(f, _)| f.forwarding()),
    );
    let view = routes::policy::View {
        head,
        tls: conn.tls,
        client: via.as_ref().map_or(conn.peer, |v| Some(v.ip)),
        content_length: None,
        header_count: req.headers.len(),
        header_bytes: routes::policy::header_bytes(
            target.len(),
            req.headers.iter().map(|(n, v)| (n.as_str().len(), v.len())),
        ),
        bad_framing: false,
        acme: conn.acme,
        unreadable: None,
    };
    let verdict = routes::policy::decide(&snap.table, &view);
    if verdict.decision.needs_full_path(&snap.table) {
        return None;
    }
    let checked = verdict.checked?;
    let host = checked.host;
    let routes::policy::Decision::Proxy(routed, service) = verdict.decision else {
        return None;
    };
    if host.is_empty() {
        return None;
    }
    let (site, route_idx) = (routed.site, routed.route);
    let route = &snap.table.sites[site].routes[route_idx];
    let client_id = req.headers.get(X_REQUEST_ID).map(|v| v.as_bytes());
    let id = request::request_id(client_id, ids);

    request::request_line(out, method, &checked, route);
    request::header(out, b"host", host.as_bytes());
    let mut cookies = 0;
    for (name, value) in req.headers.iter() {
        let n = name.as_str();
        if n == "cookie" {
            cookies += 1;
        } else if n != "host"
            && n != "te"
            && !request::replaced(Field::of(n))
            && routes::request::forwards_field(n.as_bytes())
        {
            request::header(out, n.as_bytes(), value.as_bytes());
        }
    }
    if cookies > 0 {
        // HTTP/2 may split cookies into several fields; HTTP/1.1 wants one
        // (RFC 9113 §8.2.3).
        out.extend_from_slice(b"cookie: ");
        for (i, v) in req.headers.get_all(http::header::COOKIE).iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(v.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    request::forwarding(out, conn, host, &id, via.as_ref());
    let client = via.as_ref().map_or(conn.peer, |v| Some(v.ip));

    if let Some(log) = log {
        let value = |n: http::header::HeaderName| {
            req.headers
                .get(n)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default()
        };
        log.host = host.to_string();
        log.method = method.to_string();
        log.uri = target.to_string();
        log.referer = value(http::header::REFERER);
        log.user_agent = value(http::header::USER_AGENT);
        if let Some(via) = via {
            log.client = via.client;
        }
    }
    let plan = Plan {
        head_len: 0,
        body_len: 0,
        site,
        route: route_idx,
        close: false,
        head_method: req.method == http::Method::HEAD,
        id,
        client,
        work: Work::Proxy(service),
    };
    Some((plan, service))
}

/// An HTTP/2 response head: status and header block.
#[derive(Default)]
pub struct Head {
    status: u16,
    headers: http::HeaderMap,
}

impl HeadOut for Head {
    fn start(&mut self, status: u16, _reason: Option<&str>) {
        self.status = status;
        self.headers.clear();
        self.headers.reserve(16);
    }

    fn header(&mut self, name: &str, value: &[u8]) {
        let n = match common_name(name) {
            Some(n) => Ok(n),
            // Connection-specific fields have no place in HTTP/2 (RFC 9113
            // §8.2.2); the others of that kind never get here.
            None if Field::of(name) == Field::TransferEncoding => return,
            None => HeaderName::from_bytes(name.as_bytes()),
        };
        if let (Ok(n), Ok(mut v)) = (n, HeaderValue::from_bytes(value)) {
            if n == X_REQUEST_ID {
                // Unique per response: kept out of the HPACK dynamic table,
                // where it would only evict the fields that do repeat.
                v.set_sensitive(true);
            }
            self.headers.append(n, v);
        }
    }

    fn end(&mut self, _close: bool) {}
}

/// The request id field.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The `HeaderName` of the response fields seen most, in any case, found
/// by one match on the lower-cased bytes; `None`: parse it (slower, and
/// it validates). Names here are already tokens (httparse checked them).
fn common_name(name: &str) -> Option<HeaderName> {
    use http::header;
    let mut buf = [0u8; 32];
    let lower = buf.get_mut(..name.len())?;
    for (l, b) in lower.iter_mut().zip(name.bytes()) {
        *l = b.to_ascii_lowercase();
    }
    Some(match &*lower {
        b"date" => header::DATE,
        b"server" => header::SERVER,
        b"content-type" => header::CONTENT_TYPE,
        b"content-length" => header::CONTENT_LENGTH,
        b"x-request-id" => X_REQUEST_ID,
        b"cache-control" => header::CACHE_CONTROL,
        b"etag" => header::ETAG,
        b"last-modified" => header::LAST_MODIFIED,
        b"vary" => header::VARY,
        b"set-cookie" => header::SET_COOKIE,
        b"location" => header::LOCATION,
        b"expires" => header::EXPIRES,
        b"age" => header::AGE,
        b"accept-ranges" => header::ACCEPT_RANGES,
        b"content-encoding" => header::CONTENT_ENCODING,
        b"strict-transport-security" => header::STRICT_TRANSPORT_SECURITY,
        b"x-frame-options" => header::X_FRAME_OPTIONS,
        b"x-content-type-options" => header::X_CONTENT_TYPE_OPTIONS,
        b"referrer-policy" => header::REFERRER_POLICY,
        b"content-security-policy" => header::CONTENT_SECURITY_POLICY,
        b"access-control-allow-origin" => header::ACCESS_CONTROL_ALLOW_ORIGIN,
        _ => return None,
    })
}

/// An HTTP/2 stream's response side.
struct Stream {
    respond: SendResponse<Bytes>,
    body: Option<SendStream<Bytes>>,
    timeout: Duration,
    upstream_timer: Timer,
}

impl Client for Stream {
    type Head = Head;
    const DECHUNK: bool = true;

    async fn send_head(&mut self, head: &mut Head, body: &[u8], end: bool) -> bool {
        let Ok(status) = http::StatusCode::from_u16(head.status) else {
            return false;
        };
        let mut resp = http::Response::new(());
        *resp.status_mut() = status;
        *resp.headers_mut() = std::mem::take(&mut head.headers);
        let only_head = end && body.is_empty();
        match self.respond.send_response(resp, only_head) {
            Ok(s) => self.body = Some(s),
            Err(_) => return false,
        }
        only_head || self.send_body(body, end).await
    }

    async fn interim(&mut self, _head: &[u8]) -> bool {
        // Not relayed on HTTP/2 streams (the h2 crate sends no 1xx heads).
        true
    }

    async fn send_body(&mut self, body: &[u8], end: bool) -> bool {
        let Some(s) = self.body.as_mut() else {
            return false;
        };
        if body.is_empty() && !end {
            return true;
        }
        let data = Bytes::copy_from_slice(body);
        pingora::protocols::http::v2::write_body(s, data, end, Some(self.timeout))
            .await
            .is_ok()
    }

    async fn fail(&mut self, failure: &client::Failure<'_>, head_method: bool) {
        let (text, content_type) = failure.body();
        let mut head = Head::default();
        head.start(failure.status, None);
        head.header("content-type", content_type.as_bytes());
        head.header("content-length", text.len().to_string().as_bytes());
        head.header("cache-control", b"no-store");
        if let Some(secs) = failure.retry_after {
            head.header("retry-after", secs.to_string().as_bytes());
        }
        super::response::with_date(|d| head.header("date", d.as_bytes()));
        let body = if head_method { &b""[..] } else { text };
        self.send_head(&mut head, body, true).await;
    }

    fn upstream_timer(&mut self) -> &mut Timer {
        &mut self.upstream_timer
    }
}

#[cfg(test)]
mod tests {
    use super::{common_name, X_REQUEST_ID};
    use http::header;

    #[test]
    fn common_names_are_found_in_any_case_and_others_left_to_parsing() {
        assert_eq!(common_name("Content-Type"), Some(header::CONTENT_TYPE));
        assert_eq!(common_name("DATE"), Some(header::DATE));
        assert_eq!(common_name("x-request-id"), Some(X_REQUEST_ID));
        assert_eq!(
            common_name("Strict-Transport-Security"),
            Some(header::STRICT_TRANSPORT_SECURITY)
        );
        assert_eq!(common_name("x-custom"), None);
        assert_eq!(common_name("content-typ"), None);
        assert_eq!(common_name(&"a".repeat(40)), None);
        assert_eq!(common_name(""), None);
    }
}
