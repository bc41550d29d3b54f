//! The PROXY protocol header (HAProxy's, versions 1 and 2) that a load
//! balancer sends before anything else on a connection, naming the client
//! it accepted. [`parse`] is pure and incremental: give it the bytes read
//! so far; it says whether more are needed, or what the header says and
//! how long it is (the bytes after it are the client's: TLS or HTTP).
//! Spec: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest version 1 header, CRLF included (spec §2.1).
const V1_MAX: usize = 107;
/// Version 2's 12-byte signature.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Largest version 2 header accepted (16-byte fixed part and addresses
/// with TLVs; the spec allows 64 KiB, load balancers send well under 1 KiB).
const V2_MAX: usize = 4096;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The client's address (`None` for `UNKNOWN`, `LOCAL` or non-IP
    /// families: the connection's own peer stands).
    pub source: Option<SocketAddr>,
    /// The address the client connected to, when given.
    pub destination: Option<SocketAddr>,
}

/// The outcome of [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// The bytes so far may still become a header: read more.
    Partial,
    /// A header of this many bytes.
    Done(Header, usize),
}

/// Why bytes are not a PROXY protocol header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// They do not start like one (a client speaking HTTP or TLS directly).
    Missing,
    /// They start like one and break its rules.
    Malformed,
}

