//! Request-path normalisation, applied before routing on every transport.
//!
//! Routing matches path prefixes, so the path a route sees must be the path
//! the application will act on. Apps decode percent-escapes (`/%61dmin/` is
//! `/admin/` to Django), resolve dot segments and often merge slashes, so a
//! prefix matched on the raw bytes can be bypassed. [`normalize`] turns a
//! request path into one canonical form, which is both what routes match and
//! what is forwarded upstream ("forward what was matched"):
//!
//! - escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded,
//!   other escapes keep their encoding with upper-case hex (RFC 3986 §6.2.2);
//! - runs of `/` become one `/` (as nginx's `merge_slashes`);
//! - bytes a path may not hold raw (`"<>{}|^` and backquote, `[]`,
//!   non-ASCII) are percent-encoded;
//! - refused (400): a path not starting with `/`, a malformed escape, an
//!   encoded control character (`%00`–`%1F`, `%7F`), an encoded `/` or `\`
//!   or a raw `\` (which some apps read as `/`: it would route one way and
//!   be served another), raw control bytes, spaces or `#`, and `.`/`..`
//!   segments in any spelling (browsers remove
//!   them before sending; an upstream resolving them would serve a path
//!   outside the matched prefix).

use std::borrow::Cow;

/// Why a request path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is not in origin form.
    #[error("the path must start with /")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding in the path")]
    BadEscape,
    /// An escape that decodes to a control character.
    #[error("encoded control characters are not allowed in paths")]
    EncodedControl,
    /// An escape that decodes to `/` or `\`.
    #[error("encoded slashes are not allowed in paths")]
    EncodedSlash,
    /// A raw byte that a request-target may not hold.
    #[error("the path holds a character that must be percent-encoded")]
    BadByte,
    /// A `.` or `..` segment.
    #[error("dot segments are not allowed in paths")]
    DotSegment,
}

/// The canonical form of `path` (the request-target before any `?`), or
/// why it is refused. Borrows when the path is already canonical, the
/// common case, so the request path pays one scan and no allocation.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // One pass for the common case: canonical paths are returned as they
    // are. `seg` follows the current segment: 0 empty, 1 `.`, 2 `..`,
    // 3 anything else.
    let mut canonical = true;
    let mut dots = false;
    let mut prev = 0u8;
    let mut seg = 0u8;
    for &c in b {
        match c {
            b'/' => {
                canonical &= prev != b'/';
                dots |= seg == 1 || seg == 2;
                seg = 0;
            }
            b'.' => seg = if seg < 2 { seg + 1 } else { 3 },
            b'%' => canonical = false,
            0..=0x20 | 0x7f | b'#' | b'\\' => return Err(PathError::BadByte),
            _ => {
                canonical &= is_pchar(c);
                seg = 3;
            }
        }
        prev = c;
    }
    dots |= seg == 1 || seg == 2;
    if canonical {
        return if dots {
            Err(PathError::DotSegment)
        } else {
            Ok(Cow::Borrowed(path))
        };
    }
    let mut out: Vec<u8> = Vec::with_capacity(path.len() + 8);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let (Some(hi), Some(lo)) = (
                b.get(i + 1).and_then(|h| hex(*h)),
                b.get(i + 2).and_then(|l| hex(*l)),
            ) else {
                return Err(PathError::BadEscape);
            };
            let v = hi << 4 | lo;
            match v {
                0..=0x1f | 0x7f => return Err(PathError::EncodedControl),
                b'/' | b'\\' => return Err(PathError::EncodedSlash),
                _ if is_unreserved(v) => out.push(v),
                _ => push_escaped(&mut out, v),
            }
            i += 3;
        } else {
            if c == b'/' && out.last() == Some(&b'/') {
                // Merged.
            } else if is_pchar(c) || c == b'/' {
                out.push(c);
            } else {
                push_escaped(&mut out, c);
            }
            i += 1;
        }
    }
    // Only ASCII was pushed.
    let out = String::from_utf8(out).map_err(|_| PathError::BadByte)?;
    if has_dot_segment(&out) {
        return Err(PathError::DotSegment);
    }
    Ok(Cow::Owned(out))
}

/// Bytes a path segment holds as they are (RFC 3986 `pchar` less `%`):
/// unreserved, sub-delims, `:` and `@`. Others are percent-encoded.
fn is_pchar(c: u8) -> bool {
    PCHAR[usize::from(c)]
}

const PCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
            );
        b += 1;
    }
    t
};

