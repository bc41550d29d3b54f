//! The request rules every transport applies before routing: the
//! request-target's form, the path's canonical form ([`crate::path`]), the
//! host, and which header fields are forwarded. One pure function per rule,
//! called by the lane (HTTP/1.1 and HTTP/2) and by Pingora's path, so a rule
//! cannot differ between them. A request [`check`] refuses is answered with
//! the [`Refusal`]'s status; the lane hands such requests to Pingora's path,
//! which answers it, so the answer is written in one place.

use crate::path::{normalize, PathError};
use std::borrow::Cow;

/// The protocol a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.0 (Host optional).
    Http10,
    /// HTTP/1.1 (Host required, RFC 9112 §3.2).
    Http11,
    /// HTTP/2 (`:authority`, else Host).
    Http2,
}

/// What [`check`] reads of a request head.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// The protocol.
    pub proto: Proto,
    /// The method.
    pub method: &'a str,
    /// The request-target as received (HTTP/2: `:path`); a transport that
    /// has raw bytes refuses a target that is not UTF-8 (see [`utf8_target`]).
    pub target: &'a str,
    /// The first Host header field's value (a value that is not text is
    /// given as `""`, which is refused like any invalid host).
    pub host: Option<&'a str>,
    /// How many Host header fields the request has.
    pub host_fields: usize,
    /// HTTP/2's `:authority`.
    pub authority: Option<&'a str>,
}

/// A request that passed [`check`]: what routing and forwarding use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked<'a> {
    /// The host to route by (from the target's authority in absolute form,
    /// else `:authority` or Host); may carry a port; empty for HTTP/1.0
    /// without Host.
    pub host: &'a str,
    /// The canonical path: routes match it and it is forwarded.
    pub path: Cow<'a, str>,
    /// The query after `?`, as received (without the `?`).
    pub query: Option<&'a str>,
    /// The target was in absolute form (`http://host/path`): forward it in
    /// origin form with `host` as the Host header.
    pub absolute: bool,
}

impl Checked<'_> {
    /// The request-target to forward: the canonical path and the query.
    pub fn target(&self) -> Cow<'_, str> {
        match self.query {
            None => Cow::Borrowed(&*self.path),
            Some(q) => Cow::Owned(format!("{}?{q}", self.path)),
        }
    }
}

/// Why a request is refused, and with which status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The status to answer with.
    pub status: u16,
    /// The reason, sent as the body.
    pub reason: &'static str,
}

const fn refuse(status: u16, reason: &'static str) -> Refusal {
    Refusal { status, reason }
}

impl From<PathError> for Refusal {
    fn from(e: PathError) -> Self {
        let reason = match e {
            PathError::NotAbsolute => "the request-target must be a path\n",
            PathError::BadEscape => "malformed percent-encoding in the path\n",
            PathError::EncodedControl => "encoded control characters are not allowed in paths\n",
            PathError::EncodedSlash => "encoded slashes are not allowed in paths\n",
            PathError::BadByte => "the path holds a character that must be percent-encoded\n",
            PathError::DotSegment => "dot segments are not allowed in paths\n",
        };
        refuse(400, reason)
    }
}

/// Checks a request head and returns what routing and forwarding use, or
/// the refusal to answer with.
pub fn check<'a>(head: &Head<'a>) -> Result<Checked<'a>, Refusal> {
    if head.method.eq_ignore_ascii_case("CONNECT") {
        return Err(refuse(405, "CONNECT is not supported\n"));
    }
    // One pass: printable ASCII only, less the characters browsers always
    // encode and Pingora's URI parser refuses in some places; the first `?`;
    // and a fragment, which is not part of the request-target (RFC 9112
    // §3.2) and is dropped, as nginx and Pingora do.
    let bytes = head.target.as_bytes();
    let mut end = bytes.len();
    let mut question = None;
    for (i, &b) in bytes.iter().enumerate() {
        if !TARGET_BYTE[usize::from(b)] {
            if b == b'#' {
                end = i;
                break;
            }
            return Err(refuse(
                400,
                "the request-target holds a character that must be percent-encoded\n",
            ));
        }
        if b == b'?' && question.is_none() {
            question = Some(i);
        }
    }
    let target = &head.target[..end];
    if bytes.first() != Some(&b'/') {
        if let Some((authority, rest)) = split_absolute(target) {
            if head.proto != Proto::Http2 {
                let (raw_path, query) = match rest.find('?') {
                    Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                    None => (rest, None),
                };
                // `http://host` and `http://host?q` mean the root.
                let path = if raw_path.is_empty() {
                    "/".into()
                } else {
                    normalize(raw_path)?
                };
                return finish(head, path, query, Some(authority));
            }
        }
    }
    let (raw_path, query) = match question {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    };
    let path = normalize(raw_path)?;
    finish(head, path, query, None)
}

/// Bytes a request-target may hold as they are: printable ASCII less
/// `"`, `<`, `>`, backquote, `\` and `#` (the fragment's start).
const TARGET_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x21;
    while b < 0x7f {
        t[b] = !matches!(b as u8, b'"' | b'<' | b'>' | b'`' | b'\\' | b'#');
        b += 1;
    }
    t
};

