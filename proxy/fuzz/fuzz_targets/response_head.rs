//! The lane's upstream response-head parser (`lane::response::parse`). It
//! must never panic; for a final response, the head it writes for the
//! client must parse as one complete HTTP/1.1 response head with the same
//! status, framing that agrees with what `parse` reported (one
//! Content-Length equal to the length, none beside chunked, `connection:
//! close` when the body ends at close), none of the upstream's hop-by-hop
//! fields, and our X-Request-Id (and HSTS) exactly once. The same fields
//! written through another `HeadOut` (as the HTTP/2 side does) must come
//! in the same order, with one start and one end.
//!
//! With a route's configured fields (`headers = { … }`), a 2xx/3xx response
//! carries each once with its value and none of those removed. With a
//! sticky canary's cookie, the head is the one without it plus that one
//! `Set-Cookie` field, last, on any status.
//!
//! Input: one flags byte (bit 0: HEAD request, bit 1: HSTS, bit 2: close,
//! bit 3: configured fields, bit 4: a sticky canary's cookie), then the
//! upstream's bytes.

#![no_main]

use duotone::lane::response::{parse, Extra, Framing, HeadOut, Parsed};
use libfuzzer_sys::fuzz_target;
use routes::headers::AddHeaders;
use std::sync::OnceLock;

/// Configured fields: three set, one removed (empty value). A configured
/// X-Request-Id replaces the edge's, as on Pingora's path.
const CONFIGURED: [(&str, &str); 4] = [
    ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-store"),
    ("Server", ""),
    ("X-Request-Id", "configured-id"),
];

fn configured() -> &'static AddHeaders {
    static ADD: OnceLock<AddHeaders> = OnceLock::new();
    ADD.get_or_init(|| {
        let list: Vec<(String, String)> = CONFIGURED
            .iter()
            .map(|(n, v)| {
                let n = routes::headers::check_name(n).expect("name");
                routes::headers::check_value(v).expect("value");
                (n, v.to_string())
            })
            .collect();
        AddHeaders::merge(&[], &list)
    })
}

/// A `HeadOut` that records the calls.
#[derive(Default)]
struct Calls {
    starts: usize,
    status: u16,
    fields: Vec<(String, Vec<u8>)>,
    ends: usize,
    close: bool,
}

impl HeadOut for Calls {
    fn start(&mut self, status: u16, _reason: Option<&str>) {
        self.starts += 1;
        self.status = status;
        self.fields.clear();
    }
    fn header(&mut self, name: &str, value: &[u8]) {
        assert!(self.starts > 0 && self.ends == 0, "header outside the head");
        self.fields.push((name.to_string(), value.to_vec()));
    }
    fn end(&mut self, close: bool) {
        self.ends += 1;
        self.close = close;
    }
}

const ID: &[u8] = b"0123456789abcdef01234567";
const HSTS: &str = "max-age=31536000";
const PIN: &str = "duotone_api=green; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax";

fuzz_target!(|data: &[u8]| {
    let Some((&flags, buf)) = data.split_first() else {
        return;
    };
    let extra = Extra {
        head_method: flags & 1 != 0,
        hsts: (flags & 2 != 0).then_some(HSTS),
        request_id: ID,
        close: flags & 4 != 0,
        add: if flags & 8 != 0 {
            configured()
        } else {
            &AddHeaders::NONE
        },
        set_cookie: (flags & 16 != 0).then_some(PIN),
    };
    let mut out = b"stale bytes from an earlier response".to_vec();
    let parsed = parse(buf, &extra, &mut out);
    let mut calls = Calls::default();
    let again = parse(buf, &extra, &mut calls);
    match (&parsed, &again) {
        (Parsed::Partial, Parsed::Partial) | (Parsed::Invalid, Parsed::Invalid) => {}
        (Parsed::Interim(n), Parsed::Interim(m)) => {
            assert_eq!(n, m);
            assert!(*n <= buf.len());
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut resp = httparse::Response::new(&mut headers);
            assert_eq!(resp.parse(&buf[..*n]), Ok(httparse::Status::Complete(*n)));
            let code = resp.code.unwrap_or(0);
            assert!((100..200).contains(&code) && code != 101, "interim {code}");
        }
        (Parsed::Done(h), Parsed::Done(h2)) => {
            assert_eq!(
                (h.len, h.status, h.framing, h.reusable),
                (h2.len, h2.status, h2.framing, h2.reusable)
            );
            assert!(h.len <= buf.len());
            assert!((200..600).contains(&h.status), "status {}", h.status);
            assert_eq!((calls.starts, calls.ends), (1, 1));
            assert_eq!(calls.status, h.status);
            client_head(buf, &out, h, &extra, &calls);
            if extra.set_cookie.is_some() {
                let plain = Extra {
                    set_cookie: None,
                    ..extra
                };
                let mut without = Calls::default();
                let Parsed::Done(h3) = parse(buf, &plain, &mut without) else {
                    panic!("the cookie changed how the head parses");
                };
                assert_eq!((h3.len, h3.status), (h.len, h.status));
                let mut want = without.fields;
                want.push(("set-cookie".to_string(), PIN.as_bytes().to_vec()));
                let names =
                    |f: &[(String, Vec<u8>)]| f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
                assert_eq!(names(&calls.fields), names(&want));
                let set_cookies = |f: &[(String, Vec<u8>)]| {
                    f.iter()
                        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
                        .map(|(_, v)| v.clone())
                        .collect::<Vec<_>>()
                };
                assert_eq!(set_cookies(&calls.fields), set_cookies(&want));
            }
        }
        _ => panic!("two parses of the same bytes disagree"),
    }
});