fn push_escaped(out: &mut Vec<u8>, v: u8) {
    out.extend_from_slice(&[b'%', HEX[usize::from(v >> 4)], HEX[usize::from(v & 15)]]);
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// True if `path` has a `.` or `..` segment, written plainly or with
/// percent-encoded dots (`%2e`, `.%2E`, …).
pub fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(is_dot_segment)
}

fn is_dot_segment(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() || b.len() > 6 {
        return false;
    }
    let mut dots = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'.' {
            i += 1;
        } else if b[i] == b'%'
            && b.get(i + 1) == Some(&b'2')
            && matches!(b.get(i + 2), Some(b'e' | b'E'))
        {
            i += 3;
        } else {
            return false;
        }
        dots += 1;
    }
    dots <= 2
}

#[cfg(test)]
mod tests {
    use super::{has_dot_segment, normalize, PathError};

    #[test]
    fn dot_segments_in_any_spelling_are_found() {
        for p in [
            "/public/../admin/",
            "/..",
            "/a/./b",
            "/a/.",
            "/%2e%2e/admin",
            "/a/.%2E/b",
            "/a/%2E./b",
            "/a/%2e/b",
        ] {
            assert!(has_dot_segment(p), "{p}");
            assert_eq!(normalize(p), Err(PathError::DotSegment), "{p}");
        }
    }

    #[test]
    fn ordinary_paths_pass_unchanged_and_borrowed() {
        for p in [
            "/",
            "/static/app.3f2a9c81b7d4.css",
            "/a/.well-known/x",
            "/.well-known/acme-challenge/tok",
            "/a/...",
            "/a/..b",
            "/a/b..",
            "/a;b=c/d",
            "/a:b@c!$&'()*+,=",
        ] {
            assert!(!has_dot_segment(p), "{p}");
            let n = normalize(p).unwrap_or_else(|e| panic!("{p}: {e}"));
            assert!(matches!(n, std::borrow::Cow::Borrowed(_)), "{p}");
            assert_eq!(n, p);
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_slashes_merged() {
        for (raw, want) in [
            ("/%61dmin/x", "/admin/x"),
            ("/%41DMIN", "/ADMIN"),
            ("/a%2dmin/%7e%5F", "/a-min/~_"),
            ("//admin//x", "/admin/x"),
            ("/admin///", "/admin/"),
            ("/%2e%2e%2e", "/..."),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/%c3%a9", "/%C3%A9"),
            ("/%25", "/%25"),
            ("/%2561dmin", "/%2561dmin"),
            ("/a<\">", "/a%3C%22%3E"),
            ("/{x}|^`[]", "/%7Bx%7D%7C%5E%60%5B%5D"),
            ("/caf\u{e9}", "/caf%C3%A9"),
        ] {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn hostile_paths_are_refused() {
        for (raw, why) in [
            ("admin", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("http://a/admin", PathError::NotAbsolute),
            ("/%", PathError::BadEscape),
            ("/%6", PathError::BadEscape),
            ("/%zz", PathError::BadEscape),
            ("/%6g", PathError::BadEscape),
            ("/a%00b", PathError::EncodedControl),
            ("/a%0d%0aX:1", PathError::EncodedControl),
            ("/a%7f", PathError::EncodedControl),
            ("/admin%2fx", PathError::EncodedSlash),
            ("/admin%2Fx", PathError::EncodedSlash),
            ("/admin%5cx", PathError::EncodedSlash),
            ("/a b", PathError::BadByte),
            ("/a\tb", PathError::BadByte),
            ("/a\u{0}b", PathError::BadByte),
            ("/a#b", PathError::BadByte),
            ("/a\u{7f}", PathError::BadByte),
            ("/admin\\x", PathError::BadByte),
            ("/%2e%2e/admin", PathError::DotSegment),
            ("//..//admin", PathError::DotSegment),
            ("/%2E", PathError::DotSegment),
            ("/a/%2e%2E", PathError::DotSegment),
        ] {
            assert_eq!(normalize(raw), Err(why), "{raw:?}");
        }
    }

    #[test]
    fn normalizing_is_idempotent() {
        for raw in ["/%61dmin//x", "/a%3fb", "/%c3%a9//%7E", "/x/%41%42%43"] {
            let once = normalize(raw).map(|c| c.into_owned());
            let once = once.unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(normalize(&once).as_deref(), Ok(once.as_str()), "{raw}");
        }
    }
}
