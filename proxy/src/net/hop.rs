//! Hop-by-hop fields of an upstream response (RFC 9110 §7.6.1): what a
//! proxy removes before relaying a response, on every path (the lane's
//! HTTP/1.1 and HTTP/2 clients, and Pingora's path).
//!
//! Removed: `Connection` and every field it nominates, and the standard
//! hop-by-hop fields `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer` and
//! `Upgrade` (kept only on a 101, where an upgrade is under way).
//! `Transfer-Encoding` belongs to the framing, which each path rewrites for
//! its client. A nomination of a framing field (`Content-Length`,
//! `Transfer-Encoding`) is ignored: the body is relayed by that framing, so
//! removing it would make the client read the body differently.

/// The standard hop-by-hop fields (lower case), besides the ones a
/// `Connection` field nominates: removed from responses (`upgrade` stays
/// on a 101) and from the requests the buffering exchange sends.
pub const HOP_FIELDS: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// What one `Connection` field value says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// It asks to close the connection after this message.
    pub close: bool,
    /// It nominates fields other than `keep-alive` and `upgrade` (which are
    /// removed anyway), so those must be looked for and removed.
    pub nominates: bool,
}

/// Reads a `Connection` field value (a comma-separated token list, any case).
pub fn options(value: &[u8]) -> Options {
    let mut o = Options::default();
    for token in tokens(value) {
        if token.eq_ignore_ascii_case(b"close") {
            o.close = true;
        } else if !token.eq_ignore_ascii_case(b"keep-alive")
            && !token.eq_ignore_ascii_case(b"upgrade")
        {
            o.nominates = true;
        }
    }
    o
}

/// True when the `Connection` value `value` nominates the field `name`
/// (any case) and that field may be removed (never a framing field).
pub fn nominated(value: &[u8], name: &[u8]) -> bool {
    !framing(name) && tokens(value).any(|t| t.eq_ignore_ascii_case(name))
}

/// The non-empty tokens of a comma-separated list, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// `Content-Length` or `Transfer-Encoding`, in any case.
fn framing(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"transfer-encoding")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_options() {
        let o = |v: &[u8]| options(v);
        assert_eq!(o(b""), Options::default());
        assert_eq!(o(b"keep-alive"), Options::default());
        assert_eq!(o(b" Keep-Alive , UPGRADE"), Options::default());
        assert_eq!(
            o(b"close"),
            Options {
                close: true,
                nominates: false
            }
        );
        assert_eq!(
            o(b"close, X-Secret"),
            Options {
                close: true,
                nominates: true
            }
        );
        assert_eq!(
            o(b"keep-alive, X-A, x-b"),
            Options {
                close: false,
                nominates: true
            }
        );
        assert!(o(b",,x,").nominates);
    }

    #[test]
    fn nominations_match_any_case_and_spare_framing_fields() {
        assert!(nominated(b"keep-alive, X-A, x-b", b"x-a"));
        assert!(nominated(b"keep-alive, X-A, x-b", b"X-B"));
        assert!(nominated(b"X-Secret", b"x-secret"));
        assert!(!nominated(b"keep-alive, X-A, x-b", b"x-c"));
        assert!(!nominated(b"x-ab", b"x-a"));
        assert!(!nominated(b"x-a", b"x-ab"));
        assert!(!nominated(b"", b"x-a"));
        assert!(!nominated(
            b"Content-Length, Transfer-Encoding",
            b"content-length"
        ));
        assert!(!nominated(
            b"Content-Length, Transfer-Encoding",
            b"Transfer-Encoding"
        ));
    }
}
