//! A client's request head: parsed in place, checked against the route, and
//! rewritten into the upstream request head. Anything the lane does not
//! serve itself (local answers, upgrades, chunked bodies, odd framing,
//! limits exceeded) is a [`Parsed::Handoff`] to Pingora's full path, which
//! then answers exactly as it always has.

use super::field::Field;
use crate::control::Snapshot;
use routes::policy::Decision;

/// The most header lines the lane parses (more: Pingora's path).
const MAX_HEADERS: usize = 64;

/// Largest request body the lane buffers whole (larger: Pingora's path).
pub const MAX_BODY: usize = 64 * 1024;

/// What the connection knows about itself, for every request.
pub struct Conn<'a> {
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// The peer's IP address, formatted (empty when unknown).
    pub client_ip: &'a str,
    /// The peer's IP address (for `server.trusted_proxies`).
    pub peer: Option<std::net::IpAddr>,
    /// Whether plain-HTTP ACME challenges are answered (Pingora's path does).
    pub acme: bool,
    /// The port of the listener the client connected to (0: unknown).
    pub port: u16,
    /// The peer's port (0: unknown).
    pub peer_port: u16,
}

/// A request the lane serves.
pub struct Plan {
    /// Bytes of the head in the read buffer.
    pub head_len: usize,
    /// Bytes of the body following it (Content-Length).
    pub body_len: usize,
    /// Site index in the table.
    pub site: usize,
    /// Route index in the site.
    pub route: usize,
    /// The client asked to close after this response.
    pub close: bool,
    /// A HEAD request (the response has no body).
    pub head_method: bool,
    /// The request id (sent upstream and back to the client when proxied).
    pub id: RequestId,
    /// The client: the peer, or the one a trusted proxy names.
    pub client: Option<std::net::IpAddr>,
    /// What answers it.
    pub work: Work,
}

/// Who answers a request the lane serves.
pub enum Work {
    /// A service (index in the table): the upstream head is in `out`.
    Proxy(usize),
    /// A static route's files.
    Static(Box<StaticRequest>),
}

/// What a static route needs from the request.
pub struct StaticRequest {
    /// The route's file server.
    pub files: std::sync::Arc<files::FileServer>,
    /// The method.
    pub method: http::Method,
    /// The path after the route prefix, still percent-encoded.
    pub rel: String,
    /// The request headers the file server reads (validators, ranges, codings).
    pub headers: http::HeaderMap,
}

/// Request headers a static route reads.
const STATIC_HEADERS: [http::HeaderName; 7] = [
    http::header::ACCEPT_ENCODING,
    http::header::IF_MATCH,
    http::header::IF_NONE_MATCH,
    http::header::IF_MODIFIED_SINCE,
    http::header::IF_UNMODIFIED_SINCE,
    http::header::RANGE,
    http::header::IF_RANGE,
];

/// The outcome of looking at the bytes read so far.
// The plan lives on the stack once per request; boxing it would allocate.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// Pingora's path serves this request (and the rest of the connection).
    Handoff,
    /// The lane serves it (for a service, the upstream head is in `out`).
    Lane(Plan),
}

/// A request id on the stack: the client's when sane, else a fresh one.
pub struct RequestId {
    buf: [u8; 128],
    len: usize,
}

