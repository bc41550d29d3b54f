//! Header names the lane acts on, recognised in one step: a switch on the
//! name's length, then at most two case-insensitive comparisons. Every
//! header of every request and response passes through here, so this
//! replaces chains of up to a dozen comparisons per header.

/// A header name the lane treats specially, or [`Field::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `host`
    Host,
    /// `content-length`
    ContentLength,
    /// `transfer-encoding`
    TransferEncoding,
    /// `connection`
    Connection,
    /// `keep-alive`
    KeepAlive,
    /// `proxy-connection`
    ProxyConnection,
    /// `upgrade`
    Upgrade,
    /// `expect`
    Expect,
    /// `te`
    Te,
    /// `trailer`
    Trailer,
    /// `x-forwarded-for`
    XForwardedFor,
    /// `x-forwarded-proto`
    XForwardedProto,
    /// `x-forwarded-host`
    XForwardedHost,
    /// `x-forwarded-port`
    XForwardedPort,
    /// `x-real-ip`
    XRealIp,
    /// `forwarded`
    Forwarded,
    /// `x-request-id`
    XRequestId,
    /// `date`
    Date,
    /// `strict-transport-security`
    StrictTransportSecurity,
    /// `content-type` (responses: an event stream is never buffered)
    ContentType,
    /// `x-accel-buffering` (responses: `no` turns buffering off; not
    /// passed on, as nginx hides it)
    XAccelBuffering,
    /// Any other name.
    Other,
}

impl Field {
    /// The field `name` names, in any case.
    pub fn of(name: &str) -> Field {
        use Field::*;
        let candidates: &[(&[u8], Field)] = match name.len() {
            2 => &[(b"te", Te)],
            4 => &[(b"host", Host), (b"date", Date)],
            6 => &[(b"expect", Expect)],
            7 => &[(b"upgrade", Upgrade), (b"trailer", Trailer)],
            9 => &[(b"forwarded", Forwarded), (b"x-real-ip", XRealIp)],
            10 => &[(b"connection", Connection), (b"keep-alive", KeepAlive)],
            12 => &[
                (b"x-request-id", XRequestId),
                (b"content-type", ContentType),
            ],
            14 => &[(b"content-length", ContentLength)],
            15 => &[(b"x-forwarded-for", XForwardedFor)],
            16 => &[
                (b"x-forwarded-host", XForwardedHost),
                (b"x-forwarded-port", XForwardedPort),
                (b"proxy-connection", ProxyConnection),
            ],
            17 => &[
                (b"transfer-encoding", TransferEncoding),
                (b"x-forwarded-proto", XForwardedProto),
                (b"x-accel-buffering", XAccelBuffering),
            ],
            25 => &[(b"strict-transport-security", StrictTransportSecurity)],
            _ => return Other,
        };
        candidates
            .iter()
            .find(|(n, _)| eq_lower(name.as_bytes(), n))
            .map_or(Other, |(_, f)| *f)
    }

    /// Hop-by-hop fields (RFC 9110 §7.6.1) and the request framing ones a
    /// proxy must not forward as received.
    pub fn hop_by_hop(self) -> bool {
        use Field::*;
        matches!(
            self,
            Connection | KeepAlive | ProxyConnection | Upgrade | Te | Trailer | TransferEncoding
        )
    }

    /// Request fields Duotone sets itself as the edge (dropped when received).
    pub fn forwarding(self) -> bool {
        use Field::*;
        matches!(
            self,
            XForwardedFor
                | XForwardedProto
                | XForwardedHost
                | XForwardedPort
                | XRealIp
                | Forwarded
                | XRequestId
        )
    }
}

/// Reads a Connection field's value: `Some(true)` when it asks to close,
/// `Some(false)` for `keep-alive` or nothing; `None` when it names other
/// fields, which the lane does not remove (the caller gives the message up).
pub fn connection_close(value: &[u8]) -> Option<bool> {
    let mut close = false;
    for token in value.split(|b| *b == b',') {
        let t = token.trim_ascii();
        if t.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if !t.eq_ignore_ascii_case(b"keep-alive") && !t.is_empty() {
            return None;
        }
    }
    Some(close)
}

/// `name` (token characters, as every parsed field name is) equals
/// `lower` (lower-case letters and `-`, same length) in any case, eight
/// bytes at a time. Setting bit 5 lower-cases a letter, keeps `-`, and
/// maps no other token character onto a letter or `-`.
fn eq_lower(name: &[u8], lower: &[u8]) -> bool {
    const CASE: u64 = 0x2020_2020_2020_2020;
    let (words, rest) = name.as_chunks::<8>();
    let (lower_words, lower_rest) = lower.as_chunks::<8>();
    words.len() == lower_words.len()
        && rest.len() == lower_rest.len()
        && words
            .iter()
            .zip(lower_words)
            .all(|(a, b)| u64::from_ne_bytes(*a) | CASE == u64::from_ne_bytes(*b))
        && rest.iter().zip(lower_rest).all(|(a, b)| a | 0x20 == *b)
}

#[cfg(test)]
mod tests {
    use super::{connection_close, Field};

    #[test]
    fn the_forwarding_fields_are_the_policys() {
        for name in routes::forwarded::NAMES {
            assert!(Field::of(name).forwarding(), "{name}");
            assert!(Field::of(&name.to_ascii_uppercase()).forwarding(), "{name}");
        }
        for name in ["x-forwarded-prot", "host", "cookie", "x-forwarded"] {
            assert!(!Field::of(name).forwarding(), "{name}");
        }
    }

    #[test]
    fn connection_values() {
        assert_eq!(connection_close(b"close"), Some(true));
        assert_eq!(connection_close(b"Keep-Alive"), Some(false));
        assert_eq!(connection_close(b" keep-alive , CLOSE"), Some(true));
        assert_eq!(connection_close(b""), Some(false));
        assert_eq!(connection_close(b"close, x-secret"), None);
        assert_eq!(connection_close(b"upgrade"), None);
    }

    #[test]
    fn every_name_is_recognised_in_any_case_and_nothing_else() {
        let all = [
            ("host", Field::Host),
            ("content-length", Field::ContentLength),
            ("transfer-encoding", Field::TransferEncoding),
            ("connection", Field::Connection),
            ("keep-alive", Field::KeepAlive),
            ("proxy-connection", Field::ProxyConnection),
            ("upgrade", Field::Upgrade),
            ("expect", Field::Expect),
            ("te", Field::Te),
            ("trailer", Field::Trailer),
            ("x-forwarded-for", Field::XForwardedFor),
            ("x-forwarded-proto", Field::XForwardedProto),
            ("x-forwarded-host", Field::XForwardedHost),
            ("x-real-ip", Field::XRealIp),
            ("forwarded", Field::Forwarded),
            ("x-request-id", Field::XRequestId),
            ("date", Field::Date),
            ("strict-transport-security", Field::StrictTransportSecurity),
            ("content-type", Field::ContentType),
            ("x-accel-buffering", Field::XAccelBuffering),
        ];
        for (name, field) in all {
            assert_eq!(Field::of(name), field, "{name}");
            assert_eq!(Field::of(&name.to_ascii_uppercase()), field, "{name}");
        }
        // Same length, one byte apart (incl. `_` and `.` where `-` is).
        for other in [
            "",
            "t",
            "hosts",
            "user-agent",
            "x-forwarded-fox",
            "x_forwarded_for",
            "x.real.ip",
            "content-typf",
            "x_accel_buffering",
            "dat",
            "hosT1",
            "strict-transport-securitz",
        ] {
            assert_eq!(Field::of(other), Field::Other, "{other}");
        }
    }
}
