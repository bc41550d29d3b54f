//! Headers that tell the upstream who asked and how: X-Forwarded-For,
//! -Proto, -Host, -Port, X-Real-IP and X-Request-Id; prefix stripping; the https
//! form of a request URL.

use pingora::http::RequestHeader;
use pingora::Result;
use routes::forwarded::{Facts, Fields, Relayed};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Makes request ids: a random per-process prefix and a counter, 24 hex digits.
pub struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds {
            prefix: fastrand::u64(..),
            next: AtomicU64::new(1),
        }
    }
}

impl RequestIds {
    /// A fresh id.
    pub fn next(&self) -> http::HeaderValue {
        let mut buf = [0u8; 24];
        self.write_next(&mut buf);
        http::HeaderValue::from_bytes(&buf).unwrap_or_else(|_| http::HeaderValue::from_static("0"))
    }

    /// Writes a fresh id (24 hex digits) into `out`, which must hold 24 bytes.
    pub fn write_next(&self, out: &mut [u8]) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some((prefix, counter)) = out.get_mut(..24).map(|o| o.split_at_mut(16)) {
            hex(self.prefix, prefix);
            hex(n, counter);
        }
    }

    /// The client's X-Request-Id when it is sane (1–128 visible ASCII
    /// characters), else a fresh one.
    pub fn for_request(&self, req: &RequestHeader) -> http::HeaderValue {
        match req.headers.get("x-request-id") {
            Some(v) if is_sane_id(v.as_bytes()) => v.clone(),
            _ => self.next(),
        }
    }
}

/// Whether a client's X-Request-Id is kept: 1–128 visible ASCII characters.
pub fn is_sane_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_graphic())
}

