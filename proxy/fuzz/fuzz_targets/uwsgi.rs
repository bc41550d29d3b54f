//! The uwsgi request packet (`net::uwsgi::encode`). It must never panic;
//! it refuses a head only when httparse does not parse it whole
//! (`BadHead`) or its variables are over 65535 bytes (`TooLarge`, with
//! the size they would take). A packet it writes decodes
//! (`net::uwsgi::decode`) into variables that give back every part of the
//! head:
//! - the header says modifier1 0, modifier2 0 and the exact size;
//! - no variable name comes twice;
//! - `REQUEST_METHOD` and `REQUEST_URI` are the request line's,
//!   `REQUEST_URI` is `PATH_INFO`'s source path then `?QUERY_STRING` when
//!   the target has a query, and `PATH_INFO` is that path when it holds
//!   no `%`;
//! - `CONTENT_TYPE` and `CONTENT_LENGTH` are the first such field or empty;
//! - every other field whose name has no `_` is in `HTTP_<NAME>`, the
//!   values of one name joined in order by `, ` (Cookie: `; `), and there
//!   is no other `HTTP_` variable;
//! - `HTTPS` is `on` exactly over TLS, and `REMOTE_PORT`/`SERVER_PORT` are
//!   the ports given (empty for 0).
//!
//! Input: one flags byte (bit 0: TLS, bit 1: a client address known), two
//! bytes of client port and two of server port (little-endian), then the
//! head.

#![no_main]

use duotone::net::uwsgi::{decode, encode, Error, Facts, MAX_VARS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [flags, r0, r1, s0, s1, head @ ..] = data else {
        return;
    };
    let facts = Facts {
        tls: flags & 1 != 0,
        remote_addr: (flags & 2 != 0).then(|| std::net::IpAddr::from([192, 0, 2, 7])),
        remote_port: u16::from_le_bytes([*r0, *r1]),
        server_port: u16::from_le_bytes([*s0, *s1]),
    };

    // The head as httparse reads it, with room for every line.
    let mut fields = vec![httparse::EMPTY_HEADER; head.len() / 2 + 1];
    let mut req = httparse::Request::new(&mut fields);
    let parsed = matches!(req.parse(head), Ok(httparse::Status::Complete(_)));

    let packet = match encode(head, &facts) {
        Ok(p) => p,
        Err(Error::BadHead) => {
            assert!(!parsed, "refused a head httparse parses");
            return;
        }
        Err(Error::TooLarge(n)) => {
            assert!(parsed, "TooLarge for a head that does not parse");
            assert!(n > MAX_VARS, "TooLarge({n})");
            return;
        }
        Err(e) => panic!("encode: {e}"),
    };
    assert!(parsed, "encoded a head httparse refuses");
    assert_eq!(packet[0], 0, "modifier1");
    assert_eq!(packet[3], 0, "modifier2");
    assert_eq!(
        usize::from(u16::from_le_bytes([packet[1], packet[2]])),
        packet.len() - 4,
        "size"
    );
    let vars = decode(&packet).expect("encode's packet decodes");
    for (i, (k, _)) in vars.iter().enumerate() {
        assert!(
            !vars[..i].iter().any(|(n, _)| n == k),
            "{} twice",
            String::from_utf8_lossy(k)
        );
    }
    let var = |name: &str| {
        vars.iter()
            .find(|(k, _)| *k == name.as_bytes())
            .map(|(_, v)| *v)
    };

    let method = req.method.expect("method");
    let target = req.path.expect("target");
    assert_eq!(var("REQUEST_METHOD"), Some(method.as_bytes()));
    assert_eq!(var("REQUEST_URI"), Some(target.as_bytes()));
    let query = var("QUERY_STRING").expect("QUERY_STRING");
    let path = match target.split_once('?') {
        Some((p, q)) => {
            assert_eq!(q.as_bytes(), query);
            p
        }
        None => {
            assert!(query.is_empty());
            target
        }
    };
    let path_info = var("PATH_INFO").expect("PATH_INFO");
    assert!(path_info.len() <= path.len());
    if !path.contains('%') {
        assert_eq!(path_info, path.as_bytes());
    }

    let first = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map_or(&b""[..], |h| h.value)
    };
    assert_eq!(var("CONTENT_TYPE"), Some(first("content-type")));
    assert_eq!(var("CONTENT_LENGTH"), Some(first("content-length")));

    // Every field, joined by name, as the HTTP_ variables.
    let mut want: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for h in req.headers.iter() {
        let lower = h.name.to_ascii_lowercase();
        if lower.contains('_') || lower == "content-type" || lower == "content-length" {
            continue;
        }
        let key = format!("HTTP_{}", lower.to_ascii_uppercase().replace('-', "_")).into_bytes();
        let sep: &[u8] = if lower == "cookie" { b"; " } else { b", " };
        match want.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => {
                v.extend_from_slice(sep);
                v.extend_from_slice(h.value);
            }
            None => want.push((key, h.value.to_vec())),
        }
    }
    let got: Vec<(Vec<u8>, Vec<u8>)> = vars
        .iter()
        .filter(|(k, _)| k.starts_with(b"HTTP_"))
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    assert_eq!(got, want, "HTTP_ variables");

    assert_eq!(var("HTTPS"), facts.tls.then_some(&b"on"[..]));
    let port = |p: u16| if p == 0 { String::new() } else { p.to_string() };
    assert_eq!(var("REMOTE_PORT"), Some(port(facts.remote_port).as_bytes()));
    assert_eq!(var("SERVER_PORT"), Some(port(facts.server_port).as_bytes()));
    let remote: &[u8] = if facts.remote_addr.is_some() {
        b"192.0.2.7"
    } else {
        b""
    };
    assert_eq!(var("REMOTE_ADDR"), Some(remote));
});
