//! An upstream's response head, rewritten for the client, and the framing
//! of the body that follows it.

use super::field::Field;
use super::request::header;
use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

const MAX_HEADERS: usize = 128;

/// How the response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding, forwarded as is.
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// A parsed upstream response head.
pub struct Head {
    /// Bytes of the head in the read buffer.
    pub len: usize,
    /// Status code.
    pub status: u16,
    /// Body framing.
    pub framing: Framing,
    /// The upstream connection may be reused once the body is read.
    pub reusable: bool,
    /// Never buffered: an event stream, or the upstream said
    /// `X-Accel-Buffering: no` (nginx's convention).
    pub unbuffered: bool,
}

/// The outcome of looking at the upstream's bytes so far.
pub enum Parsed {
    /// Not complete yet.
    Partial,
    /// An interim 1xx response of this many bytes: skip it.
    Interim(usize),
    /// Invalid or unsupported (the client gets 502).
    Invalid,
    /// A final response; the client head has been written.
    Done(Head),
}

/// What the client head must carry besides the upstream's headers.
pub struct Extra<'a> {
    /// The request was HEAD.
    pub head_method: bool,
    /// Strict-Transport-Security value (TLS sites with HSTS).
    pub hsts: Option<&'a str>,
    /// X-Request-Id value.
    pub request_id: &'a [u8],
    /// Tell the client the connection closes after this response.
    pub close: bool,
    /// The route's configured response fields (2xx/3xx only).
    pub add: &'a routes::headers::AddHeaders,
    /// A `Set-Cookie` value pinning the client to the color that answered
    /// (a sticky canary: [`routes::canary`]), on any status.
    pub set_cookie: Option<&'a str>,
}

/// Receives the client's response head, field by field: HTTP/1.1 bytes
/// (`Vec<u8>`) or an HTTP/2 header block (`super::h2::Head`).
pub trait HeadOut {
    /// Starts a new head (dropping any earlier one) with its status line.
    fn start(&mut self, status: u16, reason: Option<&str>);
    /// Adds a header field.
    fn header(&mut self, name: &str, value: &[u8]);
    /// Ends the head; `close`: the client connection closes after it.
    fn end(&mut self, close: bool);
}

impl HeadOut for Vec<u8> {
    fn start(&mut self, status: u16, reason: Option<&str>) {
        self.clear();
        // One allocation for a typical head, not a doubling series.
        self.reserve(512);
        self.extend_from_slice(b"HTTP/1.1 ");
        // 200..=599: three digits.
        self.extend_from_slice(&[
            b'0' + (status / 100) as u8,
            b'0' + (status / 10 % 10) as u8,
            b'0' + (status % 10) as u8,
        ]);
        self.push(b' ');
        match reason.filter(|r| !r.is_empty()) {
            Some(r) => self.extend_from_slice(r.as_bytes()),
            None => self.extend_from_slice(
                http::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("Unknown")
                    .as_bytes(),
            ),
        }
        self.extend_from_slice(b"\r\n");
    }

    fn header(&mut self, name: &str, value: &[u8]) {
        header(self, name.as_bytes(), value);
    }

    fn end(&mut self, close: bool) {
        if close {
            self.extend_from_slice(b"connection: close\r\n");
        }
        self.extend_from_slice(b"\r\n");
    }
}

