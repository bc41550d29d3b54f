//! The uwsgi protocol's request packet, as nginx's `uwsgi_pass` with its
//! stock `uwsgi_params` sends it to uWSGI (`--socket`): the HTTP/1.1
//! request head Duotone builds for an upstream, turned into CGI-style
//! variables. Pure: bytes in, bytes out. The request body follows the
//! packet as it is, and uWSGI answers with plain HTTP.
//!
//! A packet is a 4-byte header (modifier1 = 0, the size of the variables
//! as a little-endian u16, modifier2 = 0), then each variable as a
//! little-endian u16 length and its name, a little-endian u16 length and
//! its value.

use std::net::IpAddr;

/// The most bytes the variables of one packet may take (its size field
/// is a u16).
pub const MAX_VARS: usize = u16::MAX as usize;

/// What the packet says about the connection, beside the request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// The client connection is TLS (`REQUEST_SCHEME` https, `HTTPS` on).
    pub tls: bool,
    /// The client (after `server.trusted_proxies`): `REMOTE_ADDR`, empty
    /// when unknown.
    pub remote_addr: Option<IpAddr>,
    /// The client's port: `REMOTE_PORT`, empty when 0 (unknown).
    pub remote_port: u16,
    /// The port of the listener the client connected to: `SERVER_PORT`,
    /// empty when 0 (unknown).
    pub server_port: u16,
}

/// Why a head cannot be sent as a uwsgi packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The head is not one complete HTTP/1.x request head.
    #[error("the request head does not parse as HTTP/1.x")]
    BadHead,
    /// The variables are over [`MAX_VARS`] bytes (long fields or many).
    #[error("the request's uwsgi variables take {0} bytes, more than the 65535 a packet holds")]
    TooLarge(usize),
    /// A packet being decoded is cut short or its size is wrong.
    #[error("malformed uwsgi packet")]
    Malformed,
}

/// The uwsgi packet for the HTTP/1.1 request `head` (request line, fields,
/// blank line; bytes after it are not read) of a request with `facts`.
///
/// Variables: `QUERY_STRING`, `REQUEST_METHOD`, `CONTENT_TYPE`,
/// `CONTENT_LENGTH`, `REQUEST_URI` (the target as in the head),
/// `PATH_INFO` (its path, percent-decoded), `DOCUMENT_ROOT` (empty),
/// `SERVER_PROTOCOL`, `REQUEST_SCHEME`, `HTTPS` (`on`, only over TLS),
/// `REMOTE_ADDR`, `REMOTE_PORT`, `SERVER_PORT`, `SERVER_NAME` (Host
/// without its port), then `HTTP_<NAME>` for every field but
/// Content-Type and Content-Length (the name upper-cased, `-` as `_`;
/// repeated fields joined by `, `, Cookie's by `; `). A field whose name
/// holds `_` is left out (it would pass for the `-` spelling; Duotone
/// never forwards one anyway).
pub fn encode(head: &[u8], facts: &Facts) -> Result<Vec<u8>, Error> {
    let lines = memchr::memchr_iter(b'\n', head).count();
    let mut fields = vec![httparse::EMPTY_HEADER; lines];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(Error::BadHead),
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Error::BadHead);
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    let first = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map_or(&b""[..], |h| h.value)
    };
    let host = first("host");
    let server_name = match std::str::from_utf8(host) {
        Ok(h) => routes::host::strip_port(h).as_bytes(),
        Err(_) => host,
    };
    let mut out = Vars::new();
    out.var(b"QUERY_STRING", query.as_bytes());
    out.var(b"REQUEST_METHOD", method.as_bytes());
    out.var(b"CONTENT_TYPE", first("content-type"));
    out.var(b"CONTENT_LENGTH", first("content-length"));
    out.var(b"REQUEST_URI", target.as_bytes());
    out.var(b"PATH_INFO", &percent_decode(path.as_bytes()));
    out.var(b"DOCUMENT_ROOT", b"");
    let protocol: &[u8] = if version == 0 {
        b"HTTP/1.0"
    } else {
        b"HTTP/1.1"
    };
    out.var(b"SERVER_PROTOCOL", protocol);
    out.var(
        b"REQUEST_SCHEME",
        if facts.tls { b"https" } else { b"http" },
    );
    if facts.tls {
        out.var(b"HTTPS", b"on");
    }
    let remote = facts.remote_addr.map(|ip| ip.to_canonical().to_string());
    out.var(b"REMOTE_ADDR", remote.as_deref().unwrap_or("").as_bytes());
    out.var(b"REMOTE_PORT", port(facts.remote_port).as_bytes());
    out.var(b"SERVER_PORT", port(facts.server_port).as_bytes());
    out.var(b"SERVER_NAME", server_name);
    for (name, value) in http_vars(req.headers) {
        out.var(&name, &value);
    }
    out.finish()
}

