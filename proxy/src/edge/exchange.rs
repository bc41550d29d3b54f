//! Proxied requests on Pingora's path that Duotone buffers: the request
//! body is read whole from the client first (memory, then a temp file:
//! [`Spool`]), sent with a Content-Length, and the upstream exchange is
//! the lane's ([`relay::exchange`]), writing the response to the Pingora
//! session, buffered unless the route or the response says not to. So an
//! upstream worker only ever sees a complete request at local speed, and
//! is free again once its response is in.
//!
//! With `buffer_requests = false` the body is sent on as it arrives
//! ([`relay::Streamed`]). Upgrades stay on Pingora's own proxy ([`wants`]).

use super::Ctx;
use crate::control::Snapshot;
use crate::lane::client::{self, Client};
use crate::lane::relay;
use crate::lane::request::{Plan, RequestId, Work};
use crate::lane::response::HeadOut;
use crate::net::spool::Spool;
use bytes::Bytes;
use pingora::http::{HeaderNameVariant, RequestHeader, ResponseHeader};
use pingora::proxy::{ProxyHttp, Session};
use pingora::{ErrorType, Result};
use routes::policy;
use std::time::Duration;

/// Whether this request to service `service` goes through [`serve`]:
/// every one but upgrades to HTTP services (WebSockets: Pingora's proxy
/// and [`super::tunnel`]); uwsgi services, which Pingora cannot speak,
/// get no upgrade.
pub fn wants(session: &Session, snap: &Snapshot, service: usize) -> bool {
    let Some(svc) = snap.table.services.get(service) else {
        return false;
    };
    match svc.protocol {
        routes::Protocol::Uwsgi => true,
        routes::Protocol::Http => !session.is_upgrade_req(),
    }
}

/// Reads the body, proxies the request and writes the response; the
/// outcome goes to `ctx` for the access log and metrics.
pub async fn serve(
    edge: &super::Edge,
    session: &mut Session,
    ctx: &mut Ctx,
    snap: &Snapshot,
    routed: &policy::Routed,
    service: usize,
) -> Result<()> {
    let limits = &snap.table.config.limits;
    let mut spool = Spool::for_request(snap.buffering.clone());
    let has_body = !session.is_body_empty();
    // `buffer_requests = false`: the body goes upstream as it arrives (the
    // uwsgi protocol needs its length first: always buffered there).
    let stream = has_body
        && snap.table.services.get(service).map(|s| s.protocol) == Some(routes::Protocol::Http)
        && snap
            .table
            .sites
            .get(routed.site)
            .and_then(|s| s.routes.get(routed.route))
            .is_some_and(|r| !r.buffer_requests);
    if has_body {
        if expects_continue(session.req_header()) {
            // The client waits for this before sending its body.
            session
                .as_downstream_mut()
                .write_continue_response()
                .await?;
        }
        let (limit, pause) = (ctx.body_limit, limits.body_timeout);
        if !stream {
            if let Some(answer) = read_body(session, &mut spool, limit, pause).await {
                // The site's page for it, as for every answer of the edge.
                return super::answer(session, answer, snap, Some(routed.site))
                    .await
                    .map(drop);
            }
        }
    }
    let mut up = session.req_header().clone();
    edge.upstream_request_filter(session, &mut up, ctx).await?;
    let limit = ctx.body_limit;
    let streamed = stream.then(|| {
        if up.headers.contains_key(http::header::CONTENT_LENGTH) {
            relay::Streamed::Length { limit }
        } else {
            relay::Streamed::Chunked { limit }
        }
    });
    let length = (has_body && !stream).then(|| spool.total());
    let head = head_bytes(
        &up,
        length,
        matches!(streamed, Some(relay::Streamed::Chunked { .. })),
        super::forwarded::request_host(session.req_header()),
    );
    let id = ctx
        .request_id
        .as_ref()
        .map_or(RequestId::of(b""), |v| RequestId::of(v.as_bytes()));
    let client = ctx.client.map(|c| c.ip);
    let plan = Plan {
        head_len: head.len(),
        body_len: 0,
        site: routed.site,
        route: routed.route,
        close: false,
        head_method: session.req_header().method == http::Method::HEAD,
        id,
        client,
        work: Work::Proxy(service),
    };
    let peer = session
        .digest()
        .and_then(|d| d.socket_digest.as_ref())
        .and_then(|s| s.peer_addr().and_then(|a| a.as_inet()).map(|a| a.port()));
    let mut req = relay::Request {
        bytes: &head,
        head_len: head.len(),
        spool: (has_body && !stream).then_some(&mut spool),
        buffer: snap.response_buffer(routed.site, routed.route),
        peer: crate::net::uwsgi::Facts {
            tls: ctx.tls,
            remote_addr: client,
            remote_port: peer.unwrap_or(0),
            server_port: super::local_port(session),
        },
        stream: streamed,
    };
    let mut client = SessionClient {
        session,
        timeout: limits.body_timeout,
        timer: Default::default(),
    };
    let outcome = relay::exchange(
        &edge.control,
        snap,
        &plan,
        service,
        &mut req,
        &mut client,
        ctx.tls,
    )
    .await;
    if !outcome.keep_client {
        client.session.set_keepalive(None);
    }
    ctx.exchanged = Some(outcome);
    Ok(())
}