impl RequestId {
    /// An id known to be sane (at most 128 bytes are kept).
    pub fn of(v: &[u8]) -> RequestId {
        let mut id = RequestId {
            buf: [0; 128],
            len: v.len().min(128),
        };
        id.buf[..id.len].copy_from_slice(&v[..id.len]);
        id
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Request fields the access log needs, copied only when it is on.
#[derive(Default)]
pub struct LogFields {
    /// Host header.
    pub host: String,
    /// Method.
    pub method: String,
    /// Path and query as received.
    pub uri: String,
    /// Referer header.
    pub referer: String,
    /// User-Agent header.
    pub user_agent: String,
    /// The real client when a trusted proxy sent the request (else empty:
    /// the connection's peer).
    pub client: String,
}

/// A request from a trusted proxy (`server.trusted_proxies`): what it
/// said about the client, kept and extended rather than replaced.
pub struct Via<'a> {
    /// Its forwarding fields.
    pub relayed: routes::forwarded::Relayed<'a>,
    /// The real client ([`routes::client::resolve`]).
    pub ip: std::net::IpAddr,
    /// The same, formatted.
    pub client: String,
}

impl<'a> Via<'a> {
    /// When the connection's peer is a trusted proxy: the forwarding
    /// fields among `fields` (name, value) and the real client they name.
    pub fn of(
        conn: &Conn<'_>,
        trusted: &[routes::config::IpNet],
        fields: impl Iterator<Item = (Field, &'a [u8])>,
    ) -> Option<Via<'a>> {
        let peer = conn.peer.filter(|_| !trusted.is_empty())?;
        if !routes::client::is_trusted(peer.to_canonical(), trusted) {
            return None;
        }
        let mut r = routes::forwarded::Relayed::default();
        for (f, v) in fields {
            match f {
                Field::XForwardedFor => r.xff.push(v),
                Field::XForwardedProto if r.proto.is_none() => r.proto = Some(v),
                Field::XForwardedHost if r.host.is_none() => r.host = Some(v),
                Field::XForwardedPort if r.port.is_none() => r.port = Some(v),
                _ => {}
            }
        }
        let client = routes::client::resolve(peer, trusted, r.xff.iter().copied());
        Some(Via {
            relayed: r,
            ip: client.ip,
            client: client.ip.to_string(),
        })
    }
}

/// True when header `name` is `lower` (given in lower case), in any case.
pub fn is(name: &str, lower: &str) -> bool {
    name.len() == lower.len() && name.eq_ignore_ascii_case(lower)
}

/// Headers never forwarded as received: hop-by-hop ones (Connection is
/// read, the rest send the request to Pingora's path) and the forwarding
/// headers Duotone sets itself as the edge.
pub fn replaced(field: Field) -> bool {
    field == Field::Connection || field.forwarding()
}

/// Parses `buf` and, for a request the lane serves, writes the upstream
/// request head into `out` (cleared first) and fills `log` if given.
pub fn plan(
    buf: &[u8],
    snap: &Snapshot,
    conn: &Conn<'_>,
    ids: &crate::net::forwarded::RequestIds,
    out: &mut Vec<u8>,
    log: Option<&mut LogFields>,
) -> Parsed {
    // Uninitialised: httparse fills only what it parses (no 2 KiB memset).
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Handoff,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Handoff;
    };
    let mut host = None;
    let mut length = None;
    let mut close = false;
    let mut client_id = None;
    let mut header_bytes = target.len();
    let mut fields = [Field::Other; MAX_HEADERS];
    for (h, field) in req.headers.iter().zip(fields.iter_mut()) {
        header_bytes += routes::policy::field_bytes(h.name.len(), h.value.len());
        *field = Field::of(h.name);
        match *field {
            Field::Host => {
                if host.is_some() {
                    return Parsed::Handoff;
                }
                match std::str::from_utf8(h.value) {
                    Ok(v) if !v.is_empty() => host = Some(v),
                    _ => return Parsed::Handoff,
                }
            }
            Field::ContentLength => {
                if length.is_some() {
                    return Parsed::Handoff;
                }
                match parse_length(h.value) {
                    Some(n) => length = Some(n),
                    None => return Parsed::Handoff,
                }
            }
            Field::Connection => match super::field::connection_close(h.value) {
                Some(c) => close |= c,
                None => return Parsed::Handoff,
            },
            Field::XRequestId => client_id = Some(h.value),
            // Upgrades, chunked bodies, 100-continue and the like.
            f if f.hop_by_hop() || f == Field::Expect => return Parsed::Handoff,
            _ => {}
        }
    }
    let via = Via::of(
        conn,
        &snap.table.config.server.trusted_proxies,
        req.headers
            .iter()
            .zip(fields)
            .filter(|(_, f)| f.forwarding())
            .map(|(h, f)| (f, h.value)),
    );
    // The policy every transport shares; what the lane does not serve,
    // Pingora's path serves (deciding the same way).
    let view = routes::policy::View {
        head: routes::request::Head {
            proto: routes::request::Proto::Http11,
            method,
            target,
            host,
            host_fields: usize::from(host.is_some()),
            authority: None,
        },
        tls: conn.tls,
        client: via.as_ref().map_or(conn.peer, |v| Some(v.ip)),
        content_length: length,
        header_count: req.headers.len(),
        header_bytes,
        bad_framing: false,
        acme: conn.acme,
        unreadable: None,
    };
    let verdict = routes::policy::decide(&snap.table, &view);
    let (Some(checked), false) = (
        verdict.checked,
        verdict.decision.needs_full_path(&snap.table),
    ) else {
        return Parsed::Handoff;
    };
    if checked.absolute {
        return Parsed::Handoff;
    }
    let path = &*checked.path;
    let host = checked.host;
    let body_len = length.unwrap_or(0);
    let (site_idx, route_idx, service) = match verdict.decision {
        Decision::Proxy(r, service) if body_len <= MAX_BODY as u64 => (r.site, r.route, service),
        Decision::Static(r) if body_len == 0 => {
            let route = &snap.table.sites[r.site].routes[r.route];
            let Some(files) = snap.slots.get(route.slot).and_then(|s| s.files.clone()) else {
                return Parsed::Handoff;
            };
            let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
                return Parsed::Handoff;
            };
            let mut map = http::HeaderMap::new();
            for h in req.headers.iter() {
                if let Some(name) = STATIC_HEADERS.iter().find(|n| is(h.name, n.as_str())) {
                    match http::HeaderValue::from_bytes(h.value) {
                        Ok(v) => map.append(name.clone(), v),
                        Err(_) => return Parsed::Handoff,
                    };
                }
            }
            if let Some(log) = log {
                fill_log(log, &req, host, target);
            }
            return Parsed::Lane(Plan {
                head_len,
                body_len: 0,
                site: r.site,
                route: r.route,
                close,
                head_method: method == http::Method::HEAD,
                id: request_id(client_id, ids),
                client: None,
                work: Work::Static(Box::new(StaticRequest {
                    files,
                    method,
                    rel: path.get(route.prefix.len()..).unwrap_or("").to_string(),
                    headers: map,
                })),
            });
        }
        _ => return Parsed::Handoff,
    };
    let route = &snap.table.sites[site_idx].routes[route_idx];
    let id = request_id(client_id, ids);

    request_line(out, method, &checked, route);
    for (h, field) in req.headers.iter().zip(fields) {
        // Only unrecognised names can hold `_` (the recognised ones do not).
        if !replaced(field)
            && (field != Field::Other || routes::request::forwards_field(h.name.as_bytes()))
        {
            header(out, h.name.as_bytes(), h.value);
        }
    }
    forwarding(out, conn, host, &id, via.as_ref());
    let client = via.as_ref().map_or(conn.peer, |v| Some(v.ip));

    if let Some(log) = log {
        fill_log(log, &req, host, target);
        if let Some(via) = via {
            log.client = via.client;
        }
    }
    Parsed::Lane(Plan {
        head_len,
        body_len: body_len as usize,
        site: site_idx,
        route: route_idx,
        close,
        head_method: method == "HEAD",
        id,
        client,
        work: Work::Proxy(service),
    })
}

