//! Maintenance mode: which requests get the maintenance page. A request
//! routed to a site in maintenance, or proxied to a service in maintenance,
//! is marked by the policy ([`crate::policy::Routed::maintenance`]) unless
//! its client is on `[maintenance] allow`; a marked request still reaches
//! the app when it carries the secret cookie ([`cookie_lets_through`]),
//! checked where the transport admits it.

use crate::config::{IpNet, Maintenance};
use std::net::IpAddr;

/// Whether a request to `site` (proxied to `service`, if any) is under
/// maintenance: either of them is.
pub fn applies(site: &crate::table::Site, service: Option<&crate::pool::Service>) -> bool {
    site.maintenance || service.is_some_and(|s| s.maintenance)
}

/// Whether `client` is on the maintenance allow list (an empty list lets
/// nobody through; an unknown client is not on it).
pub fn allowed(allow: &[IpNet], client: Option<IpAddr>) -> bool {
    client.is_some_and(|ip| allow.iter().any(|n| n.contains(ip)))
}

/// Whether the request's `Cookie` fields (`cookies`, each `a=1; b=2`) hold
/// the maintenance cookie with the configured secret. The value is compared
/// in constant time; with no secret configured, no cookie lets through.
pub fn cookie_lets_through<'a>(
    config: &Maintenance,
    cookies: impl IntoIterator<Item = &'a [u8]>,
) -> bool {
    let Some(secret) = config.secret.as_deref() else {
        return false;
    };
    let name = config.cookie.as_bytes();
    let mut found = false;
    for field in cookies {
        for pair in field.split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            let (n, v) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
            let v = v
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(v);
            // Every cookie of that name is compared: no early exit.
            found |= n == name && constant_time_eq(v, secret.as_bytes());
        }
    }
    found
}

/// Compares `a` and `b` in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secret: Option<&str>) -> Maintenance {
        Maintenance {
            secret: secret.map(str::to_string),
            ..Maintenance::default()
        }
    }

    const SECRET: &str = "s3cret-s3cret-s3cret";

    #[test]
    fn the_secret_cookie_lets_through() {
        let c = config(Some(SECRET));
        let ok = format!("duotone_maintenance={SECRET}");
        assert!(cookie_lets_through(&c, [ok.as_bytes()]));
        let among = format!("a=1; duotone_maintenance={SECRET} ; b=2");
        assert!(cookie_lets_through(&c, [among.as_bytes()]));
        let quoted = format!("duotone_maintenance=\"{SECRET}\"");
        assert!(cookie_lets_through(&c, [quoted.as_bytes()]));
        // HTTP/2 may split cookies over several fields.
        assert!(cookie_lets_through(&c, [&b"a=1"[..], ok.as_bytes()]));
        // Two of the same name: one right is enough.
        let two = format!("duotone_maintenance=x; duotone_maintenance={SECRET}");
        assert!(cookie_lets_through(&c, [two.as_bytes()]));
    }

    #[test]
    fn a_wrong_or_missing_cookie_does_not() {
        let c = config(Some(SECRET));
        for field in [
            "duotone_maintenance=wrong".to_string(),
            format!("duotone_maintenance={SECRET}x"),
            format!("duotone_maintenance={}", &SECRET[1..]),
            format!("other={SECRET}"),
            format!("xduotone_maintenance={SECRET}"),
            format!("duotone_maintenance {SECRET}"),
            String::new(),
        ] {
            assert!(!cookie_lets_through(&c, [field.as_bytes()]), "{field}");
        }
        assert!(!cookie_lets_through(&c, []));
        // No secret configured: nothing passes, not even an empty value.
        let none = config(None);
        assert!(!cookie_lets_through(&none, [&b"duotone_maintenance="[..]]));
        let ok = format!("duotone_maintenance={SECRET}");
        assert!(!cookie_lets_through(&none, [ok.as_bytes()]));
    }

    #[test]
    fn the_allow_list_lets_its_clients_through() {
        let allow = [IpNet::parse("10.0.0.0/8").unwrap()];
        assert!(allowed(&allow, Some("10.1.2.3".parse().unwrap())));
        assert!(allowed(&allow, Some("::ffff:10.1.2.3".parse().unwrap())));
        assert!(!allowed(&allow, Some("11.1.2.3".parse().unwrap())));
        assert!(!allowed(&allow, None));
        assert!(!allowed(&[], Some("10.1.2.3".parse().unwrap())));
    }
}