/// A raw request-target as text, or the refusal for one that is not UTF-8
/// (it holds bytes that must be percent-encoded).
pub fn utf8_target(raw: &[u8]) -> Result<&str, Refusal> {
    std::str::from_utf8(raw).map_err(|_| refuse(400, "the request-target must be ASCII\n"))
}

fn finish<'a>(
    head: &Head<'a>,
    path: Cow<'a, str>,
    query: Option<&'a str>,
    absolute: Option<&'a str>,
) -> Result<Checked<'a>, Refusal> {
    if head.host_fields > 1 {
        return Err(refuse(400, "more than one Host header\n"));
    }
    let field = match head.host {
        Some(h) if valid_host(h) => Some(h),
        Some(_) => return Err(refuse(400, "invalid Host header\n")),
        None => None,
    };
    let host = match head.proto {
        Proto::Http2 => match (head.authority.filter(|a| !a.is_empty()), field) {
            (Some(a), Some(f)) if !a.eq_ignore_ascii_case(f) => {
                return Err(refuse(400, "Host differs from :authority\n"))
            }
            (Some(a), _) if !valid_host(a) => return Err(refuse(400, "invalid :authority\n")),
            (Some(a), _) => a,
            (None, f) => f.unwrap_or(""),
        },
        Proto::Http11 | Proto::Http10 => {
            if head.proto == Proto::Http11 && field.is_none() {
                return Err(refuse(400, "missing Host header\n"));
            }
            match absolute {
                // RFC 9112 §3.2.2: the target's authority wins over Host.
                Some(a) if valid_host(a) => a,
                Some(_) => return Err(refuse(400, "invalid authority in the request-target\n")),
                None => field.unwrap_or(""),
            }
        }
    };
    Ok(Checked {
        host,
        path,
        query,
        absolute: absolute.is_some(),
    })
}

/// The request-target of a raw HTTP/1 head, exactly as sent: the request
/// line (after any empty lines) must be `method SP target SP HTTP/1.x`
/// ending in CRLF or LF, with single spaces and no control bytes. `None`
/// otherwise (the request is refused). Pingora's parser percent-encodes
/// spaces, control bytes and `"<>` in a target it could not otherwise
/// parse before this sees the head, so a target with spaces reaches here
/// as `%20`; the control bytes are then refused by [`check`].
pub fn raw_target(head: &[u8]) -> Option<&[u8]> {
    let start = head.iter().position(|b| *b != b'\r' && *b != b'\n')?;
    let rest = &head[start..];
    let end = memchr_nl(rest)?;
    let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let token = |t: &[u8]| !t.is_empty() && t.iter().all(|b| b.is_ascii_graphic());
    (token(method) && token(target) && matches!(version, b"HTTP/1.1" | b"HTTP/1.0"))
        .then_some(target)
}

fn memchr_nl(b: &[u8]) -> Option<usize> {
    b.iter().position(|c| *c == b'\n')
}

/// `http://authority/rest` or `https://…` (scheme in any case): the
/// authority and the rest (from its `/` or `?`, possibly empty).
fn split_absolute(target: &str) -> Option<(&str, &str)> {
    let after = ["http://", "https://"].iter().find_map(|s| {
        (target.len() >= s.len() && target[..s.len()].eq_ignore_ascii_case(s))
            .then(|| &target[s.len()..])
    })?;
    let end = after.find(['/', '?']).unwrap_or(after.len());
    Some((&after[..end], &after[end..]))
}

/// A Host value Duotone routes by: a name, IPv4 or `[IPv6]` with an
/// optional port. No user info, path, spaces, control bytes or `..`.
pub fn valid_host(h: &str) -> bool {
    let b = h.as_bytes();
    if b.is_empty() || b.len() > 255 {
        return false;
    }
    let mut prev = 0u8;
    for &c in b {
        if !HOST_BYTE[usize::from(c)] || (c == b'.' && prev == b'.') {
            return false;
        }
        prev = c;
    }
    true
}

/// Bytes a Host value may hold: letters, digits, `-._:[]`.
const HOST_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b':' | b'[' | b']');
        b += 1;
    }
    t
};

/// True when a request header named `name` is forwarded upstream. Names
/// with `_` are dropped, as nginx does by default (`underscores_in_headers
/// off`): WSGI and CGI turn `-` into `_`, so `X_Forwarded_For` would alias
/// the `X-Forwarded-For` the edge sets.
pub fn forwards_field(name: &[u8]) -> bool {
    !name.contains(&b'_')
}