/// Writes the low `out.len()` hex digits of `v` into `out`.
fn hex(mut v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// Sets the forwarding headers ([`routes::forwarded`]) on the upstream
/// request: `client` is the real client ([`routes::client::resolve`]),
/// `via` the peer's address when it is a trusted proxy, `port` the port of
/// the listener the client connected to (0: unknown).
pub fn set_headers(
    up: &mut RequestHeader,
    client: Option<std::net::IpAddr>,
    via: Option<std::net::IpAddr>,
    tls: bool,
    port: u16,
    request_id: Option<http::HeaderValue>,
) -> Result<()> {
    let host = match up.headers.get(http::header::HOST) {
        Some(h) => Some(h.clone()),
        None => {
            let authority = up.uri.authority().map(|a| a.as_str()).unwrap_or("");
            let v = http::HeaderValue::from_str(authority)
                .ok()
                .filter(|v| !v.is_empty());
            if let Some(v) = &v {
                up.insert_header(http::header::HOST, v.clone())?;
            }
            v
        }
    };
    let text = |ip: std::net::IpAddr| ip_value(ip.to_canonical());
    let client = client.map(text);
    let peer = via.map(text).or_else(|| client.clone());
    let empty = http::HeaderValue::from_static("");
    let fields = {
        let headers = &up.headers;
        let first = |n: &str| headers.get(n).map(|v| v.as_bytes());
        let relayed = via.map(|_| Relayed {
            xff: headers
                .get_all("x-forwarded-for")
                .iter()
                .map(|v| v.as_bytes())
                .collect(),
            proto: first("x-forwarded-proto"),
            host: first("x-forwarded-host"),
            port: first("x-forwarded-port"),
        });
        let facts = Facts {
            tls,
            host: host.as_ref().map_or(&b""[..], |h| h.as_bytes()),
            peer: peer.as_ref().unwrap_or(&empty).as_bytes(),
            client: client.as_ref().unwrap_or(&empty).as_bytes(),
            request_id: request_id.as_ref().unwrap_or(&empty).as_bytes(),
            port,
        };
        let mut fields = Values(Vec::with_capacity(6));
        routes::forwarded::write(&mut fields, &facts, relayed.as_ref());
        fields.0
    };
    for name in routes::forwarded::NAMES {
        if up.headers.contains_key(name) {
            up.remove_header(name);
        }
    }
    for (name, value) in fields {
        if name != "x-request-id" || request_id.is_some() {
            up.append_header(name, value)?;
        }
    }
    Ok(())
}

/// Forwarding fields as header values.
struct Values(Vec<(&'static str, http::HeaderValue)>);

impl Fields for Values {
    fn add(&mut self, name: &'static str, value: impl FnOnce(&mut Vec<u8>)) {
        let mut v = Vec::with_capacity(48);
        value(&mut v);
        if let Ok(v) = http::HeaderValue::from_bytes(&v) {
            self.0.push((name, v));
        }
    }
}

/// An IP address as a header value, formatted without a heap `String`.
fn ip_value(ip: std::net::IpAddr) -> http::HeaderValue {
    use std::io::Write;
    let mut buf = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{ip}");
    let n = cursor.position() as usize;
    http::HeaderValue::from_bytes(&buf[..n])
        .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"))
}

/// Removes the first `n` bytes (the route prefix) from the request path,
/// keeping a leading `/` and the query.
pub fn strip_prefix(up: &mut RequestHeader, n: usize) -> Result<()> {
    let pq = up.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let rest = pq.get(n..).unwrap_or("");
    let new = if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    };
    let uri = http::Uri::builder()
        .path_and_query(new)
        .build()
        .map_err(|e| {
            pingora::Error::because(pingora::ErrorType::InternalError, "strip prefix", e)
        })?;
    up.set_uri(uri);
    Ok(())
}

/// The https:// URL of this request, for the HTTP→HTTPS redirect. The port
/// is kept when the HTTPS listener is not on 443.
pub fn https_location(req: &RequestHeader, https: Option<SocketAddr>) -> String {
    let host = routes::host::strip_port(request_host(req));
    let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    match https.map(|a| a.port()) {
        Some(443) | None => format!("https://{host}{pq}"),
        Some(port) => format!("https://{host}:{port}{pq}"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_and_sane() {
        let ids = RequestIds::default();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-request-id", "abc-123").unwrap();
        assert_eq!(ids.for_request(&req), "abc-123");
        req.insert_header("x-request-id", "bad id with spaces")
            .unwrap();
        assert_ne!(ids.for_request(&req), "bad id with spaces");
    }

    #[test]
    fn sets_forwarded_headers_over_client_values() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("host", "example.com").unwrap();
        req.insert_header("x-forwarded-for", "6.6.6.6").unwrap();
        req.insert_header("forwarded", "for=6.6.6.6").unwrap();
        req.insert_header("x-forwarded-port", "1").unwrap();
        set_headers(
            &mut req,
            Some("::ffff:10.0.0.7".parse().unwrap()),
            None,
            true,
            8443,
            None,
        )
        .unwrap();
        assert_eq!(req.headers["x-forwarded-for"], "10.0.0.7");
        assert_eq!(req.headers["x-forwarded-proto"], "https");
        assert_eq!(req.headers["x-forwarded-host"], "example.com");
        assert_eq!(req.headers["x-forwarded-port"], "8443");
        assert_eq!(req.headers.get_all("x-forwarded-port").iter().count(), 1);
        assert!(req.headers.get("forwarded").is_none());
    }

    #[test]
    fn strips_prefixes() {
        let mut req = RequestHeader::build("GET", b"/api/v1/x?q=1", None).unwrap();
        strip_prefix(&mut req, 4).unwrap();
        assert_eq!(req.uri.path_and_query().unwrap().as_str(), "/v1/x?q=1");
        let mut req = RequestHeader::build("GET", b"/api", None).unwrap();
        strip_prefix(&mut req, 4).unwrap();
        assert_eq!(req.uri.path(), "/");
    }

    #[test]
    fn https_locations() {
        let mut req = RequestHeader::build("GET", b"/a?b=1", None).unwrap();
        req.insert_header("host", "example.com:8080").unwrap();
        assert_eq!(
            https_location(&req, Some("0.0.0.0:443".parse().unwrap())),
            "https://example.com/a?b=1"
        );
        assert_eq!(
            https_location(&req, Some("0.0.0.0:8443".parse().unwrap())),
            "https://example.com:8443/a?b=1"
        );
    }
}
