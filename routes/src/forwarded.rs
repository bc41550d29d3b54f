//! The forwarding fields the edge sets on every proxied request, written
//! once for every transport: X-Forwarded-For, X-Real-IP,
//! X-Forwarded-Proto, X-Forwarded-Host, X-Forwarded-Port and X-Request-Id.
//! From a client they are replaced: Duotone is the edge. From a trusted
//! proxy (`server.trusted_proxies`), its X-Forwarded-For is kept and
//! extended with the peer, its X-Forwarded-Proto, -Host and -Port are
//! kept, and X-Real-IP
//! names the real client ([`crate::client::resolve`]). A transport drops
//! every field named in [`NAMES`] from what it forwards, then lets
//! [`write`] add the edge's own through its [`Fields`].

/// The request fields the edge sets itself (and `Forwarded`, which it
/// drops): never forwarded as received.
pub const NAMES: [&str; 7] = [
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "forwarded",
    "x-request-id",
];

/// Where a transport puts the fields (an HTTP/1.1 head being written, a
/// header map).
pub trait Fields {
    /// Adds field `name` with the value `value` writes into the buffer
    /// it is given.
    fn add(&mut self, name: &'static str, value: impl FnOnce(&mut Vec<u8>));
}

/// What a request from a trusted proxy said about the client.
#[derive(Debug, Default, Clone)]
pub struct Relayed<'a> {
    /// Its X-Forwarded-For values, in order.
    pub xff: Vec<&'a [u8]>,
    /// Its first X-Forwarded-Proto.
    pub proto: Option<&'a [u8]>,
    /// Its first X-Forwarded-Host.
    pub host: Option<&'a [u8]>,
    /// Its first X-Forwarded-Port.
    pub port: Option<&'a [u8]>,
}

/// The connection and request facts the fields are made of.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The client connection is TLS.
    pub tls: bool,
    /// The host the request was routed by (Host or `:authority`).
    pub host: &'a [u8],
    /// The connection's peer, formatted (empty when unknown).
    pub peer: &'a [u8],
    /// The real client, formatted: the peer, or for a request from a
    /// trusted proxy the client it names.
    pub client: &'a [u8],
    /// The request id sent upstream.
    pub request_id: &'a [u8],
    /// The port of the listener the client connected to (0: unknown, and
    /// no X-Forwarded-Port is written unless a trusted proxy sent one).
    pub port: u16,
}

/// Adds the forwarding fields for a request with `facts` to `out`;
/// `relayed` is what a trusted proxy said (None from any other peer).
#[inline]
pub fn write(out: &mut impl Fields, facts: &Facts<'_>, relayed: Option<&Relayed<'_>>) {
    let own: &[u8] = if facts.tls { b"https" } else { b"http" };
    let (proto, host, port) = match relayed {
        None => {
            if !facts.peer.is_empty() {
                out.add("x-forwarded-for", |v| v.extend_from_slice(facts.peer));
                out.add("x-real-ip", |v| v.extend_from_slice(facts.peer));
            }
            (own, facts.host, None)
        }
        Some(r) => {
            out.add("x-forwarded-for", |v| {
                crate::client::extend_forwarded_for(r.xff.iter().copied(), facts.peer, v)
            });
            out.add("x-real-ip", |v| v.extend_from_slice(facts.client));
            (r.proto.unwrap_or(own), r.host.unwrap_or(facts.host), r.port)
        }
    };
    out.add("x-forwarded-proto", |v| v.extend_from_slice(proto));
    if !host.is_empty() {
        out.add("x-forwarded-host", |v| v.extend_from_slice(host));
    }
    match port {
        Some(p) => out.add("x-forwarded-port", |v| v.extend_from_slice(p)),
        None if facts.port != 0 => out.add("x-forwarded-port", |v| push_port(v, facts.port)),
        None => {}
    }
    out.add("x-request-id", |v| v.extend_from_slice(facts.request_id));
}

/// Appends `port` in decimal, without a heap `String`.
fn push_port(out: &mut Vec<u8>, port: u16) {
    let mut digits = [0u8; 5];
    let mut n = port;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Whether `name` (any case) is one of [`NAMES`].
pub fn is_forwarding(name: &[u8]) -> bool {
    NAMES
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fields as (name, value) text, in order.
    #[derive(Default)]
    struct List(Vec<(&'static str, String)>);

    impl Fields for List {
        fn add(&mut self, name: &'static str, value: impl FnOnce(&mut Vec<u8>)) {
            let mut v = Vec::new();
            value(&mut v);
            self.0
                .push((name, String::from_utf8_lossy(&v).into_owned()));
        }
    }

    fn facts() -> Facts<'static> {
        Facts {
            tls: true,
            host: b"example.com",
            peer: b"10.0.0.2",
            client: b"10.0.0.2",
            request_id: b"id-1",
            port: 443,
        }
    }

    fn fields(facts: &Facts<'_>, relayed: Option<&Relayed<'_>>) -> Vec<(&'static str, String)> {
        let mut out = List::default();
        write(&mut out, facts, relayed);
        out.0
    }

    #[test]
    fn from_a_client_every_field_is_the_edges_own() {
        let got = fields(&facts(), None);
        let want = [
            ("x-forwarded-for", "10.0.0.2"),
            ("x-real-ip", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "example.com"),
            ("x-forwarded-port", "443"),
            ("x-request-id", "id-1"),
        ];
        assert_eq!(got, want.map(|(n, v)| (n, v.to_string())));
        let mut unknown = facts();
        unknown.peer = b"";
        unknown.tls = false;
        unknown.port = 0;
        let got = fields(&unknown, None);
        assert_eq!(got[0], ("x-forwarded-proto", "http".to_string()));
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn ports_are_written_in_decimal() {
        for port in [1, 9, 10, 80, 8080, 65535] {
            let mut f = facts();
            f.port = port;
            let got = fields(&f, None);
            assert!(
                got.contains(&("x-forwarded-port", port.to_string())),
                "{got:?}"
            );
        }
    }

    #[test]
    fn from_a_trusted_proxy_its_chain_and_scheme_are_kept() {
        let relayed = Relayed {
            xff: vec![b"203.0.113.7, 10.9.9.9", b" "],
            proto: Some(b"http"),
            host: None,
            port: Some(b"80"),
        };
        let mut f = facts();
        f.client = b"203.0.113.7";
        let got = fields(&f, Some(&relayed));
        assert_eq!(got[0].1, "203.0.113.7, 10.9.9.9, 10.0.0.2");
        assert_eq!(got[1], ("x-real-ip", "203.0.113.7".to_string()));
        assert_eq!(got[2], ("x-forwarded-proto", "http".to_string()));
        assert_eq!(got[3], ("x-forwarded-host", "example.com".to_string()));
        assert_eq!(got[4], ("x-forwarded-port", "80".to_string()));
        // A trusted proxy that sent no port: the listener's.
        let relayed = Relayed {
            port: None,
            ..relayed
        };
        let got = fields(&f, Some(&relayed));
        assert_eq!(got[4], ("x-forwarded-port", "443".to_string()));
    }

    #[test]
    fn names_match_in_any_case() {
        assert!(is_forwarding(b"X-Forwarded-For"));
        assert!(is_forwarding(b"FORWARDED"));
        assert!(is_forwarding(b"X-Forwarded-Port"));
        assert!(!is_forwarding(b"x-forwarded-port-ish"));
    }
}