/// True when a request is an upgrade: it has `Upgrade` and its
/// `Connection` lists the `upgrade` token (RFC 9110 §7.8). An `Upgrade`
/// field without it is a plain request (and the field is not forwarded).
pub fn is_upgrade(upgrade: bool, connection: Option<&[u8]>) -> bool {
    upgrade
        && connection.is_some_and(|c| {
            c.split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h1<'a>(target: &'a str, host: Option<&'a str>) -> Head<'a> {
        Head {
            proto: Proto::Http11,
            method: "GET",
            target,
            host,
            host_fields: usize::from(host.is_some()),
            authority: None,
        }
    }

    #[test]
    fn origin_form_is_normalised() {
        let c = check(&h1("/%61dmin//x?a=%61", Some("a.example"))).unwrap();
        assert_eq!(c.host, "a.example");
        assert_eq!(c.path, "/admin/x");
        assert_eq!(c.query, Some("a=%61"));
        assert_eq!(c.target(), "/admin/x?a=%61");
        let c = check(&h1("/plain?q", Some("a"))).unwrap();
        assert!(matches!(c.path, Cow::Borrowed("/plain")));
        assert_eq!(c.target(), "/plain?q");
        let c = check(&h1("/a#/../b", Some("a"))).unwrap();
        assert_eq!((&*c.path, c.query), ("/a", None));
    }

    #[test]
    fn absolute_form_routes_by_its_authority() {
        let c = check(&h1("http://b.example/x?y", Some("a.example"))).unwrap();
        assert_eq!((c.host, &*c.path, c.query), ("b.example", "/x", Some("y")));
        assert!(c.absolute);
        let c = check(&h1("HTTPS://b.example:8443", Some("a"))).unwrap();
        assert_eq!((c.host, &*c.path), ("b.example:8443", "/"));
        assert_eq!(
            check(&h1("http://u@b.example/", Some("a")))
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            check(&h1("http://b.example/%2e%2e/admin", Some("a")))
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn odd_targets_are_refused() {
        for t in [
            "*",
            "example.com:443",
            "ftp://x/",
            "/a b",
            "/a\x01",
            "/caf\u{e9}",
            "/%zz",
            "/a<b",
            "/a?q=\"x\"",
            "/a?q=`x`",
            "/a?q=\\",
        ] {
            assert_eq!(check(&h1(t, Some("a"))).unwrap_err().status, 400, "{t:?}");
        }
        let mut head = h1("example.com:443", Some("a"));
        head.method = "CONNECT";
        assert_eq!(check(&head).unwrap_err().status, 405);
    }

    #[test]
    fn host_rules() {
        assert_eq!(check(&h1("/", None)).unwrap_err().status, 400);
        assert_eq!(check(&h1("/", Some(""))).unwrap_err().status, 400);
        for bad in ["a b", "a/b", "a@b", "a\\b", "..", "a..b", "a\r"] {
            assert_eq!(check(&h1("/", Some(bad))).unwrap_err().status, 400, "{bad}");
        }
        let mut two = h1("/", Some("a"));
        two.host_fields = 2;
        assert_eq!(check(&two).unwrap_err().status, 400);
        let mut old = h1("/", None);
        old.proto = Proto::Http10;
        assert_eq!(check(&old).unwrap().host, "");
        for ok in [
            "a.example",
            "A.Example:8080",
            "127.0.0.1:80",
            "[::1]:443",
            "x_y",
        ] {
            assert_eq!(check(&h1("/", Some(ok))).unwrap().host, ok);
        }
    }

    #[test]
    fn http2_host_is_the_authority() {
        let mut h = h1("/", None);
        h.proto = Proto::Http2;
        h.authority = Some("a.example");
        assert_eq!(check(&h).unwrap().host, "a.example");
        h.host = Some("A.example");
        h.host_fields = 1;
        assert_eq!(check(&h).unwrap().host, "a.example");
        h.host = Some("admin.example");
        assert_eq!(check(&h).unwrap_err().status, 400);
        h.authority = None;
        assert_eq!(check(&h).unwrap().host, "admin.example");
        h.host = None;
        h.host_fields = 0;
        assert_eq!(check(&h).unwrap().host, "");
        // :path is never absolute-form.
        h.target = "http://x/";
        assert_eq!(check(&h).unwrap_err().status, 400);
    }

    #[test]
    fn raw_request_lines() {
        assert_eq!(
            raw_target(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(&b"/a"[..])
        );
        assert_eq!(
            raw_target(b"\r\n\r\nGET /a?b HTTP/1.0\n\n"),
            Some(&b"/a?b"[..])
        );
        for bad in [
            &b"GET /a b HTTP/1.1\r\n"[..],
            b"GET  /a HTTP/1.1\r\n",
            b"GET /a\tHTTP/1.1\r\n",
            b"GET /a\x01 HTTP/1.1\r\n",
            b"GET /caf\xc3\xa9 HTTP/1.1\r\n",
            b"GET /a HTTP/2.0\r\n",
            b"GET /a\r\n",
            b"GET /a HTTP/1.1",
        ] {
            assert_eq!(raw_target(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn fields_and_upgrades() {
        assert!(forwards_field(b"x-forwarded-for"));
        assert!(!forwards_field(b"x_forwarded_for"));
        assert!(!forwards_field(b"X-Real_IP"));
        assert!(is_upgrade(true, Some(b"keep-alive, Upgrade")));
        assert!(!is_upgrade(true, Some(b"keep-alive")));
        assert!(!is_upgrade(true, None));
        assert!(!is_upgrade(false, Some(b"upgrade")));
        assert!(!is_upgrade(true, Some(b"upgrader")));
    }
}
