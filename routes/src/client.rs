//! Who the client is: the connection's peer, or, when the peer is one of
//! `server.trusted_proxies`, the address its `X-Forwarded-For` names (the
//! rightmost one not itself trusted, as nginx's `real_ip_recursive on`).
//! One pure function ([`resolve`]) that the lane (HTTP/1.1 and HTTP/2)
//! and Pingora's path call; allow lists, the access log and `X-Real-IP`
//! use its answer.

use crate::config::IpNet;
use std::net::{IpAddr, SocketAddr};

/// The client as [`resolve`] decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The real client address (IPv4-mapped IPv6 shown as IPv4).
    pub ip: IpAddr,
    /// The peer is a trusted proxy: its `X-Forwarded-For` is kept and
    /// extended, its `X-Forwarded-Proto`/`-Host` kept.
    pub via_proxy: bool,
}

/// True when `ip` is inside one of `trusted`.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(ip))
}

/// Decides the client of a request from its connection's `peer`, the
/// `trusted` proxies and the request's `X-Forwarded-For` field values
/// (`xff`, in order; only read when the peer is trusted). Walking the
/// list from the right, every trusted address is skipped; the first
/// untrusted one is the client. When all are trusted, the leftmost is; an
/// entry that is not an address stops the walk at the last good one.
pub fn resolve<'a, I>(peer: IpAddr, trusted: &[IpNet], xff: I) -> Client
where
    I: IntoIterator<Item = &'a [u8]>,
    I::IntoIter: DoubleEndedIterator,
{
    let peer = peer.to_canonical();
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return Client {
            ip: peer,
            via_proxy: false,
        };
    }
    let mut ip = peer;
    'fields: for value in xff.into_iter().rev() {
        for entry in value.rsplit(|b| *b == b',') {
            let entry = entry.trim_ascii();
            if entry.is_empty() {
                continue;
            }
            let Some(addr) = parse_addr(entry) else {
                break 'fields;
            };
            ip = addr;
            if !is_trusted(addr, trusted) {
                break 'fields;
            }
        }
    }
    Client {
        ip,
        via_proxy: true,
    }
}

/// An address as X-Forwarded-For entries write it: `192.0.2.1`,
/// `2001:db8::1`, `[2001:db8::1]`, with or without a port.
fn parse_addr(s: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(s).ok()?;
    let ip = match s.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => match s.parse::<SocketAddr>() {
            Ok(sa) => sa.ip(),
            Err(_) => s.strip_prefix('[')?.strip_suffix(']')?.parse().ok()?,
        },
    };
    Some(ip.to_canonical())
}

/// Appends the `X-Forwarded-For` value to send upstream for a request from
/// a trusted proxy: the received values joined with `, `, then the peer.
pub fn extend_forwarded_for<'a>(
    xff: impl IntoIterator<Item = &'a [u8]>,
    peer: &[u8],
    out: &mut Vec<u8>,
) {
    for v in xff {
        let v = v.trim_ascii();
        if !v.is_empty() {
            out.extend_from_slice(v);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(peer);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| IpNet::parse(s).unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn real(peer: &str, trusted: &[&str], xff: &[&str]) -> Client {
        let xff: Vec<&[u8]> = xff.iter().map(|s| s.as_bytes()).collect();
        resolve(ip(peer), &nets(trusted), xff)
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let c = real("203.0.113.9", &["10.0.0.0/8"], &["1.2.3.4"]);
        assert_eq!(c.ip, ip("203.0.113.9"));
        assert!(!c.via_proxy);
        assert_eq!(real("10.0.0.1", &[], &["1.2.3.4"]).ip, ip("10.0.0.1"));
    }

    #[test]
    fn the_rightmost_untrusted_address_of_a_trusted_chain() {
        let t = &["10.0.0.0/8", "127.0.0.1"];
        // client, then two of our proxies.
        let c = real("127.0.0.1", t, &["198.51.100.7, 10.1.1.1", "10.2.2.2"]);
        assert_eq!(c.ip, ip("198.51.100.7"));
        assert!(c.via_proxy);
        // A forged entry left of the real client is never used.
        let c = real("10.0.0.5", t, &["6.6.6.6, 198.51.100.7"]);
        assert_eq!(c.ip, ip("198.51.100.7"));
        // All trusted: the leftmost.
        assert_eq!(
            real("10.0.0.5", t, &["10.9.9.9, 10.8.8.8"]).ip,
            ip("10.9.9.9")
        );
        // No X-Forwarded-For: the peer.
        assert_eq!(real("10.0.0.5", t, &[]).ip, ip("10.0.0.5"));
        // Garbage stops the walk at the last good address.
        assert_eq!(
            real("10.0.0.5", t, &["1.1.1.1, junk, 10.3.3.3"]).ip,
            ip("10.3.3.3")
        );
        assert_eq!(real("10.0.0.5", t, &["junk"]).ip, ip("10.0.0.5"));
        // Empty entries are skipped.
        assert_eq!(real("10.0.0.5", t, &[" , 192.0.2.1 ,"]).ip, ip("192.0.2.1"));
    }

    #[test]
    fn ipv6_ports_and_mapped_addresses() {
        let t = &["::1", "fd00::/8", "127.0.0.0/8"];
        assert_eq!(real("::1", t, &["2001:db8::7"]).ip, ip("2001:db8::7"));
        assert_eq!(
            real("::1", t, &["[2001:db8::7]:4711, fd00::2"]).ip,
            ip("2001:db8::7")
        );
        assert_eq!(real("::1", t, &["[2001:db8::8]"]).ip, ip("2001:db8::8"));
        assert_eq!(
            real("::ffff:127.0.0.1", t, &["192.0.2.1:80"]).ip,
            ip("192.0.2.1")
        );
        assert_eq!(real("::1", t, &["::ffff:192.0.2.3"]).ip, ip("192.0.2.3"));
    }

    #[test]
    fn chains_are_extended_with_the_peer() {
        let mut out = Vec::new();
        extend_forwarded_for(
            [&b"1.1.1.1, 10.0.0.1"[..], b" 10.0.0.2 "],
            b"127.0.0.1",
            &mut out,
        );
        assert_eq!(out, b"1.1.1.1, 10.0.0.1, 10.0.0.2, 127.0.0.1");
        out.clear();
        extend_forwarded_for([], b"::1", &mut out);
        assert_eq!(out, b"::1");
    }
}