/// Parses the start of a connection's bytes.
pub fn parse(buf: &[u8]) -> Result<Parsed, Invalid> {
    if buf.starts_with(b"PROXY ") {
        return parse_v1(buf);
    }
    if buf.starts_with(V2_SIG) {
        return parse_v2(buf);
    }
    let n = buf.len();
    if n < V2_SIG.len() && (b"PROXY ".starts_with(buf) || V2_SIG.starts_with(buf)) {
        return Ok(Parsed::Partial);
    }
    Err(Invalid::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, Invalid> {
    let Some(end) = buf.iter().take(V1_MAX).position(|b| *b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(Invalid::Malformed)
        } else {
            Ok(Parsed::Partial)
        };
    };
    let line = buf[..end].strip_suffix(b"\r").ok_or(Invalid::Malformed)?;
    let line = std::str::from_utf8(line).map_err(|_| Invalid::Malformed)?;
    let mut words = line.split(' ');
    let (Some("PROXY"), Some(proto)) = (words.next(), words.next()) else {
        return Err(Invalid::Malformed);
    };
    if proto == "UNKNOWN" {
        // The rest of the line is to be ignored (spec §2.1).
        return Ok(Parsed::Done(
            Header {
                source: None,
                destination: None,
            },
            end + 1,
        ));
    }
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) else {
        return Err(Invalid::Malformed);
    };
    let ip = |s: &str| -> Result<IpAddr, Invalid> {
        match proto {
            "TCP4" => s.parse::<Ipv4Addr>().map(IpAddr::V4),
            "TCP6" => s.parse::<Ipv6Addr>().map(IpAddr::V6),
            _ => return Err(Invalid::Malformed),
        }
        .map_err(|_| Invalid::Malformed)
    };
    let port = |s: &str| -> Result<u16, Invalid> {
        // Decimal without leading zeros (spec §2.1).
        if s.is_empty()
            || (s.len() > 1 && s.starts_with('0'))
            || !s.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(Invalid::Malformed);
        }
        s.parse().map_err(|_| Invalid::Malformed)
    };
    let header = Header {
        source: Some(SocketAddr::new(ip(src)?, port(sport)?)),
        destination: Some(SocketAddr::new(ip(dst)?, port(dport)?)),
    };
    Ok(Parsed::Done(header, end + 1))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, Invalid> {
    let Some(fixed) = buf.get(..16) else {
        return Ok(Parsed::Partial);
    };
    let (ver_cmd, family) = (fixed[12], fixed[13]);
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if ver_cmd >> 4 != 2 {
        return Err(Invalid::Malformed);
    }
    let total = 16 + len;
    if total > V2_MAX {
        return Err(Invalid::Malformed);
    }
    let Some(body) = buf.get(16..total) else {
        return Ok(Parsed::Partial);
    };
    let none = Header {
        source: None,
        destination: None,
    };
    match ver_cmd & 0x0f {
        // LOCAL: the balancer's own connection (health checks); the
        // address block is to be ignored.
        0 => return Ok(Parsed::Done(none, total)),
        1 => {}
        _ => return Err(Invalid::Malformed),
    }
    let header = match family >> 4 {
        // AF_INET: 4 + 4 + 2 + 2.
        1 => {
            let a = body.get(..12).ok_or(Invalid::Malformed)?;
            let ip = |i: usize| IpAddr::from([a[i], a[i + 1], a[i + 2], a[i + 3]]);
            let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
            Header {
                source: Some(SocketAddr::new(ip(0), port(8))),
                destination: Some(SocketAddr::new(ip(4), port(10))),
            }
        }
        // AF_INET6: 16 + 16 + 2 + 2.
        2 => {
            let a = body.get(..36).ok_or(Invalid::Malformed)?;
            let ip = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&a[i..i + 16]);
                IpAddr::from(o)
            };
            let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
            Header {
                source: Some(SocketAddr::new(ip(0), port(32))),
                destination: Some(SocketAddr::new(ip(16), port(34))),
            }
        }
        // AF_UNSPEC or AF_UNIX: no IP address to take.
        0 | 3 => none,
        _ => return Err(Invalid::Malformed),
    };
    Ok(Parsed::Done(header, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(buf: &[u8]) -> (Header, usize) {
        match parse(buf) {
            Ok(Parsed::Done(h, n)) => (h, n),
            other => panic!("{other:?} for {buf:?}"),
        }
    }

    fn sa(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn version_1() {
        let b = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n";
        let (h, n) = done(b);
        assert_eq!(h.source, sa("192.0.2.7:56324"));
        assert_eq!(h.destination, sa("198.51.100.1:443"));
        assert_eq!(&b[n..n + 3], b"GET");
        let (h, _) = done(b"PROXY TCP6 2001:db8::7 2001:db8::1 4711 80\r\n");
        assert_eq!(h.source, sa("[2001:db8::7]:4711"));
        let (h, n) = done(b"PROXY UNKNOWN ffff:f...f 1 2\r\n");
        assert_eq!((h.source, n), (None, 30));
        assert_eq!(done(b"PROXY UNKNOWN\r\n").1, 15);
    }

    #[test]
    fn version_1_refusals() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n"[..],
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443 x\r\n",
            b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",
            b"PROXY TCP6 192.0.2.7 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 065535 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 -1 2\r\n",
            b"PROXY TCP4 192.0.2.7  198.51.100.1 1 2\r\n",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\n",
        ] {
            assert_eq!(
                parse(bad),
                Err(Invalid::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Too long without a line end.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert_eq!(parse(&long), Err(Invalid::Malformed));
    }

    #[test]
    fn partial_and_missing() {
        let full = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n";
        for i in 0..full.len() {
            assert_eq!(parse(&full[..i]), Ok(Parsed::Partial), "{i}");
        }
        let v2 = v2_inet();
        for i in 0..v2.len() {
            assert_eq!(parse(&v2[..i]), Ok(Parsed::Partial), "{i}");
        }
        for not in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"PROXX",
            b"P ",
            b"\r\n\r\n\0\r\nQUIX",
        ] {
            assert_eq!(parse(not), Err(Invalid::Missing), "{not:?}");
        }
    }

    fn v2_inet() -> Vec<u8> {
        let mut b = V2_SIG.to_vec();
        b.extend_from_slice(&[0x21, 0x11, 0, 12 + 5]);
        b.extend_from_slice(&[192, 0, 2, 7, 198, 51, 100, 1]);
        b.extend_from_slice(&56324u16.to_be_bytes());
        b.extend_from_slice(&443u16.to_be_bytes());
        // A TLV (PP2_TYPE_NOOP), skipped.
        b.extend_from_slice(&[0x04, 0, 2, 0, 0]);
        b
    }

    #[test]
    fn version_2() {
        let mut b = v2_inet();
        let len = b.len();
        b.extend_from_slice(b"\x16\x03\x01");
        let (h, n) = done(&b);
        assert_eq!(n, len);
        assert_eq!(h.source, sa("192.0.2.7:56324"));
        assert_eq!(h.destination, sa("198.51.100.1:443"));

        let mut b = V2_SIG.to_vec();
        b.extend_from_slice(&[0x21, 0x21, 0, 36]);
        let src: std::net::Ipv6Addr = "2001:db8::7".parse().unwrap();
        let dst: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        b.extend_from_slice(&src.octets());
        b.extend_from_slice(&dst.octets());
        b.extend_from_slice(&[0x12, 0x67, 0x01, 0xbb]);
        assert_eq!(done(&b).0.source, sa("[2001:db8::7]:4711"));

        // LOCAL (health checks), UNSPEC and unix: no address.
        let mut local = V2_SIG.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            done(&local),
            (
                Header {
                    source: None,
                    destination: None
                },
                16
            )
        );
        let mut unix = V2_SIG.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 216]);
        unix.extend_from_slice(&[0u8; 216]);
        assert_eq!(done(&unix).0.source, None);
    }

    #[test]
    fn version_2_refusals() {
        let mut b = v2_inet();
        b[12] = 0x11; // version 1 in a version 2 header
        assert_eq!(parse(&b), Err(Invalid::Malformed));
        let mut b = v2_inet();
        b[12] = 0x22; // unknown command
        assert_eq!(parse(&b), Err(Invalid::Malformed));
        let mut b = v2_inet();
        b[13] = 0x41; // unknown family
        assert_eq!(parse(&b), Err(Invalid::Malformed));
        let mut b = V2_SIG.to_vec();
        b.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]); // too short for AF_INET
        assert_eq!(parse(&b), Err(Invalid::Malformed));
        let mut b = V2_SIG.to_vec();
        b.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]); // over the size accepted
        assert_eq!(parse(&b), Err(Invalid::Malformed));
    }

    #[test]
    fn never_panics_on_any_prefix_of_noise() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut b = if seed & 1 == 0 {
                v2_inet()
            } else {
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec()
            };
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % b.len();
                b[i] = (seed >> 32) as u8;
            }
            for n in 0..=b.len() {
                let _ = parse(&b[..n]);
            }
        }
    }
}