/// Reads the request body into `spool`; an answer for the client when it
/// cannot be (over `limit` bytes, a pause over `pause` (HTTP/2 included),
/// no room to buffer it).
async fn read_body(
    session: &mut Session,
    spool: &mut Spool,
    limit: u64,
    pause: Duration,
) -> Option<policy::Answer> {
    loop {
        let Ok(read) = tokio::time::timeout(pause, session.read_request_body()).await else {
            return Some(policy::BODY_TIMEOUT);
        };
        match read {
            Ok(Some(data)) => {
                if spool.total() + data.len() as u64 > limit {
                    return Some(policy::TOO_LARGE);
                }
                if let Err(e) = spool.push(&data) {
                    tracing::error!("request body not buffered, answered 503: {e}");
                    return Some(policy::NOT_BUFFERED);
                }
            }
            Ok(None) => return None,
            Err(e) if matches!(e.etype(), ErrorType::ReadTimedout) => {
                return Some(policy::BODY_TIMEOUT)
            }
            Err(_) => return Some(policy::BAD_BODY),
        }
    }
}

/// Whether the request asks for `100 Continue` before its body.
fn expects_continue(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// The upstream HTTP/1.1 head of `up`: its target and fields, minus the
/// hop-by-hop ones, with `Content-Length: length` for a buffered body that
/// came chunked (or without one), `Transfer-Encoding: chunked` for a body
/// streamed without a length (`chunked_out`), and a Host (`host`, for
/// HTTP/2 requests that have none).
fn head_bytes(up: &RequestHeader, length: Option<u64>, chunked_out: bool, host: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(up.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        up.uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let nominating: Vec<&[u8]> = up
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if !up.headers.contains_key(http::header::HOST) && !host.is_empty() {
        field(&mut out, b"host", host.as_bytes());
    }
    // A chunked body goes with the Content-Length of what was read; the
    // client's own Content-Length (the framing it was read by) stays.
    let chunked = up.headers.contains_key(http::header::TRANSFER_ENCODING);
    let has_length = up.headers.contains_key(http::header::CONTENT_LENGTH);
    // Field names as the client wrote them (Pingora keeps their case).
    let _ = up.map(|name, value| {
        let n = match name {
            HeaderNameVariant::Case(c) => c.as_slice(),
            HeaderNameVariant::Titled(t) => t.as_bytes(),
        };
        let listed = crate::net::hop::HOP_FIELDS
            .iter()
            .chain(&FRAMING_AND_EXPECT)
            .any(|h| h.as_bytes().eq_ignore_ascii_case(n));
        let client_length = n.eq_ignore_ascii_case(b"content-length") && !chunked;
        let hop = listed && !client_length;
        if !hop && !nominating.iter().any(|c| crate::net::hop::nominated(c, n)) {
            field(&mut out, n, value.as_bytes());
        }
        Ok(())
    });
    if let Some(n) = length.filter(|_| chunked || !has_length) {
        field(&mut out, b"content-length", n.to_string().as_bytes());
    }
    if chunked_out {
        field(&mut out, b"transfer-encoding", b"chunked");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Request fields never forwarded as received besides the hop-by-hop
/// ones: the framing (set again from the buffered body) and `Expect`
/// (answered here).
const FRAMING_AND_EXPECT: [&str; 3] = ["transfer-encoding", "content-length", "expect"];

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A Pingora session as the exchange's client: Pingora frames the body
/// for the client's protocol (chunked or not on HTTP/1.1, DATA frames on
/// HTTP/2) and runs its modules (compression).
struct SessionClient<'a> {
    session: &'a mut Session,
    timeout: Duration,
    timer: crate::lane::timer::Timer,
}

/// The client's response head, as Pingora takes it.
#[derive(Default)]
pub struct Head(Option<ResponseHeader>);

impl HeadOut for Head {
    fn start(&mut self, status: u16, _reason: Option<&str>) {
        self.0 = ResponseHeader::build(status, Some(16)).ok();
    }

    fn header(&mut self, name: &str, value: &[u8]) {
        if let (Some(h), Ok(v)) = (&mut self.0, http::HeaderValue::from_bytes(value)) {
            let _ = h.append_header(name.to_owned(), v);
        }
    }

    fn end(&mut self, _close: bool) {}
}

impl Client for SessionClient<'_> {
    type Head = Head;
    const DECHUNK: bool = true;

    async fn send_head(&mut self, head: &mut Head, body: &[u8], end: bool) -> bool {
        let Some(mut resp) = head.0.take() else {
            return false;
        };
        let only_head = end && body.is_empty();
        let framed = resp.headers.contains_key(http::header::CONTENT_LENGTH)
            || resp.headers.contains_key(http::header::TRANSFER_ENCODING);
        if !only_head && !framed {
            // Close-delimited upstream body: chunked for an HTTP/1.1 client
            // (which keeps its connection); HTTP/2 frames it anyway.
            let _ = resp.insert_header(http::header::TRANSFER_ENCODING, "chunked");
        }
        let timeout = self.timeout;
        let sent = tokio::time::timeout(
            timeout,
            self.session
                .write_response_header(Box::new(resp), only_head),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            return false;
        }
        only_head || self.send_body(body, end).await
    }

    async fn read_body(&mut self) -> std::result::Result<Option<Bytes>, u16> {
        let read = self.session.read_request_body();
        match tokio::time::timeout(self.timeout, read).await {
            Err(_) => Err(408),
            Ok(Ok(data)) => Ok(data),
            Ok(Err(e)) if matches!(e.etype(), ErrorType::ReadTimedout) => Err(408),
            Ok(Err(_)) => Err(400),
        }
    }

    async fn interim(&mut self, head: &[u8]) -> bool {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut fields);
        let Ok(httparse::Status::Complete(_)) = resp.parse(head) else {
            return false;
        };
        let Some(Ok(mut h)) = resp.code.map(|c| ResponseHeader::build(c, None)) else {
            return false;
        };
        for f in resp.headers.iter() {
            let hop = crate::net::hop::HOP_FIELDS
                .iter()
                .any(|n| n.eq_ignore_ascii_case(f.name));
            if !hop {
                let _ = h.append_header(f.name.to_owned(), f.value);
            }
        }
        let timeout = self.timeout;
        let session = &mut *self.session;
        matches!(
            tokio::time::timeout(timeout, session.write_response_header(Box::new(h), false)).await,
            Ok(Ok(()))
        )
    }

    async fn send_body(&mut self, body: &[u8], end: bool) -> bool {
        if body.is_empty() && !end {
            return true;
        }
        let data = (!body.is_empty()).then(|| Bytes::copy_from_slice(body));
        let timeout = self.timeout;
        let session = &mut *self.session;
        matches!(
            tokio::time::timeout(timeout, session.write_response_body(data, end)).await,
            Ok(Ok(()))
        )
    }

    async fn fail(&mut self, failure: &client::Failure<'_>, _head_method: bool) {
        self.session.set_keepalive(None);
        let answer = super::respond::failure(self.session, failure);
        let _ = tokio::time::timeout(self.timeout, answer).await;
    }

    fn upstream_timer(&mut self) -> &mut crate::lane::timer::Timer {
        &mut self.timer
    }
}
