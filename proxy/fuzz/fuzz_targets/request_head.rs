//! The lane's HTTP/1.1 request-head parsing (`lane::request::plan`) against
//! a small routing table. It must never panic, and when the lane serves a
//! request itself:
//! - `routes::request::check` accepts the same head (the lane never serves
//!   what Pingora's path would refuse) and the route is the one the
//!   canonical path and host select;
//! - for a service, the upstream head it wrote parses with httparse as one
//!   complete request, whose target is `check`'s (prefix stripped when the
//!   route says so), with one Host, no header name holding `_`, no
//!   hop-by-hop or framing field but one Content-Length matching the body,
//!   and each forwarding header exactly once.
//!
//! Input: one flags byte (bit 0: TLS connection, bit 1: ACME on, bit 2:
//! access log on), then the bytes read from the client.

#![no_main]

use duotone::control::Snapshot;
use duotone::lane::request::{plan, Conn, LogFields, Parsed, Work};
use duotone::net::forwarded::RequestIds;
use libfuzzer_sys::fuzz_target;
use routes::request::{check, Head, Proto};
use routes::{Action, LiveState, Vitals};
use std::sync::{Arc, OnceLock};

/// Two sites: `app.test` (and `*.wild.test`) with a static route, a
/// redirect, a prefix-stripping route and a service; the default site with
/// the service, and `/admin/` behind basic auth. The TLS site is served on
/// TLS connections only.
const CONFIG: &str = r#"
[server]
http = "127.0.0.1:8080"
https = "127.0.0.1:8443"
admin = "off"
state_dir = "/tmp/duotone-fuzz-state"

[[sites]]
hosts = ["app.test", "*.wild.test"]
  [[sites.routes]]
  path = "/static/"
  static = { root = "{root}" }
  [[sites.routes]]
  path = "/old/"
  redirect = { to = "https://new.test$path", status = 301 }
  [[sites.routes]]
  path = "/strip/"
  service = "app"
  strip_prefix = true
  [[sites.routes]]
  path = "/small/"
  service = "app"
  max_body = "10"
  [[sites.routes]]
  path = "/"
  service = "app"

[[sites]]
hosts = ["secure.test"]
tls = "self-signed"
  [[sites.routes]]
  path = "/"
  service = "app"

[[sites]]
hosts = ["*"]
  [[sites.routes]]
  path = "/admin/"
  service = "app"
  basic_auth = ["staff:$2y$04$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234"]
  [[sites.routes]]
  path = "/"
  service = "app"

[services.app]
colors.blue = ["127.0.0.1:9"]
"#;

fn snapshot() -> &'static Snapshot {
    static SNAP: OnceLock<Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| {
        // Any existing directory does for the static root: plan() reads no file.
        let text = CONFIG.replace("{root}", env!("CARGO_MANIFEST_DIR"));
        let config = routes::load("fuzz.toml", &text, |_| None)
            .unwrap_or_else(|d| panic!("fuzz config: {d}"));
        let metrics = duotone::metrics::Metrics::new().expect("metrics");
        duotone::control::build(
            Arc::new(config),
            &LiveState::default(),
            &Vitals::default(),
            &metrics,
        )
        .unwrap_or_else(|d| panic!("fuzz snapshot: {d}"))
        .0
    })
}