/// The `HTTP_*` variables of `fields`, in the order each name first
/// appears, repeated fields joined.
fn http_vars(fields: &[httparse::Header<'_>]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut vars: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(fields.len());
    for f in fields {
        let name = f.name.as_bytes();
        if name.contains(&b'_')
            || f.name.eq_ignore_ascii_case("content-type")
            || f.name.eq_ignore_ascii_case("content-length")
        {
            continue;
        }
        let mut key = Vec::with_capacity(5 + name.len());
        key.extend_from_slice(b"HTTP_");
        key.extend(name.iter().map(|b| match b {
            b'-' => b'_',
            b => b.to_ascii_uppercase(),
        }));
        match vars.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => {
                let sep: &[u8] = if f.name.eq_ignore_ascii_case("cookie") {
                    b"; "
                } else {
                    b", "
                };
                v.extend_from_slice(sep);
                v.extend_from_slice(f.value);
            }
            None => vars.push((key, f.value.to_vec())),
        }
    }
    vars
}

/// A port as text; empty for 0 (unknown).
fn port(p: u16) -> String {
    if p == 0 {
        String::new()
    } else {
        p.to_string()
    }
}

/// `%XX` sequences decoded; a `%` not followed by two hex digits is kept.
fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            if let (Some(h), Some(l)) = (
                s.get(i + 1).copied().and_then(hex),
                s.get(i + 2).copied().and_then(hex),
            ) {
                out.push((h << 4) | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// A packet being written: the header, then the variables.
struct Vars(Vec<u8>);

impl Vars {
    fn new() -> Vars {
        let mut v = Vec::with_capacity(1024);
        v.extend_from_slice(&[0, 0, 0, 0]);
        Vars(v)
    }

    /// Appends one variable. Lengths over a u16 are caught by
    /// [`Vars::finish`] (the whole is then over [`MAX_VARS`] too).
    fn var(&mut self, name: &[u8], value: &[u8]) {
        for part in [name, value] {
            let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
            self.0.extend_from_slice(&len.to_le_bytes());
            self.0.extend_from_slice(part);
        }
    }

    /// The packet, with its size written in the header.
    fn finish(mut self) -> Result<Vec<u8>, Error> {
        let size = self.0.len() - 4;
        let Ok(size16) = u16::try_from(size) else {
            return Err(Error::TooLarge(size));
        };
        self.0[1..3].copy_from_slice(&size16.to_le_bytes());
        Ok(self.0)
    }
}

/// One variable of a packet: its name and value.
pub type Var<'a> = (&'a [u8], &'a [u8]);

/// Reads a packet [`encode`] wrote back into its variables (name, value)
/// in order. The proxy never reads uwsgi packets: this is for tests and
/// the fuzz target. Bytes after the packet are not read.
pub fn decode(packet: &[u8]) -> Result<Vec<Var<'_>>, Error> {
    let [0, lo, hi, 0, rest @ ..] = packet else {
        return Err(Error::Malformed);
    };
    let size = usize::from(u16::from_le_bytes([*lo, *hi]));
    let mut vars = rest.get(..size).ok_or(Error::Malformed)?;
    let mut out = Vec::new();
    while !vars.is_empty() {
        let name = take(&mut vars)?;
        let value = take(&mut vars)?;
        out.push((name, value));
    }
    Ok(out)
}

/// Takes one length-prefixed part off the front of `vars`.
fn take<'a>(vars: &mut &'a [u8]) -> Result<&'a [u8], Error> {
    let [a, b, tail @ ..] = *vars else {
        return Err(Error::Malformed);
    };
    let len = usize::from(u16::from_le_bytes([*a, *b]));
    let part = tail.get(..len).ok_or(Error::Malformed)?;
    *vars = &tail[len..];
    Ok(part)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            tls: false,
            remote_addr: Some("192.0.2.7".parse().unwrap()),
            remote_port: 51234,
            server_port: 8080,
        }
    }

    /// The variables of `head` as text pairs.
    fn vars(head: &str, facts: &Facts) -> Vec<(String, String)> {
        let packet = encode(head.as_bytes(), facts).unwrap();
        assert_eq!(packet[0], 0, "modifier1");
        assert_eq!(packet[3], 0, "modifier2");
        let size = u16::from_le_bytes([packet[1], packet[2]]) as usize;
        assert_eq!(size, packet.len() - 4);
        decode(&packet)
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8(k.to_vec()).unwrap(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    fn get<'a>(vars: &'a [(String, String)], name: &str) -> Option<&'a str> {
        let mut found = vars.iter().filter(|(k, _)| k == name);
        let v = found.next().map(|(_, v)| v.as_str());
        assert!(found.next().is_none(), "{name} twice");
        v
    }

    #[test]
    fn a_get_becomes_the_variables_nginx_sends() {
        let head = "GET /caf%C3%A9/a%2Fb?x=1&y=%20 HTTP/1.1\r\nhost: app.example:8080\r\n\
                    user-agent: curl/8\r\nx-forwarded-proto: http\r\n\r\n";
        let v = vars(head, &facts());
        let want = [
            ("QUERY_STRING", "x=1&y=%20"),
            ("REQUEST_METHOD", "GET"),
            ("CONTENT_TYPE", ""),
            ("CONTENT_LENGTH", ""),
            ("REQUEST_URI", "/caf%C3%A9/a%2Fb?x=1&y=%20"),
            ("PATH_INFO", "/café/a/b"),
            ("DOCUMENT_ROOT", ""),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REQUEST_SCHEME", "http"),
            ("REMOTE_ADDR", "192.0.2.7"),
            ("REMOTE_PORT", "51234"),
            ("SERVER_PORT", "8080"),
            ("SERVER_NAME", "app.example"),
            ("HTTP_HOST", "app.example:8080"),
            ("HTTP_USER_AGENT", "curl/8"),
            ("HTTP_X_FORWARDED_PROTO", "http"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(v, want);
    }

    #[test]
    fn a_post_over_tls_has_its_body_fields_and_https() {
        let head = "POST /upload HTTP/1.1\r\nHost: [::1]:8443\r\nContent-Type: text/plain\r\n\
                    Content-Length: 5\r\n\r\nhello";
        let f = Facts {
            tls: true,
            remote_addr: Some("::ffff:10.0.0.1".parse().unwrap()),
            remote_port: 0,
            server_port: 0,
        };
        let v = vars(head, &f);
        assert_eq!(get(&v, "CONTENT_TYPE"), Some("text/plain"));
        assert_eq!(get(&v, "CONTENT_LENGTH"), Some("5"));
        assert_eq!(get(&v, "HTTP_CONTENT_TYPE"), None);
        assert_eq!(get(&v, "HTTP_CONTENT_LENGTH"), None);
        assert_eq!(get(&v, "REQUEST_SCHEME"), Some("https"));
        assert_eq!(get(&v, "HTTPS"), Some("on"));
        assert_eq!(get(&v, "REMOTE_ADDR"), Some("10.0.0.1"));
        assert_eq!(get(&v, "REMOTE_PORT"), Some(""));
        assert_eq!(get(&v, "SERVER_PORT"), Some(""));
        assert_eq!(get(&v, "SERVER_NAME"), Some("[::1]"));
        assert_eq!(get(&v, "QUERY_STRING"), Some(""));
        // Plain HTTP: no HTTPS variable at all.
        assert_eq!(get(&vars(head, &facts()), "HTTPS"), None);
    }

    #[test]
    fn repeated_fields_are_joined_and_underscored_names_left_out() {
        let head = "GET / HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\nCookie: a=1\r\n\
                    X_Forwarded_For: 6.6.6.6\r\naccept: */*\r\ncookie: b=2\r\n\r\n";
        let v = vars(head, &facts());
        assert_eq!(get(&v, "HTTP_ACCEPT"), Some("text/html, */*"));
        assert_eq!(get(&v, "HTTP_COOKIE"), Some("a=1; b=2"));
        assert_eq!(get(&v, "HTTP_X_FORWARDED_FOR"), None);
        assert!(!v.iter().any(|(_, val)| val.contains("6.6.6.6")), "{v:?}");
    }

    #[test]
    fn http_1_0_and_odd_percent_signs() {
        let v = vars("GET /a%zz%4 HTTP/1.0\r\n\r\n", &facts());
        assert_eq!(get(&v, "SERVER_PROTOCOL"), Some("HTTP/1.0"));
        assert_eq!(get(&v, "PATH_INFO"), Some("/a%zz%4"));
        assert_eq!(get(&v, "SERVER_NAME"), Some(""));
        // Not UTF-8 once decoded: sent as bytes.
        let packet = encode(b"GET /%FF HTTP/1.1\r\n\r\n", &facts()).unwrap();
        let decoded = decode(&packet).unwrap();
        assert!(decoded.contains(&(&b"PATH_INFO"[..], &b"/\xff"[..])));
    }

    #[test]
    fn heads_that_do_not_parse_are_refused() {
        for head in [
            &b""[..],
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"GET / HTTP/2\r\n\r\n",
            b"not a request\r\n\r\n",
        ] {
            assert_eq!(encode(head, &facts()), Err(Error::BadHead), "{head:?}");
        }
    }

    #[test]
    fn variables_over_65535_bytes_are_refused() {
        let big = "a".repeat(40_000);
        let head = format!("GET / HTTP/1.1\r\nX-A: {big}\r\nX-B: {big}\r\n\r\n");
        assert!(matches!(
            encode(head.as_bytes(), &facts()),
            Err(Error::TooLarge(n)) if n > MAX_VARS
        ));
        let huge = "a".repeat(70_000);
        let head = format!("GET / HTTP/1.1\r\nX-A: {huge}\r\n\r\n");
        assert!(matches!(
            encode(head.as_bytes(), &facts()),
            Err(Error::TooLarge(_))
        ));
        // Just under: fine.
        let head = format!("GET / HTTP/1.1\r\nX-A: {}\r\n\r\n", "a".repeat(60_000));
        let packet = encode(head.as_bytes(), &facts()).unwrap();
        assert!(packet.len() - 4 <= MAX_VARS);
    }

    #[test]
    fn decode_refuses_cut_packets() {
        let packet = encode(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &facts()).unwrap();
        for n in 0..packet.len() {
            assert_eq!(decode(&packet[..n]), Err(Error::Malformed), "cut at {n}");
        }
        let mut odd = packet.clone();
        odd[1] = odd[1].wrapping_sub(1);
        assert_eq!(decode(&odd), Err(Error::Malformed));
        assert_eq!(decode(&[1, 0, 0, 0]), Err(Error::Malformed));
    }
}