/// Parses the response head in `buf` and writes the client's head into
/// `out` (started afresh).
pub fn parse<O: HeadOut>(buf: &[u8], extra: &Extra<'_>, out: &mut O) -> Parsed {
    // Uninitialised: httparse fills only what it parses (no 4 KiB memset).
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Invalid,
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Parsed::Invalid;
    };
    if status == 101 || !(100..600).contains(&status) {
        return Parsed::Invalid;
    }
    if status < 200 {
        return Parsed::Interim(len);
    }
    let mut length = None;
    let mut chunked = false;
    let mut reusable = version == 1;
    // The Connection field names others, to be removed (RFC 9110 §7.6.1).
    let mut nominates = false;
    let mut unbuffered = false;
    let mut fields = [Field::Other; MAX_HEADERS];
    for (h, field) in resp.headers.iter().zip(fields.iter_mut()) {
        *field = Field::of(h.name);
        match *field {
            Field::ContentLength => match super::request::parse_length(h.value) {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => return Parsed::Invalid,
            },
            Field::TransferEncoding => {
                let last = h.value.rsplit(|b| *b == b',').next().unwrap_or(b"");
                if chunked || !last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Parsed::Invalid;
                }
                chunked = true;
            }
            Field::Connection => {
                let o = crate::net::hop::options(h.value);
                reusable &= !o.close;
                nominates |= o.nominates;
            }
            Field::ContentType => unbuffered |= is_event_stream(h.value),
            Field::XAccelBuffering => {
                unbuffered |= h.value.trim_ascii().eq_ignore_ascii_case(b"no")
            }
            _ => {}
        }
    }
    let framing = if extra.head_method || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3).
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        reusable = false;
        Framing::Close
    };
    if chunked && length.is_some() {
        reusable = false;
    }

    out.start(status, resp.reason);
    let add = extra.add.for_status(status);
    let mut has_date = false;
    for (h, field) in resp.headers.iter().zip(fields.iter()) {
        let dropped = match field {
            // Hop-by-hop (crate::net::hop; 101 never gets here), and ours.
            Field::Connection
            | Field::KeepAlive
            | Field::ProxyConnection
            | Field::Upgrade
            | Field::Te
            | Field::Trailer
            | Field::XRequestId => true,
            Field::ContentLength => chunked,
            Field::StrictTransportSecurity => extra.hsts.is_some(),
            // For the edge, as nginx hides it.
            Field::XAccelBuffering => true,
            _ => nominates && nominated(resp.headers, &fields, h.name),
        } || (!add.is_empty() && routes::headers::AddHeaders::replaces(add, h.name));
        if !dropped {
            has_date |= *field == Field::Date;
            out.header(h.name, h.value);
        }
    }
    if !has_date {
        with_date(|d| out.header("date", d.as_bytes()));
    }
    if let Some(hsts) = extra.hsts {
        out.header("strict-transport-security", hsts.as_bytes());
    }
    // A configured X-Request-Id replaces ours (an empty one removes it), as
    // on Pingora's path (`respond::add_headers` after the id is set).
    if !routes::headers::AddHeaders::replaces(add, "x-request-id") {
        out.header("x-request-id", extra.request_id);
    }
    for (name, value) in add.iter().filter(|(_, v)| !v.is_empty()) {
        out.header(name, value.as_bytes());
    }
    if let Some(cookie) = extra.set_cookie {
        out.header("set-cookie", cookie.as_bytes());
    }
    out.end(extra.close || framing == Framing::Close);
    Parsed::Done(Head {
        len,
        status,
        framing,
        reusable,
        unbuffered,
    })
}

/// Whether a Content-Type value is an event stream (never buffered).
fn is_event_stream(value: &[u8]) -> bool {
    value
        .trim_ascii()
        .get(..17)
        .is_some_and(|v| v.eq_ignore_ascii_case(b"text/event-stream"))
}

/// True when a Connection field among `headers` (classified in `fields`)
/// nominates `name`.
fn nominated(headers: &[httparse::Header<'_>], fields: &[Field], name: &str) -> bool {
    headers.iter().zip(fields).any(|(h, f)| {
        *f == Field::Connection && crate::net::hop::nominated(h.value, name.as_bytes())
    })
}

/// Appends a `date:` header.
pub fn date(out: &mut Vec<u8>) {
    with_date(|d| header(out, b"date", d.as_bytes()));
}

/// Calls `f` with the current HTTP date, formatted at most once a second
/// per thread.
pub fn with_date<R>(f: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs || c.1.is_empty() {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        f(&c.1)
    })
}

/// Follows a chunked body byte by byte (bulk over chunk data) to find
/// where it ends, so it can be forwarded verbatim.
#[derive(Debug, Default)]
pub struct Chunks {
    state: State,
    size: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Size,
    SizeDigits,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// A malformed chunked body.
#[derive(Debug, PartialEq, Eq)]
pub struct BadChunk;

impl Chunks {
    /// True once the last chunk and the trailer section have been seen.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes `buf`; returns how many of its bytes belong to the body
    /// (all of them, unless the body ends inside `buf`).
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, BadChunk> {
        self.feed_with(buf, |_| {})
    }

