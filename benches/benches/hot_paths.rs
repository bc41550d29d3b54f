//! Criterion micro-benchmarks of the request path's pure parts: route
//! matching on a 1 000-route table, weighted color choice, the
//! forwarding-header rewrite on Pingora's path, and the lane's (HTTP/1.1)
//! request-head rewrite and response-head parse.

// `criterion_main!` defines an undocumented `pub fn main`; a doc comment
// there would add nothing.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pingora::http::RequestHeader;
use routes::{load, LiveState, RouteTable, Vitals};
use std::sync::Arc;

/// 100 sites × 10 routes each, plus wildcards and a default site.
fn big_table() -> RouteTable {
    let mut text = String::from("[server]\nhttp = \"127.0.0.1:1\"\n");
    for s in 0..100 {
        text.push_str(&format!(
            "[[sites]]\nhosts = [\"site{s}.example.com\", \"*.site{s}.example.org\"]\n"
        ));
        for r in 0..10 {
            text.push_str(&format!(
                "[[sites.routes]]\npath = \"/section{r}/sub{r}/\"\nservice = \"api\"\n"
            ));
        }
    }
    text.push_str(
        "[[sites]]\nhosts = [\"*\"]\n[[sites.routes]]\npath = \"/\"\nservice = \"api\"\n",
    );
    text.push_str("[services.api]\nlive = \"blue\"\nweights = { blue = 90, green = 10 }\ncolors.blue = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\ncolors.green = [\"127.0.0.1:3\"]\n");
    let cfg = load("bench.toml", &text, |_| None).expect("bench config");
    RouteTable::compile(
        Arc::new(cfg),
        &LiveState::default(),
        &Vitals::default(),
        &|_, _| None,
    )
    .0
}

fn matching(c: &mut Criterion) {
    let t = big_table();
    assert!(t.route_count() >= 1000);
    c.bench_function("match exact host, deep prefix (1000 routes)", |b| {
        b.iter(|| {
            t.find(
                black_box("site57.example.com"),
                black_box("/section9/sub9/page"),
            )
        })
    });
    c.bench_function("match wildcard host (1000 routes)", |b| {
        b.iter(|| {
            t.find(
                black_box("www.site42.example.org:443"),
                black_box("/section3/sub3/x"),
            )
        })
    });
    c.bench_function("match default site (1000 routes)", |b| {
        b.iter(|| t.find(black_box("unknown.test"), black_box("/anything")))
    });
    c.bench_function("match mixed-case host (1000 routes)", |b| {
        b.iter(|| t.find(black_box("SITE7.Example.com"), black_box("/section1/sub1/")))
    });
}

fn colors(c: &mut Criterion) {
    let t = big_table();
    let svc = t.service("api").expect("api");
    let mut roll = 0u32;
    c.bench_function("weighted color + round-robin member", |b| {
        b.iter(|| {
            roll = roll.wrapping_add(7919);
            let pool = &svc.pools[svc.choose_pool(black_box(roll))];
            pool.pick(0, 0)
        })
    });
}

fn headers(c: &mut Criterion) {
    let mut base = RequestHeader::build("GET", b"/api/v1/items?page=2", None).expect("request");
    base.insert_header("host", "example.com").expect("host");
    base.insert_header("user-agent", "bench").expect("ua");
    base.insert_header("x-forwarded-for", "6.6.6.6")
        .expect("xff");
    let ids = duotone::net::forwarded::RequestIds::default();
    let client = Some("203.0.113.9".parse().expect("ip"));
    c.bench_function("forwarding headers + request id", |b| {
        b.iter(|| {
            let mut req = base.clone();
            let id = ids.for_request(&req);
            duotone::net::forwarded::set_headers(&mut req, client, None, true, 443, Some(id))
                .expect("headers");
            req
        })
    });
}

/// The lane's work per proxied HTTP/1.1 request, without I/O: parse the
/// client head, route it, write the upstream head (forwarded headers,
/// request id), then parse the upstream response and write the client head.
fn lane(c: &mut Criterion) {
    use duotone::lane::{request, response};
    let state = tempfile::tempdir().expect("state dir");
    let text = format!(
        "[server]\nhttp = \"127.0.0.1:1\"\nadmin = \"off\"\nstate_dir = \"{}\"\n\
         [[sites]]\nhosts = [\"example.com\"]\n[[sites.routes]]\npath = \"/\"\nservice = \"api\"\n\
         [services.api]\ncolors.blue = [\"127.0.0.1:8001\"]\n",
        state.path().display()
    );
    let source = duotone::control::Source::Embedded {
        name: "bench.toml".into(),
        text,
    };
    let config = source.load().expect("bench config");
    let metrics = Arc::new(duotone::metrics::Metrics::new().expect("metrics"));
    let control = duotone::control::Control::new(source, config, metrics, None).expect("control");
    let snap = control.load();
    let ids = duotone::net::forwarded::RequestIds::default();
    let conn = request::Conn {
        tls: false,
        client_ip: "203.0.113.9",
        peer: Some([203, 0, 113, 9].into()),
        acme: false,
        port: 80,
        peer_port: 40000,
    };
    let head = b"GET /api/v1/items?page=2 HTTP/1.1\r\nHost: example.com\r\n\
        User-Agent: Mozilla/5.0 (X11; Linux x86_64) bench\r\nAccept: */*\r\n\
        Accept-Encoding: gzip, br\r\nCookie: sessionid=0123456789abcdef\r\n\
        X-Forwarded-For: 6.6.6.6\r\n\r\n";
    let mut out = Vec::with_capacity(1024);
    c.bench_function("lane: client head → upstream head", |b| {
        b.iter(|| {
            let parsed = request::plan(black_box(head), &snap, &conn, &ids, &mut out, None);
            assert!(matches!(parsed, request::Parsed::Lane(_)));
            out.len()
        })
    });
    let upstream =
        b"HTTP/1.1 200 OK\r\nServer: gunicorn\r\nDate: Thu, 26 Nov 2026 07:00:00 GMT\r\n\
        Content-Type: text/html; charset=utf-8\r\nContent-Length: 100\r\n\
        Vary: Cookie\r\nX-Frame-Options: DENY\r\n\r\n";
    let extra = response::Extra {
        head_method: false,
        hsts: None,
        request_id: b"0123456789abcdef",
        close: false,
        add: &routes::headers::AddHeaders::NONE,
        set_cookie: None,
    };
    let mut client_head = Vec::with_capacity(1024);
    c.bench_function("lane: upstream head → client head", |b| {
        b.iter(|| {
            let parsed = response::parse(black_box(upstream), &extra, &mut client_head);
            assert!(matches!(parsed, response::Parsed::Done(_)));
            client_head.len()
        })
    });
}

criterion_group!(benches, matching, colors, headers, lane);
criterion_main!(benches);
