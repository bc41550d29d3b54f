//! Criterion micro-benchmarks of the request path's pure parts: route
//! matching on a 1 000-route table, weighted color choice, and the
//! forwarding-header rewrite.

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
    let ids = duotone::forwarded::RequestIds::default();
    let client = Some("203.0.113.9".parse().expect("ip"));
    c.bench_function("forwarding headers + request id", |b| {
        b.iter(|| {
            let mut req = base.clone();
            let id = ids.for_request(&req);
            duotone::forwarded::set_headers(&mut req, client, true, Some(id)).expect("headers");
            req
        })
    });
}

criterion_group!(benches, matching, colors, headers);
criterion_main!(benches);