    /// Like [`Chunks::feed`], and appends the chunks' data (the decoded
    /// body, without sizes, extensions or trailers) to `data`.
    pub fn feed_data(&mut self, buf: &[u8], data: &mut Vec<u8>) -> Result<usize, BadChunk> {
        self.feed_with(buf, |d| data.extend_from_slice(d))
    }

    fn feed_with(&mut self, buf: &[u8], mut on_data: impl FnMut(&[u8])) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < buf.len() && self.state != State::Done {
            if self.state == State::Data {
                let take = (buf.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                on_data(&buf[i..i + take]);
                i += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = buf[i];
            i += 1;
            self.state = match (self.state, b) {
                (State::Size | State::SizeDigits, _) if b.is_ascii_hexdigit() => {
                    if self.size > (u64::MAX >> 8) {
                        return Err(BadChunk);
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0);
                    self.size = self.size * 16 + u64::from(d);
                    State::SizeDigits
                }
                (State::SizeDigits, b';' | b' ' | b'\t') => State::Extension,
                (State::SizeDigits | State::Extension, b'\r') => State::SizeLf,
                (State::Extension, b'\n') => return Err(BadChunk),
                (State::Extension, _) => State::Extension,
                (State::SizeLf, b'\n') if self.size == 0 => State::TrailerStart,
                (State::SizeLf, b'\n') => State::Data,
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataLf, b'\n') => State::Size,
                (State::TrailerStart, b'\r') => State::EndLf,
                (State::TrailerStart | State::TrailerLine, b'\n') => return Err(BadChunk),
                (State::TrailerLine, b'\r') => State::TrailerLf,
                (State::TrailerStart | State::TrailerLine, _) => State::TrailerLine,
                (State::TrailerLf, b'\n') => State::TrailerStart,
                (State::EndLf, b'\n') => State::Done,
                _ => return Err(BadChunk),
            };
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &[u8]) -> Result<usize, BadChunk> {
        let mut c = Chunks::default();
        let n = c.feed(body)?;
        assert!(c.done(), "not done after {body:?}");
        Ok(n)
    }

    #[test]
    fn finds_the_end_of_chunked_bodies() {
        assert_eq!(whole(b"0\r\n\r\n"), Ok(5));
        assert_eq!(whole(b"5\r\nhello\r\n0\r\n\r\nNEXT"), Ok(15));
        assert_eq!(
            whole(b"a;ext=1\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n"),
            Ok(34)
        );
        assert_eq!(whole(b"A\r\n0123456789\r\n0\r\n\r\n"), Ok(20));
        let mut c = Chunks::default();
        assert!(c.feed(b"5\r\nhello\r\n0\r\n\r\n").is_ok());
        // Decoded, split anywhere, including inside sizes and CRLFs.
        let body = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nT: 1\r\n\r\n";
        for cut in 0..body.len() {
            let (mut c, mut data) = (Chunks::default(), Vec::new());
            let a = c.feed_data(&body[..cut], &mut data).unwrap();
            let b = c.feed_data(&body[cut..], &mut data).unwrap();
            assert!(c.done() && a + b == body.len(), "cut at {cut}");
            assert_eq!(data, b"hello world", "cut at {cut}");
        }
        // Byte by byte gives the same answer.
        let body = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: v\r\n\r\n";
        let mut c = Chunks::default();
        let mut total = 0;
        for b in body.iter() {
            total += c.feed(std::slice::from_ref(b)).unwrap();
        }
        assert!(c.done());
        assert_eq!(total, body.len());
    }

    #[test]
    fn rejects_malformed_chunks() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloX",
            b"5\nhello",
            b"\r\n",
            b"0\r\n\n",
            b"ffffffffffffffffff\r\n",
        ] {
            assert_eq!(Chunks::default().feed(bad), Err(BadChunk), "{bad:?}");
        }
    }

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_nominates_are_removed() {
        let extra = Extra {
            head_method: false,
            hsts: None,
            request_id: b"id",
            close: false,
            add: &routes::headers::AddHeaders::NONE,
            set_cookie: None,
        };
        let mut out = Vec::new();
        let up = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-A\r\nConnection: x-b, Content-Length\r\nX-A: 1\r\nx-B: 2\r\nX-C: 3\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nTE: trailers\r\nTrailer: X-T\r\nDate: d\r\n\r\nok";
        let Parsed::Done(h) = parse(up, &extra, &mut out) else {
            panic!("not parsed")
        };
        assert!(h.reusable);
        assert_eq!(h.framing, Framing::Length(2));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nX-C: 3\r\nContent-Length: 2\r\nDate: d\r\nx-request-id: id\r\n\r\n"
        );
        // Close with a nomination: relayed, the connection not kept; a
        // nominated Date is replaced by ours.
        let mut out = Vec::new();
        let up = b"HTTP/1.1 200 OK\r\nConnection: close, date\r\nDate: theirs\r\nContent-Length: 0\r\n\r\n";
        let Parsed::Done(h) = parse(up, &extra, &mut out) else {
            panic!("not parsed")
        };
        assert!(!h.reusable);
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.contains("theirs") && text.contains("date: "),
            "{text}"
        );
        assert!(!text.to_ascii_lowercase().contains("connection"), "{text}");
    }

    #[test]
    fn a_configured_request_id_replaces_ours_as_on_pingoras_path() {
        let with = |value: &str, status: &str| {
            let add = routes::headers::AddHeaders::merge(
                &[],
                &[("x-request-id".to_string(), value.to_string())],
            );
            let extra = Extra {
                head_method: false,
                hsts: None,
                request_id: b"ours",
                close: false,
                add: &add,
                set_cookie: None,
            };
            let mut out = Vec::new();
            let up =
                format!("HTTP/1.1 {status}\r\nX-Request-Id: theirs\r\nContent-Length: 0\r\n\r\n");
            assert!(matches!(
                parse(up.as_bytes(), &extra, &mut out),
                Parsed::Done(_)
            ));
            let text = String::from_utf8(out).unwrap();
            text.lines()
                .filter_map(|l| l.strip_prefix("x-request-id: "))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(with("fixed", "200 OK"), ["fixed"]);
        assert!(with("", "200 OK").is_empty());
        // Configured fields are for 2xx/3xx only.
        assert_eq!(with("fixed", "502 Bad Gateway"), ["ours"]);
    }

    #[test]
    fn a_sticky_cookie_is_set_beside_the_upstreams_own_on_any_status() {
        for status in ["200 OK", "302 Found", "500 Internal Server Error"] {
            let extra = Extra {
                head_method: false,
                hsts: None,
                request_id: b"id",
                close: false,
                add: &routes::headers::AddHeaders::NONE,
                set_cookie: Some("duotone_api=green; Path=/"),
            };
            let mut out = Vec::new();
            let up = format!("HTTP/1.1 {status}\r\nSet-Cookie: sid=1\r\nContent-Length: 0\r\n\r\n");
            assert!(matches!(
                parse(up.as_bytes(), &extra, &mut out),
                Parsed::Done(_)
            ));
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("\r\nSet-Cookie: sid=1\r\n"), "{text}");
            assert!(
                text.contains("\r\nset-cookie: duotone_api=green; Path=/\r\n"),
                "{text}"
            );
        }
    }

    #[test]
    fn rewrites_response_heads() {
        let extra = Extra {
            head_method: false,
            hsts: Some("max-age=1"),
            request_id: b"id-1",
            close: false,
            add: &routes::headers::AddHeaders::NONE,
            set_cookie: None,
        };
        let mut out = Vec::new();
        let up = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Request-Id: theirs\r\nStrict-Transport-Security: max-age=9\r\nDate: x\r\n\r\nok";
        let Parsed::Done(h) = parse(up, &extra, &mut out) else {
            panic!("not parsed")
        };
        assert_eq!(h.len, up.len() - 2);
        assert_eq!(h.framing, Framing::Length(2));
        assert!(h.reusable);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: x\r\nstrict-transport-security: max-age=1\r\nx-request-id: id-1\r\n\r\n"
        );
        let mut out = Vec::new();
        let Parsed::Done(h) = parse(b"HTTP/1.0 200 OK\r\n\r\n", &extra, &mut out) else {
            panic!("not parsed")
        };
        assert_eq!(h.framing, Framing::Close);
        assert!(!h.reusable);
        assert!(String::from_utf8_lossy(&out).contains("connection: close\r\n"));
        assert!(matches!(
            parse(b"HTTP/1.1 100 Continue\r\n\r\n", &extra, &mut out),
            Parsed::Interim(25)
        ));
        assert!(matches!(
            parse(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                &extra,
                &mut out
            ),
            Parsed::Invalid
        ));
    }
}