/// Starts the upstream head in `out` (cleared first): the request line
/// with the canonical path (what the route matched), the route's prefix
/// stripped when it says so, and the query as received.
pub fn request_line(
    out: &mut Vec<u8>,
    method: &str,
    checked: &routes::request::Checked<'_>,
    route: &routes::Route,
) {
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    let path = &*checked.path;
    if route.strip_prefix {
        let rest = path.get(route.prefix.len()..).unwrap_or("");
        if !rest.starts_with('/') {
            out.push(b'/');
        }
        out.extend_from_slice(rest.as_bytes());
    } else {
        out.extend_from_slice(path.as_bytes());
    }
    if let Some(q) = checked.query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// Ends the upstream head in `out` with the forwarding fields
/// ([`routes::forwarded`]) and the blank line.
pub fn forwarding(
    out: &mut Vec<u8>,
    conn: &Conn<'_>,
    host: &str,
    id: &RequestId,
    via: Option<&Via<'_>>,
) {
    let facts = routes::forwarded::Facts {
        tls: conn.tls,
        host: host.as_bytes(),
        peer: conn.client_ip.as_bytes(),
        client: via.map_or(conn.client_ip, |v| v.client.as_str()).as_bytes(),
        request_id: id.as_bytes(),
        port: conn.port,
    };
    routes::forwarded::write(&mut HeadFields(out), &facts, via.map(|v| &v.relayed));
    out.extend_from_slice(b"\r\n");
}

/// An HTTP/1.1 head being written, as [`routes::forwarded::Fields`].
struct HeadFields<'a>(&'a mut Vec<u8>);

impl routes::forwarded::Fields for HeadFields<'_> {
    #[inline(always)]
    fn add(&mut self, name: &'static str, value: impl FnOnce(&mut Vec<u8>)) {
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b": ");
        value(self.0);
        self.0.extend_from_slice(b"\r\n");
    }
}

/// Copies what the access log needs out of the read buffer.
fn fill_log(log: &mut LogFields, req: &httparse::Request<'_, '_>, host: &str, target: &str) {
    log.host = host.to_string();
    log.method = req.method.unwrap_or("").to_string();
    log.uri = target.to_string();
    let value = |n: &str| {
        req.headers
            .iter()
            .find(|h| is(h.name, n))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
            .unwrap_or_default()
    };
    log.referer = value("referer");
    log.user_agent = value("user-agent");
}

/// Appends `name: value\r\n`.
pub fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A Content-Length value: ASCII digits only, no sign, at most 18 of them.
pub fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The client's request id when sane, else a fresh one.
pub fn request_id(client: Option<&[u8]>, ids: &crate::net::forwarded::RequestIds) -> RequestId {
    let mut id = RequestId {
        buf: [0; 128],
        len: 0,
    };
    match client {
        Some(v) if crate::net::forwarded::is_sane_id(v) => {
            id.buf[..v.len()].copy_from_slice(v);
            id.len = v.len();
        }
        _ => {
            ids.write_next(&mut id.buf[..24]);
            id.len = 24;
        }
    }
    id
}

#[cfg(test)]
mod tests {
    use super::parse_length;

    #[test]
    fn content_lengths() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b" 42 "), Some(42));
        assert_eq!(parse_length(b"+1"), None);
        assert_eq!(parse_length(b"1,1"), None);
        assert_eq!(parse_length(b""), None);
        assert_eq!(parse_length(b"9999999999999999999"), None);
    }
}