/// True when a Connection field of the upstream head in `buf` lists `name`.
fn upstream_nominated(buf: &[u8], name: &str) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut headers);
    if resp.parse(buf).is_err() {
        return false;
    }
    resp.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
}

fn client_head(
    buf: &[u8],
    out: &[u8],
    h: &duotone::lane::response::Head,
    extra: &Extra<'_>,
    calls: &Calls,
) {
    let text = String::from_utf8_lossy(out);
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(out) {
        Ok(httparse::Status::Complete(n)) => {
            assert_eq!(n, out.len(), "bytes after the head: {text:?}")
        }
        other => panic!("client head does not parse ({other:?}): {text:?}"),
    }
    assert_eq!(resp.version, Some(1), "{text:?}");
    assert_eq!(resp.code, Some(h.status), "{text:?}");
    // The same fields as through the other HeadOut, in the same order
    // (plus `connection: close` at the end when asked).
    let fields: Vec<(&str, &[u8])> = resp.headers.iter().map(|f| (f.name, f.value)).collect();
    let close_line = usize::from(calls.close);
    assert_eq!(fields.len(), calls.fields.len() + close_line, "{text:?}");
    for ((n, v), (cn, cv)) in fields.iter().zip(&calls.fields) {
        assert_eq!(n, cn);
        // Our date may have ticked between the two parses.
        if !n.eq_ignore_ascii_case("date") {
            assert_eq!(v, &cv.as_slice(), "{text:?}");
        }
    }
    let count = |name: &str| {
        fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    };
    let values = |name: &str| {
        fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
            .collect::<Vec<_>>()
    };
    for name in ["keep-alive", "proxy-connection", "upgrade", "te", "trailer"] {
        assert_eq!(count(name), 0, "{name} forwarded: {text:?}");
    }
    // Fields the upstream's Connection nominates are gone (framing fields
    // excepted; ours, added after, may share a name).
    let ours = [
        "connection",
        "date",
        "x-request-id",
        "strict-transport-security",
        if extra.set_cookie.is_some() {
            "set-cookie"
        } else {
            "connection"
        },
    ];
    let add = extra.add.for_status(h.status);
    for (name, _) in &fields {
        let lower = name.to_ascii_lowercase();
        if ours.contains(&lower.as_str())
            || AddHeaders::replaces(add, &lower)
            || lower == "content-length"
            || lower == "transfer-encoding"
        {
            continue;
        }
        assert!(
            !upstream_nominated(buf, &lower),
            "{name} nominated by the upstream's Connection, forwarded: {text:?}"
        );
    }
    let configured = !extra.add.is_empty() && (200..400).contains(&h.status);
    let id = if configured {
        &b"configured-id"[..]
    } else {
        ID
    };
    assert_eq!(values("x-request-id"), vec![id], "{text:?}");
    if let Some(hsts) = extra.hsts {
        assert_eq!(
            values("strict-transport-security"),
            vec![hsts.as_bytes()],
            "{text:?}"
        );
    }
    assert!(count("date") >= 1, "no date: {text:?}");
    // Configured fields: on 2xx/3xx, each once with its value; removed
    // ones gone.
    if configured {
        for (name, value) in CONFIGURED {
            if value.is_empty() {
                assert_eq!(count(name), 0, "{name} not removed: {text:?}");
            } else {
                assert_eq!(values(name), vec![value.as_bytes()], "{text:?}");
            }
        }
    }
    let close = extra.close || h.framing == Framing::Close;
    assert_eq!(calls.close, close);
    if close {
        assert_eq!(values("connection"), vec![&b"close"[..]], "{text:?}");
    } else {
        assert_eq!(count("connection"), 0, "{text:?}");
    }
    let lengths: Vec<Option<u64>> = values("content-length")
        .iter()
        .map(|v| {
            std::str::from_utf8(v.trim_ascii())
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .collect();
    let chunked_last = values("transfer-encoding").last().is_some_and(|v| {
        v.rsplit(|b| *b == b',')
            .next()
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
    });
    match h.framing {
        Framing::Chunked => {
            assert!(
                lengths.is_empty(),
                "Content-Length beside chunked: {text:?}"
            );
            assert!(chunked_last, "{text:?}");
            assert_eq!(count("transfer-encoding"), 1, "{text:?}");
        }
        Framing::Length(n) => {
            assert_eq!(count("transfer-encoding"), 0, "{text:?}");
            assert!(!lengths.is_empty(), "{text:?}");
            assert!(lengths.iter().all(|l| *l == Some(n)), "{text:?}");
        }
        Framing::Close => {
            assert_eq!(count("transfer-encoding"), 0, "{text:?}");
            assert!(lengths.is_empty(), "{text:?}");
            assert!(!h.reusable);
        }
        Framing::Empty => {
            assert!(extra.head_method || h.status == 204 || h.status == 304);
        }
    }
}
