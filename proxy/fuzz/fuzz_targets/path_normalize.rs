//! `routes::path::normalize` and `routes::request::check`: not only "does
//! not panic" but the properties routing relies on. The canonical path is
//! what routes match and what is forwarded, so it must be a fixed point,
//! mean the same resource as the received path, and hold nothing an
//! upstream could decode or resolve into another path.
//!
//! Input: one selector byte, then the rest. Selector bit 0 clear: the rest
//! is a path for `normalize`. Set: the rest is split by `\n` into the
//! fields of a `check` head (method, target, host, authority).

#![no_main]

use libfuzzer_sys::fuzz_target;
use routes::path::{has_dot_segment, normalize, PathError};
use routes::request::{check, valid_host, Head, Proto};
use std::borrow::Cow;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel & 1 == 0 {
        if let Ok(path) = std::str::from_utf8(rest) {
            path_properties(path);
        }
    } else {
        check_properties(sel, rest);
    }
});

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` but `%`: unreserved, sub-delims, `:` and `@`.
fn pchar(c: u8) -> bool {
    unreserved(c) || b"!$&'()*+,;=:@".contains(&c)
}

/// Every escape decoded, then runs of `/` merged: the resource a path
/// names to an application that decodes and merges.
fn meaning(path: &str) -> Vec<u8> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                i += 3;
                h << 4 | l
            }
            (c, _, _) => {
                i += 1;
                c
            }
        };
        if !(c == b'/' && out.last() == Some(&b'/')) {
            out.push(c);
        }
    }
    out
}

fn path_properties(path: &str) {
    let result = normalize(path);
    let b = path.as_bytes();
    match &result {
        Err(PathError::NotAbsolute) => assert!(!path.starts_with('/'), "{path:?}"),
        Err(PathError::BadByte) => assert!(
            b.iter()
                .any(|&c| c <= 0x20 || c == 0x7f || c == b'#' || c == b'\\'),
            "BadByte without one: {path:?}"
        ),
        Err(PathError::BadEscape) => assert!(b.contains(&b'%'), "{path:?}"),
        Err(PathError::EncodedControl | PathError::EncodedSlash) => {
            assert!(b.contains(&b'%'), "{path:?}")
        }
        Err(PathError::DotSegment) => {}
        Ok(n) => {
            let n: &str = n;
            assert!(path.starts_with('/'), "accepted {path:?}");
            assert!(n.starts_with('/'), "{path:?} -> {n:?}");
            assert!(!n.contains("//"), "{path:?} -> {n:?}");
            // Escapes only shrink or keep their length; only a raw byte
            // that is not a pchar grows, to its three-byte escape.
            let raw_escaped = b.iter().filter(|&&c| !pchar(c) && c != b'/' && c != b'%');
            assert!(
                n.len() <= path.len() + 2 * raw_escaped.count(),
                "{path:?} -> {n:?} grew"
            );
            // ASCII only, and every raw byte one a path may hold.
            assert!(
                n.bytes().all(|c| pchar(c) || c == b'/' || c == b'%'),
                "{path:?} -> {n:?}"
            );
            assert!(!has_dot_segment(n), "{path:?} -> {n:?}");
            assert!(
                !n.split('/').any(|s| s == "." || s == ".."),
                "{path:?} -> {n:?}"
            );
            // Every escape is well formed, upper case, and of a byte that
            // needs one: no unreserved, control, `/` or `\`.
            let nb = n.as_bytes();
            for (i, _) in n.match_indices('%') {
                let (h, l) = (nb.get(i + 1).copied(), nb.get(i + 2).copied());
                let (Some(h), Some(l)) = (h, l) else {
                    panic!("{path:?} -> {n:?}: cut escape")
                };
                assert!(
                    h.is_ascii_hexdigit() && l.is_ascii_hexdigit(),
                    "{path:?} -> {n:?}: bad escape"
                );
                assert!(
                    !h.is_ascii_lowercase() && !l.is_ascii_lowercase(),
                    "{path:?} -> {n:?}: lower-case escape"
                );
                let v = hex(h).unwrap_or(0) << 4 | hex(l).unwrap_or(0);
                assert!(!unreserved(v), "{path:?} -> {n:?}: escaped unreserved");
                assert!(
                    !(v < 0x20 || v == 0x7f || v == b'/' || v == b'\\'),
                    "{path:?} -> {n:?}: escaped control or slash"
                );
            }
            // Same resource, once decoded and merged.
            assert_eq!(meaning(path), meaning(n), "{path:?} -> {n:?}");
            // A fixed point (borrowed unless it holds escapes, which are
            // always rewritten).
            match normalize(n) {
                Ok(Cow::Borrowed(m)) => assert_eq!(m, n, "not idempotent: {path:?}"),
                Ok(Cow::Owned(m)) if n.contains('%') => {
                    assert_eq!(m, n, "not idempotent: {path:?}")
                }
                other => panic!("{path:?} -> {n:?} -> {other:?}"),
            }
            // Borrowed exactly when nothing changed.
            if let Ok(Cow::Borrowed(_)) = result {
                assert_eq!(n, path);
            }
        }
    }
    // A path of pchars and single slashes is canonical or refused as it is.
    if !path.contains("//") && b.iter().all(|&c| pchar(c) || c == b'/') {
        if let Ok(n) = &result {
            assert_eq!(n, path);
        }
    }
}

fn check_properties(sel: u8, rest: &[u8]) {
    // The transports hand `check` text (Pingora's path refuses raw bytes
    // that are not UTF-8 before it).
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    let mut parts = rest.split('\n');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let host = parts.next();
    let authority = parts.next();
    let proto = match (sel >> 1) & 3 {
        0 => Proto::Http10,
        1 | 3 => Proto::Http11,
        _ => Proto::Http2,
    };
    let host_fields = match host {
        None => 0,
        Some(_) => 1 + usize::from(sel & 0x10 != 0),
    };
    let head = Head {
        proto,
        method,
        target,
        host,
        host_fields,
        authority: if proto == Proto::Http2 {
            authority
        } else {
            None
        },
    };
    match check(&head) {
        Err(r) => {
            assert!(r.status == 400 || r.status == 405, "{r:?}");
            assert!(r.reason.ends_with('\n'), "{r:?}");
            if method.eq_ignore_ascii_case("CONNECT") {
                assert_eq!(r.status, 405);
            }
        }
        Ok(c) => {
            assert!(!method.eq_ignore_ascii_case("CONNECT"));
            assert!(host_fields <= 1, "two Host fields accepted");
            // A fragment is dropped; what is before it must be printable
            // ASCII without the characters browsers always encode.
            let t = target.split('#').next().unwrap_or_default();
            assert!(
                t.bytes().all(|b| (0x21..0x7f).contains(&b)
                    && !matches!(b, b'"' | b'<' | b'>' | b'`' | b'\\')),
                "accepted {t:?}"
            );
            // The canonical path is a fixed point of normalize.
            assert_eq!(normalize(&c.path).as_deref(), Ok(&*c.path), "{t:?}");
            let fwd = c.target();
            assert!(fwd.starts_with(&*c.path));
            assert!(fwd.starts_with('/'));
            assert!(
                fwd.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'#'),
                "{t:?} forwards {fwd:?}"
            );
            assert_eq!(c.query.is_some(), fwd.contains('?'));
            // A borrowed canonical path is the path as received.
            if matches!(c.path, std::borrow::Cow::Borrowed(_)) && !c.absolute {
                assert!(t.starts_with(&*c.path), "{t:?}");
            }
            if t.starts_with('/') {
                assert!(!c.absolute);
                let raw = t.split('?').next().unwrap_or(t);
                assert_eq!(normalize(raw).as_deref(), Ok(&*c.path));
                assert_eq!(c.query, t.split_once('?').map(|(_, q)| q));
            } else {
                assert!(c.absolute, "{t:?} accepted in neither form");
                assert_ne!(proto, Proto::Http2, ":path in absolute form accepted");
            }
            match proto {
                Proto::Http11 => {
                    assert!(host.is_some(), "HTTP/1.1 without Host accepted");
                    assert!(valid_host(c.host), "{:?}", c.host);
                }
                Proto::Http10 => {
                    assert!(c.host.is_empty() || valid_host(c.host), "{:?}", c.host)
                }
                Proto::Http2 => {
                    assert!(c.host.is_empty() || valid_host(c.host), "{:?}", c.host)
                }
            }
            if let Some(h) = host {
                // Whatever host routes, the Host field was checked too.
                assert!(valid_host(h), "Host {h:?} accepted");
            }
        }
    }
}
