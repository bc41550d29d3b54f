//! Response header fields a site or route adds (`headers = { … }`): which
//! names and values are accepted, how a route's list overrides its site's,
//! and which responses get them. Every transport (the lane's HTTP/1.1 and
//! HTTP/2, Pingora's path; proxied, static and redirect answers) applies
//! [`AddHeaders`] through [`AddHeaders::for_status`], so the rule is here once.

use std::sync::Arc;

/// Fields an edge may not set on a response: the hop-by-hop ones (RFC 9110
/// §7.6.1) and the ones that frame the message, which the transport owns.
const REFUSED: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "date",
];

/// Checks a configured header name: an RFC 9110 token, not hop-by-hop or
/// framing. Returns the lowercase name.
pub fn check_name(name: &str) -> Result<String, String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("{name:?} is not a valid header name"));
    }
    let lower = name.to_ascii_lowercase();
    if REFUSED.contains(&lower.as_str()) {
        return Err(format!(
            "{name:?} is a hop-by-hop or framing field the edge sets itself; it cannot be configured"
        ));
    }
    if lower == "strict-transport-security" {
        return Err("set Strict-Transport-Security with the site's `hsts` key".into());
    }
    Ok(lower)
}

/// Checks a configured header value: visible ASCII, spaces and tabs inside
/// (no control characters, no line breaks, no leading or trailing space).
/// An empty value removes the field from responses.
pub fn check_value(value: &str) -> Result<(), String> {
    if value.trim_matches([' ', '\t']) != value {
        return Err(format!("{value:?}: leading or trailing whitespace"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_graphic() || b == b' ' || b == b'\t')
    {
        return Err(format!(
            "{value:?}: a header value must be printable ASCII without line breaks"
        ));
    }
    Ok(())
}

/// The fields a route's responses get: its site's `headers` with the
/// route's on top (a route value replaces the site's for the same name).
/// Each configured field replaces any field of that name the response
/// already has (from the upstream or the file server); an empty value only
/// removes it. Cheap to clone; empty for most routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddHeaders(Option<Arc<[Field]>>);

/// One configured field: lowercase name and value.
pub type Field = (Box<str>, Box<str>);

impl AddHeaders {
    /// Nothing configured.
    pub const NONE: AddHeaders = AddHeaders(None);

    /// Merges a site's and a route's checked lists (lowercase names).
    pub fn merge(site: &[(String, String)], route: &[(String, String)]) -> AddHeaders {
        let mut all: Vec<Field> = Vec::new();
        for (n, v) in site.iter().chain(route) {
            all.retain(|(m, _)| **m != **n);
            all.push((n.as_str().into(), v.as_str().into()));
        }
        if all.is_empty() {
            AddHeaders(None)
        } else {
            AddHeaders(Some(all.into()))
        }
    }

    /// True when nothing is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The fields for a response with `status`, as nginx's `add_header`
    /// (without `always`) does: on 2xx and 3xx responses only, so an
    /// error answered by the edge or the upstream is left as it is.
    pub fn for_status(&self, status: u16) -> &[Field] {
        match &self.0 {
            Some(list) if (200..400).contains(&status) => list,
            _ => &[],
        }
    }

    /// True when `name` (any case) is one of `fields` and so is replaced.
    pub fn replaces(fields: &[Field], name: &str) -> bool {
        fields.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn names() {
        assert_eq!(check_name("X-Frame-Options").unwrap(), "x-frame-options");
        assert_eq!(
            check_name("Access-Control-Allow-Origin").unwrap(),
            "access-control-allow-origin"
        );
        for bad in ["", "X Frame", "X:Y", "é", "a\r\nb"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for hop in [
            "Connection",
            "keep-alive",
            "Transfer-Encoding",
            "Upgrade",
            "TE",
            "Trailer",
            "Proxy-Connection",
            "Content-Length",
        ] {
            assert!(check_name(hop).unwrap_err().contains("hop-by-hop"), "{hop}");
        }
        assert!(check_name("Strict-Transport-Security").is_err());
    }

    #[test]
    fn values() {
        assert!(check_value("DENY").is_ok());
        assert!(check_value("default-src 'self'; img-src *").is_ok());
        assert!(check_value("").is_ok());
        for bad in ["a\r\nX-Evil: 1", "a\nb", "\0", " x", "x ", "ünï"] {
            assert!(check_value(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn route_values_override_the_sites() {
        let site = pairs(&[("x-frame-options", "DENY"), ("x-a", "site")]);
        let route = pairs(&[("x-a", "route"), ("access-control-allow-origin", "*")]);
        let h = AddHeaders::merge(&site, &route);
        let got: Vec<(&str, &str)> = h
            .for_status(200)
            .iter()
            .map(|(n, v)| (&**n, &**v))
            .collect();
        assert_eq!(
            got,
            [
                ("x-frame-options", "DENY"),
                ("x-a", "route"),
                ("access-control-allow-origin", "*")
            ]
        );
        assert!(AddHeaders::merge(&[], &[]).is_empty());
    }

    #[test]
    fn only_2xx_and_3xx_responses_get_them() {
        let h = AddHeaders::merge(&pairs(&[("x-a", "1")]), &[]);
        for s in [200, 204, 206, 301, 304, 308] {
            assert_eq!(h.for_status(s).len(), 1, "{s}");
        }
        for s in [101, 400, 403, 404, 500, 502, 504] {
            assert!(h.for_status(s).is_empty(), "{s}");
        }
        assert!(AddHeaders::replaces(h.for_status(200), "X-A"));
        assert!(!AddHeaders::replaces(h.for_status(200), "x-b"));
    }
}