fn ids() -> &'static RequestIds {
    static IDS: OnceLock<RequestIds> = OnceLock::new();
    IDS.get_or_init(RequestIds::default)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, buf)) = data.split_first() else {
        return;
    };
    let snap = snapshot();
    let conn = Conn {
        tls: flags & 1 != 0,
        client_ip: "192.0.2.7",
        peer: Some(std::net::IpAddr::from([192, 0, 2, 7])),
        acme: flags & 2 != 0,
        port: 8080,
        peer_port: 40000,
    };
    let mut out = Vec::new();
    let mut log = LogFields::default();
    let parsed = plan(
        buf,
        snap,
        &conn,
        ids(),
        &mut out,
        (flags & 4 != 0).then_some(&mut log),
    );
    let Parsed::Lane(p) = parsed else {
        return;
    };

    // What the lane served, read again independently.
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = req.parse(buf) else {
        panic!("lane served a head httparse does not parse whole");
    };
    assert_eq!(p.head_len, head_len);
    assert!(p.head_len <= buf.len());
    let method = req.method.expect("method");
    let target = req.path.expect("target");
    let proto = match req.version {
        Some(1) => Proto::Http11,
        Some(0) => Proto::Http10,
        v => panic!("lane served version {v:?}"),
    };
    let hosts: Vec<&[u8]> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value)
        .collect();
    let Ok(host) = hosts.first().map(|h| std::str::from_utf8(h)).transpose() else {
        panic!("lane served a non-UTF-8 Host");
    };
    let head = Head {
        proto,
        method,
        target,
        host,
        host_fields: hosts.len(),
        authority: None,
    };
    let checked = match check(&head) {
        Ok(c) => c,
        Err(r) => panic!("lane served what check refuses ({r:?}): {target:?}"),
    };
    let table = &snap.table;
    assert_eq!(
        table.locate(checked.host, &checked.path),
        Some((p.site, p.route)),
        "lane routed {target:?} (canonical {:?}) elsewhere",
        checked.path
    );
    let route = &table.sites[p.site].routes[p.route];

    match p.work {
        Work::Static(s) => {
            assert!(matches!(route.action, Action::Static(_)));
            assert!(!routes::path::has_dot_segment(&s.rel), "{:?}", s.rel);
        }
        Work::Proxy(service) => {
            assert!(matches!(route.action, Action::Proxy(i) if i == service));
            upstream_head(&out, method, &checked, route, p.body_len);
        }
    }
});

/// Checks the upstream head the lane wrote.
fn upstream_head(
    out: &[u8],
    method: &str,
    checked: &routes::request::Checked<'_>,
    route: &routes::Route,
    body_len: usize,
) {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut up = httparse::Request::new(&mut headers);
    match up.parse(out) {
        Ok(httparse::Status::Complete(n)) => {
            assert_eq!(n, out.len(), "upstream head has bytes after its end")
        }
        other => panic!(
            "upstream head does not parse ({other:?}): {:?}",
            String::from_utf8_lossy(out)
        ),
    }
    assert_eq!(up.method, Some(method));
    assert_eq!(up.version, Some(1));
    let mut want = checked.target().into_owned();
    if route.strip_prefix {
        let rest = want.get(route.prefix.len()..).unwrap_or("").to_string();
        want = if rest.starts_with('/') {
            rest
        } else {
            format!("/{rest}")
        };
    }
    assert_eq!(
        up.path,
        Some(want.as_str()),
        "upstream target is not check's; head: {:?}",
        String::from_utf8_lossy(out)
    );
    let count = |name: &str| {
        up.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    for h in up.headers.iter() {
        assert!(!h.name.contains('_'), "forwarded {:?}", h.name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
        "trailer",
        "transfer-encoding",
        "expect",
        "forwarded",
    ] {
        assert_eq!(count(name), 0, "forwarded {name}");
    }
    for name in [
        "host",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-for",
        "x-forwarded-port",
        "x-real-ip",
        "x-request-id",
    ] {
        assert_eq!(count(name), 1, "{name} not exactly once");
    }
    let value = |name: &str| {
        up.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let host = value("host").unwrap_or_default();
    assert!(
        host.eq_ignore_ascii_case(checked.host.as_bytes()),
        "Host {:?} is not the routed host {:?}",
        String::from_utf8_lossy(host),
        checked.host
    );
    assert_eq!(value("x-forwarded-host"), Some(host));
    match count("content-length") {
        0 => assert_eq!(body_len, 0),
        1 => {
            let v = value("content-length").unwrap_or_default();
            let n = std::str::from_utf8(v.trim_ascii())
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
            assert_eq!(n, Some(body_len as u64), "Content-Length is not the body's");
        }
        n => panic!("{n} Content-Length fields forwarded"),
    }
}
