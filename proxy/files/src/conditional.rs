//! Validators (ETag, Last-Modified) and conditional-request evaluation
//! (RFC 9110 §13.2.2 order: If-Match, If-Unmodified-Since, If-None-Match,
//! If-Modified-Since; If-Range is evaluated by the caller via [`if_range_holds`]).

use std::fs::Metadata;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_UNMODIFIED_SINCE};
use http::{HeaderMap, Method};

use crate::encoding::Coding;

/// The validators of one representation (a file or one of its sidecars).
#[derive(Debug, Clone)]
pub(crate) struct Validators {
    /// Strong entity tag, quoted: `"<16 hex>"` or `"<16 hex>-br"`.
    pub etag: String,
    /// Modification time truncated to whole seconds, if representable.
    pub modified: Option<SystemTime>,
}

impl Validators {
    /// Derives validators from size, mtime (with nanos) and inode, plus the
    /// content-coding suffix so every representation has its own tag.
    pub fn new(meta: &Metadata, coding: Coding) -> Self {
        let since = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(UNIX_EPOCH).ok());
        let (secs, nanos) = since.map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()));
        let mut h = Fnv::default();
        h.write(meta.len());
        h.write(secs);
        h.write(u64::from(nanos));
        h.write(inode(meta));
        let etag = match coding.etag_suffix() {
            Some(sfx) => format!("\"{:016x}-{sfx}\"", h.0),
            None => format!("\"{:016x}\"", h.0),
        };
        let modified = since.map(|d| UNIX_EPOCH + std::time::Duration::from_secs(d.as_secs()));
        Validators { etag, modified }
    }

    /// `Last-Modified` header value.
    pub fn last_modified(&self) -> Option<String> {
        self.modified.map(httpdate::fmt_http_date)
    }
}

#[cfg(unix)]
fn inode(meta: &Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.ino()
}

#[cfg(not(unix))]
fn inode(_meta: &Metadata) -> u64 {
    0
}

/// FNV-1a, 64-bit: stable across Rust versions (unlike `DefaultHasher`).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, v: u64) {
        for b in v.to_le_bytes() {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Result of evaluating the preconditions.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Serve normally (ranges may still apply).
    Proceed,
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    PreconditionFailed,
}

/// Evaluates If-Match / If-Unmodified-Since / If-None-Match / If-Modified-Since.
pub(crate) fn evaluate(method: &Method, headers: &HeaderMap, v: &Validators) -> Outcome {
    let get_or_head = method == Method::GET || method == Method::HEAD;
    if let Some(list) = joined(headers, IF_MATCH) {
        if !matches_list(&list, &v.etag, true) {
            return Outcome::PreconditionFailed;
        }
    } else if let (Some(since), Some(m)) = (date(headers, IF_UNMODIFIED_SINCE), v.modified) {
        if m > since {
            return Outcome::PreconditionFailed;
        }
    }
    if let Some(list) = joined(headers, IF_NONE_MATCH) {
        if matches_list(&list, &v.etag, false) {
            return if get_or_head {
                Outcome::NotModified
            } else {
                Outcome::PreconditionFailed
            };
        }
    } else if get_or_head {
        if let (Some(since), Some(m)) = (date(headers, IF_MODIFIED_SINCE), v.modified) {
            if m <= since {
                return Outcome::NotModified;
            }
        }
    }
    Outcome::Proceed
}

/// If-Range: an entity tag must match strongly, a date must equal
/// Last-Modified exactly; anything else (weak tag, bad date) fails.
pub(crate) fn if_range_holds(value: &str, v: &Validators) -> bool {
    let value = value.trim();
    if value.starts_with('"') {
        return value == v.etag;
    }
    if value.starts_with("W/") {
        return false;
    }
    match (httpdate::parse_http_date(value), v.modified) {
        (Ok(d), Some(m)) => d == m,
        _ => false,
    }
}

/// All values of a header joined with `,` (list headers may repeat).
fn joined(headers: &HeaderMap, name: http::HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for value in headers.get_all(name) {
        let s = value.to_str().unwrap_or("");
        match &mut out {
            Some(acc) => {
                acc.push(',');
                acc.push_str(s);
            }
            None => out = Some(s.to_owned()),
        }
    }
    out
}

/// A single-valued date header; invalid dates are ignored (RFC 9110).
fn date(headers: &HeaderMap, name: http::HeaderName) -> Option<SystemTime> {
    let value = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(value.trim()).ok()
}

/// Does an entity-tag list (or `*`) match `etag`? Strong comparison refuses
/// weak tags on either side; weak comparison ignores the `W/` prefix.
/// A malformed list matches nothing beyond the tags parsed before the error.
pub(crate) fn matches_list(list: &str, etag: &str, strong: bool) -> bool {
    if list.trim() == "*" {
        return true;
    }
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return false;
        }
        let weak = rest.starts_with("W/");
        if weak {
            rest = &rest[2..];
        }
        let Some(body) = rest.strip_prefix('"') else {
            return false;
        };
        let Some(end) = body.find('"') else {
            return false;
        };
        let tag = &rest[..end + 2];
        if tag == etag && !(strong && weak) {
            return true;
        }
        rest = &body[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_lists() {
        let e = "\"abc\"";
        assert!(matches_list("\"abc\"", e, false));
        assert!(matches_list("W/\"abc\"", e, false));
        assert!(!matches_list("W/\"abc\"", e, true));
        assert!(matches_list("\"x\", W/\"abc\"", e, false));
        assert!(matches_list("\"x\",\"abc\"", e, true));
        assert!(matches_list("*", e, true));
        assert!(!matches_list("\"abcd\"", e, false));
        assert!(!matches_list("abc", e, false));
        assert!(!matches_list("", e, false));
        assert!(!matches_list("\"x\", \"abc", e, false));
    }
}
