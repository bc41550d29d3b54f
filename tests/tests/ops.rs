//! Operations, end to end: metrics, access log, reloads (API and SIGHUP),
//! limits, request smuggling, slowloris, basic auth, allow lists, compression
//! and graceful shutdown.

use e2e::client::{admin, raw, Http};
use e2e::proxy::Proxy;
use e2e::upstream::Upstream;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "ops-test-token-0123456789";

fn config(app: &Upstream, extra_route: &str) -> String {
    let hash = bcrypt::hash("wall-pass", 4).unwrap();
    format!(
        r#"
[server]
http = "{{http}}"
admin = "{{admin}}"
state_dir = "{{state}}"
admin_token = "{TOKEN}"
grace_period = "10s"

[limits]
max_header_bytes = "8k"
max_headers = 50
max_body = "1k"
header_timeout = "1s"

[log]
access = "json"

[[sites]]
hosts = ["*"]
  [[sites.routes]]
  path = "/"
  service = "app"
  [[sites.routes]]
  path = "/big/"
  service = "app"
  max_body = "64k"
  [[sites.routes]]
  path = "/wall/"
  service = "app"
  basic_auth = ["staff:{hash}"]
  [[sites.routes]]
  path = "/internal/"
  service = "app"
  allow = ["10.0.0.0/8"]
  [[sites.routes]]
  path = "/gz/"
  service = "app"
  compress = true
{extra_route}

[services.app]
colors.blue = ["{app}"]
"#,
        app = app.member()
    )
}

async fn scrape(p: &Proxy) -> String {
    admin("GET", &p.admin_url("/metrics"), Some(TOKEN), None)
        .await
        .unwrap()
        .text()
}

fn sample(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{metrics}"))
}

#[tokio::test]
async fn metrics_and_access_log() {
    let app = Upstream::start("blue").await;
    let p = Proxy::start(&config(&app, "")).await;
    let http = Http::new();
    for _ in 0..5 {
        assert_eq!(http.get(&p.url("/x")).await.unwrap().status, 200);
    }
    // HTTP/2 streams are counted and logged the same way.
    let h2 = Http::h2();
    for _ in 0..3 {
        assert_eq!(h2.get(&p.url("/x")).await.unwrap().status, 200);
    }
    assert_eq!(http.get(&p.url("/internal/x")).await.unwrap().status, 403);
    // Requests are counted when their log phase ends, just after the response.
    let m = e2e::eventually(Duration::from_secs(5), || async {
        let m = scrape(&p).await;
        (sample(
            &m,
            r#"duotone_request_duration_seconds_count{service="app",site="*"}"#,
        ) >= 9.0)
            .then_some(m)
    })
    .await
    .expect("nine requests counted");
    assert_eq!(
        sample(
            &m,
            r#"duotone_requests_total{color="blue",service="app",site="*",status_class="2xx"}"#
        ),
        8.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"duotone_requests_total{color="",service="app",site="*",status_class="4xx"}"#
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"duotone_request_duration_seconds_count{service="app",site="*"}"#
        ),
        9.0
    );
    assert_eq!(
        sample(&m, r#"duotone_live_color{service="app",color="blue"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            r#"duotone_in_flight_requests{service="app",color="blue"}"#
        ),
        0.0
    );
    assert!(m.contains("duotone_downstream_connections "), "{m}");
    assert!(m.contains(r#"duotone_config_reloads_total{result="success"} 0"#));
    for name in [
        "duotone_member_up",
        "duotone_upstream_connect_errors_total",
        "duotone_static_bytes_total",
        "duotone_color_weight",
    ] {
        assert!(m.contains(&format!("# TYPE {name}")), "{name} missing");
    }
    // Without the token, metrics are refused.
    assert_eq!(
        admin("GET", &p.admin_url("/metrics"), None, None)
            .await
            .unwrap()
            .status,
        401
    );
    // promtool, when installed, finds nothing to complain about.
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.trim().is_empty(),
            "promtool: {text}"
        );
    }
    // One JSON access log line per request, with the fields operators need.
    let line = e2e::eventually(Duration::from_secs(5), || {
        let log = p.log();
        async move {
            log.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["uri"] == "/internal/x")
        }
    })
    .await
    .expect("access log line");
    assert_eq!(line["status"], 403);
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["method"], "GET");
    assert!(line["time"].as_str().unwrap().ends_with('Z'));
    assert!(
        !line["request_id"].as_str().unwrap_or("").is_empty(),
        "local answers carry a request id too: {line}"
    );
    let proxied: Vec<serde_json::Value> = p
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["uri"] == "/x")
        .collect();
    assert_eq!(proxied.len(), 8);
    let protos = |p: &str| proxied.iter().filter(|l| l["proto"] == p).count();
    assert_eq!(
        (protos("HTTP/1.1"), protos("HTTP/2.0")),
        (5, 3),
        "{proxied:?}"
    );
    for l in &proxied {
        assert_eq!(
            (&l["status"], &l["service"], &l["color"], &l["upstream"]),
            (
                &200.into(),
                &"app".into(),
                &"blue".into(),
                &app.member().into()
            ),
            "{l}"
        );
    }
    let l = &proxied[0];
    assert_eq!(l["status"], 200);
    assert_eq!(l["service"], "app");
    assert_eq!(l["color"], "blue");
    assert_eq!(l["upstream"], app.member());
    assert!(
        l["host"]
            .as_str()
            .is_some_and(|h| h.starts_with("127.0.0.1")),
        "{l}"
    );
    assert!(l["bytes"].as_u64().is_some_and(|b| b > 0), "{l}");
    assert!(l["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{l}");
    assert_eq!(l["request_id"].as_str().map(str::len), Some(24), "{l}");
}

#[tokio::test]
async fn reload_under_load_drops_nothing_and_bad_config_keeps_old_routes() {
    let app = Upstream::start("blue").await;
    let app2 = Upstream::start("second").await;
    let p = Proxy::start(&config(&app, "")).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (url, stop, ok, failed) = (p.url("/x"), stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let http = Http::new();
            while !stop.load(Ordering::Relaxed) {
                match http.get(&url).await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let route = |n: usize| {
        format!(
            "  [[sites.routes]]\n  path = \"/added-{n}/\"\n  service = \"second\"\n[services.second]\ncolors.blue = [\"{}\"]\n",
            app2.member()
        )
    };
    for n in 0..20 {
        // Valid: the new route appears, nothing fails.
        p.rewrite(&config(&app, &route(n)));
        let r = admin("POST", &p.admin_url("/v1/reload"), Some(TOKEN), None)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let r = Http::new()
            .get(&p.url(&format!("/added-{n}/y")))
            .await
            .unwrap();
        assert_eq!(r.text(), "second");
    }
    // Invalid: refused with file:line, the running config stays.
    std::fs::write(&p.config, "[server]\nhttp = \"{broken\"\n").unwrap();
    let r = admin("POST", &p.admin_url("/v1/reload"), Some(TOKEN), None)
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let reason = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        reason.contains(&format!("{}:2: server.http:", p.config.display())),
        "{reason}"
    );
    assert_eq!(
        Http::new().get(&p.url("/added-19/y")).await.unwrap().text(),
        "second"
    );
    // SIGHUP with the broken file also keeps serving.
    p.signal(libc::SIGHUP);
    let m = e2e::eventually(Duration::from_secs(5), || async {
        let m = scrape(&p).await;
        (sample(&m, r#"duotone_config_reloads_total{result="failure"}"#) >= 2.0).then_some(m)
    })
    .await
    .expect("SIGHUP reload attempt counted");
    assert_eq!(
        sample(&m, r#"duotone_config_reloads_total{result="success"}"#),
        20.0
    );
    // SIGHUP with a good file applies it.
    p.rewrite(&config(&app, &route(99)));
    p.signal(libc::SIGHUP);
    let got = e2e::eventually(Duration::from_secs(5), || async {
        Http::new()
            .get(&p.url("/added-99/y"))
            .await
            .ok()
            .filter(|r| r.text() == "second")
    })
    .await;
    assert!(got.is_some(), "SIGHUP did not reload; log:\n{}", p.log());
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
    println!(
        "reload under load: {} requests, 0 failed",
        ok.load(Ordering::Relaxed)
    );
}

/// Trickles a request head on `slow` (`first` line, then a header line every
/// 100 ms, 10 s in all) while normal requests keep being served; true if the
/// proxy cut the trickling connection off before it finished.
async fn slowloris_is_cut(
    mut slow: tokio::net::TcpStream,
    first: &'static str,
    http: &Http,
    p: &Proxy,
) -> bool {
    let trickle = tokio::spawn(async move {
        for i in 0..100 {
            let line = if i == 0 {
                first.to_string()
            } else {
                format!("X-{i}: y\r\n")
            };
            if slow.write_all(line.as_bytes()).await.is_err() {
                return Some(i);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut buf = [0u8; 64];
        match slow.read(&mut buf).await {
            Ok(0) | Err(_) => Some(100),
            Ok(_) => None,
        }
    });
    for _ in 0..5 {
        assert_eq!(http.get(&p.url("/x")).await.unwrap().status, 200);
    }
    let cut = tokio::time::timeout(Duration::from_secs(15), trickle)
        .await
        .unwrap()
        .unwrap();
    cut.is_some_and(|i| i < 100)
}

#[tokio::test]
async fn limits_smuggling_and_slowloris() {
    let app = Upstream::start("blue").await;
    let p = Proxy::start(&config(&app, "")).await;
    let http = Http::new();
    // Oversize header block and too many headers: 431.
    let big = "a".repeat(9000);
    assert_eq!(
        http.get_with(&p.url("/"), &[("x-big", big.as_str())])
            .await
            .unwrap()
            .status,
        431
    );
    let many: Vec<(String, String)> = (0..60).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(http.get_with(&p.url("/"), &refs).await.unwrap().status, 431);
    // Body limits: default 1k, the /big/ route 64k; declared and chunked.
    let r = Http::new()
        .send("POST", &p.url("/echo"), &[], vec![b'x'; 2048])
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    let r = Http::new()
        .send("POST", &p.url("/big/echo"), &[], vec![b'x'; 2048])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let chunked = format!(
        "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n{}\r\n0\r\n\r\n",
        "y".repeat(2048)
    );
    let out = raw(p.ports.http, chunked.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out:?}");
    // Smuggling: CL with TE, and codings other than chunked. (Counted by
    // path: the 413 above may still reach the upstream as it is cut off.)
    for attempt in [
        "POST /smuggle HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /smuggle HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "POST /smuggle HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
        "POST /smuggle HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    ] {
        let out = raw(p.ports.http, attempt.as_bytes(), Duration::from_secs(5)).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{attempt:?} -> {out:?}");
    }
    assert_eq!(
        app.hits_on("/smuggle"),
        0,
        "no smuggling attempt may reach the upstream"
    );
    // Slowloris: a head trickled byte by byte is cut off at header_timeout,
    // while a normal client is served meanwhile.
    let mut slow = tokio::net::TcpStream::connect(p.ports.http).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    assert!(
        slowloris_is_cut(slow, "X-0: y\r\n", &http, &p).await,
        "slowloris connection was not cut off"
    );
    // The same on a keep-alive connection: one quick request, then the next
    // head trickled. Idle time before it does not count, its trickle does.
    let mut slow = tokio::net::TcpStream::connect(p.ports.http).await.unwrap();
    slow.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\nblue") {
        let n = slow.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "first response cut: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert!(
        slowloris_is_cut(slow, "GET /x HTTP/1.1\r\n", &http, &p).await,
        "slowloris on a keep-alive connection was not cut off"
    );
}

#[tokio::test]
async fn basic_auth_allow_list_and_compression() {
    let app = Upstream::start("blue").await;
    let p = Proxy::start(&config(&app, "")).await;
    let http = Http::new();
    let r = http.get(&p.url("/wall/x")).await.unwrap();
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").starts_with("Basic realm="));
    use base64_engine::*;
    let wrong = format!("Basic {}", b64("staff:nope"));
    assert_eq!(
        http.get_with(&p.url("/wall/x"), &[("authorization", &wrong)])
            .await
            .unwrap()
            .status,
        401
    );
    let right = format!("Basic {}", b64("staff:wall-pass"));
    for _ in 0..3 {
        let r = http
            .get_with(&p.url("/wall/x"), &[("authorization", &right)])
            .await
            .unwrap();
        assert_eq!((r.status, r.text()), (200, "blue".to_string()));
    }
    assert_eq!(http.get(&p.url("/internal/x")).await.unwrap().status, 403);
    // Compression only when the client accepts it (the upstream echoes JSON, > 20 bytes).
    let r = http
        .get_with(&p.url("/gz/echo"), &[("accept-encoding", "gzip")])
        .await
        .unwrap();
    assert_eq!(r.header("content-encoding"), "gzip", "{:?}", r.headers);
    let mut text = String::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_string(&mut text)
        .unwrap();
    assert!(text.contains("\"upstream\":\"blue\""), "{text}");
    let r = http.get(&p.url("/gz/echo")).await.unwrap();
    assert_eq!(r.header("content-encoding"), "");
    assert!(r.text().contains("\"upstream\":\"blue\""));
    // Routes without compress = true are never compressed.
    let r = http
        .get_with(&p.url("/echo"), &[("accept-encoding", "gzip")])
        .await
        .unwrap();
    assert_eq!(r.header("content-encoding"), "");
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits() {
    let app = Upstream::start("blue").await;
    let mut p = Proxy::start(&config(&app, "")).await;
    let url = p.url("/slow?ms=1500");
    let slow = tokio::spawn(async move { Http::new().get(&url).await });
    e2e::eventually(Duration::from_secs(5), || async {
        let m = scrape(&p).await;
        (sample(
            &m,
            r#"duotone_in_flight_requests{service="app",color="blue"}"#,
        ) >= 1.0)
            .then_some(())
    })
    .await
    .expect("slow request in flight");
    p.signal(libc::SIGTERM);
    let r = slow
        .await
        .unwrap()
        .expect("in-flight request completes during shutdown");
    assert_eq!((r.status, r.text()), (200, "blue".to_string()));
    let code = p.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "log:\n{}", p.log());
    assert!(tokio::net::TcpStream::connect(p.ports.http).await.is_err());
}

mod base64_engine {
    /// Standard base64 without padding issues, for Basic credentials.
    pub fn b64(s: &str) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let b = s.as_bytes();
        let mut out = String::new();
        for c in b.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

/// A config that proxies every request to `app`, with `server` added to the
/// `[server]` table and `tables` (e.g. `[limits]`) after it.
fn one_route(app: &Upstream, server: &str, tables: &str) -> String {
    format!(
        "[server]\nhttp = \"{{http}}\"\nadmin = \"{{admin}}\"\nstate_dir = \"{{state}}\"\n{server}{tables}[[sites]]\nhosts = [\"*\"]\n  [[sites.routes]]\n  path = \"/\"\n  service = \"app\"\n[services.app]\ncolors.blue = [\"{}\"]\n",
        app.member()
    )
}

/// A keep-alive connection to `addr` on which one `GET /` was answered 200.
async fn answered_connection(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    answered(addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await
}

/// A connection to `addr` on which `request` was answered 200.
async fn answered(addr: std::net::SocketAddr, request: &[u8]) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    s
}

#[tokio::test]
async fn max_connections_refuses_the_excess() {
    let app = Upstream::start("blue").await;
    let cfg = one_route(&app, "", "[limits]\nmax_connections = 2\n");
    let p = Proxy::start(&cfg).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(answered_connection(p.ports.http).await);
    }
    // A third connection is closed without an answer while two are open.
    let out = raw(
        p.ports.http,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(out, "", "the third connection must be refused");
    drop(held);
    let ok = e2e::eventually(Duration::from_secs(5), || async {
        Http::new()
            .get(&p.url("/"))
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;
    assert!(
        ok.is_some(),
        "connections are accepted again once others close"
    );
}

/// Each worker thread accepts on its own copy of the listening socket and
/// whichever wakes first wins, so without balancing a burst of connections
/// often all landed on one worker. A connection accepted by a worker with
/// more open connections than another is handed to the one with the fewest.
#[tokio::test]
async fn connections_are_spread_evenly_over_the_workers() {
    let app = Upstream::start("blue").await;
    let cfg = one_route(
        &app,
        &format!("admin_token = \"{TOKEN}\"\nthreads = 2\n"),
        "",
    );
    let p = Proxy::start(&cfg).await;
    // The start-up probe's connection has been seen closing.
    let idle = e2e::eventually(Duration::from_secs(5), || async {
        (sample(&scrape(&p).await, "duotone_downstream_connections ") == 0.0).then_some(())
    })
    .await;
    assert!(idle.is_some(), "connections still open before the test");
    // 16 keep-alive connections, opened together and each answered once.
    let held =
        futures_util::future::join_all((0..16).map(|_| answered_connection(p.ports.http))).await;
    let m = scrape(&p).await;
    assert_eq!(sample(&m, "duotone_downstream_connections "), 16.0, "{m}");
    let w0 = sample(&m, r#"duotone_worker_connections{worker="0"}"#);
    let w1 = sample(&m, r#"duotone_worker_connections{worker="1"}"#);
    assert_eq!((w0, w1), (8.0, 8.0), "{m}");
    drop(held);
}

#[tokio::test]
async fn live_colors_set_through_the_api_survive_a_reload() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let cfg = format!(
        "[server]\nhttp = \"{{http}}\"\nadmin = \"{{admin}}\"\nstate_dir = \"{{state}}\"\nadmin_token = \"{TOKEN}\"\n[[sites]]\nhosts = [\"*\"]\n  [[sites.routes]]\n  path = \"/\"\n  service = \"app\"\n[services.app]\nlive = \"blue\"\ncolors.blue = [\"{}\"]\ncolors.green = [\"{}\"]\n",
        blue.member(),
        green.member()
    );
    let p = Proxy::start(&cfg).await;
    let http = Http::new();
    assert_eq!(http.get(&p.url("/")).await.unwrap().text(), "blue");
    let r = admin(
        "POST",
        &p.admin_url("/v1/services/app/flip"),
        Some(TOKEN),
        Some(r#"{"to":"green"}"#),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin("POST", &p.admin_url("/v1/reload"), Some(TOKEN), None)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(http.get(&p.url("/")).await.unwrap().text(), "green");
    p.signal(libc::SIGHUP);
    let m = e2e::eventually(Duration::from_secs(5), || async {
        let m = scrape(&p).await;
        (sample(&m, r#"duotone_config_reloads_total{result="success"}"#) >= 2.0).then_some(m)
    })
    .await
    .expect("SIGHUP reload counted");
    assert_eq!(
        sample(&m, r#"duotone_live_color{service="app",color="green"}"#),
        1.0
    );
    assert_eq!(http.get(&p.url("/")).await.unwrap().text(), "green");
}

/// Reads until the peer closes; true if it did within `limit`.
async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn idle_keepalive_and_h2_connections_are_closed() {
    let app = Upstream::start("blue").await;
    // 2 s: longer than the lane's 1 s grace, so the HTTP/1.1 connection's
    // last second passes in the idle wait that holds no request state.
    let cfg = format!(
        "[server]\nhttp = \"{{http}}\"\nadmin = \"{{admin}}\"\nstate_dir = \"{{state}}\"\n[limits]\nkeepalive_timeout = \"2s\"\n[[sites]]\nhosts = [\"*\"]\n  [[sites.routes]]\n  path = \"/\"\n  service = \"app\"\n[services.app]\ncolors.blue = [\"{}\"]\n",
        app.member()
    );
    let p = Proxy::start(&cfg).await;
    // HTTP/1.1: one request, then silence.
    let mut h1 = answered_connection(p.ports.http).await;
    // The same after a request served on Pingora's path (a chunked upload),
    // whose connection used to wait there, under Pingora's fixed 60 s.
    let mut full = answered(
        p.ports.http,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    // HTTP/2 (prior knowledge): preface and SETTINGS, then silence.
    let mut h2 = tokio::net::TcpStream::connect(p.ports.http).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // Both are closed by the proxy well before this generous bound.
    assert!(
        closed_within(&mut h1, Duration::from_secs(15)).await,
        "idle HTTP/1.1 connection left open"
    );
    assert!(
        closed_within(&mut full, Duration::from_secs(15)).await,
        "idle HTTP/1.1 connection left open after a request on Pingora's path"
    );
    assert!(
        closed_within(&mut h2, Duration::from_secs(15)).await,
        "idle HTTP/2 connection left open"
    );
}

/// Reads one response with a `content-length` body off `s` (10 s bound);
/// returns its head, lowercase.
async fn one_response(s: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                assert_eq!(buf.len(), end + 4 + len, "more than one response");
                return head;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "closed before the response ended");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Waits (10 s bound) until the `duotone_parked_connections` gauge reads
/// `n`.
async fn parked(p: &Proxy, n: f64) {
    let start = std::time::Instant::now();
    loop {
        let now = sample(&scrape(p).await, "duotone_parked_connections ");
        if now == n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{now} connections parked, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain HTTP/1.1 connection idle past the lane's 1 s grace is parked
/// (its worker's epoll set, no task of its own): its next request is
/// served on it, and it is closed at the keep-alive timeout, not before,
/// its parked count given back.
#[tokio::test]
async fn a_parked_connection_serves_its_next_request_and_closes_at_the_keepalive_timeout() {
    let app = Upstream::start("blue").await;
    let keepalive = Duration::from_secs(3);
    let server = format!("admin_token = \"{TOKEN}\"\n");
    let cfg = one_route(&app, &server, "[limits]\nkeepalive_timeout = \"3s\"\n");
    let p = Proxy::start(&cfg).await;
    let mut c = tokio::net::TcpStream::connect(p.ports.http).await.unwrap();
    let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    for _ in 0..3 {
        c.write_all(get).await.unwrap();
        assert!(one_response(&mut c).await.starts_with("http/1.1 200 ok"));
        parked(&p, 1.0).await;
    }
    c.write_all(get).await.unwrap();
    assert!(one_response(&mut c).await.starts_with("http/1.1 200 ok"));
    let answered = std::time::Instant::now();
    assert!(
        closed_within(&mut c, Duration::from_secs(15)).await,
        "a parked connection left open past its keep-alive timeout"
    );
    // Not before: the timeout runs from the last response (less the
    // moment between the proxy's write and this client's read, bounded
    // generously: a close at the grace's end would be 2 s early).
    let idle = answered.elapsed();
    assert!(
        idle >= keepalive - Duration::from_millis(500),
        "closed after {idle:?}, before the keep-alive timeout"
    );
    parked(&p, 0.0).await;
    let metrics = scrape(&p).await;
    assert_eq!(sample(&metrics, "duotone_downstream_connections "), 0.0);
}

/// A graceful shutdown with a connection parked: a request sent on it as
/// the shutdown begins is answered (before the shutdown is seen, or in the
/// last call it gives a parked connection, as one idle in its task gets),
/// and the connection is then closed, before the process exits.
#[tokio::test]
async fn a_parked_connection_is_served_then_closed_at_shutdown() {
    let app = Upstream::start("blue").await;
    let server = format!("admin_token = \"{TOKEN}\"\ngrace_period = \"10s\"\n");
    let mut p = Proxy::start(&one_route(&app, &server, "")).await;
    let mut c = tokio::net::TcpStream::connect(p.ports.http).await.unwrap();
    let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    c.write_all(get).await.unwrap();
    assert!(one_response(&mut c).await.starts_with("http/1.1 200 ok"));
    parked(&p, 1.0).await;
    p.signal(libc::SIGTERM);
    c.write_all(get).await.unwrap();
    let head = one_response(&mut c).await;
    assert!(head.starts_with("http/1.1 200 ok"), "{head}");
    assert!(
        closed_within(&mut c, Duration::from_secs(10)).await,
        "left open during the shutdown"
    );
    let code = p.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "log:\n{}", p.log());
}

/// Whether `pid` ignores SIGHUP (bit 0 of SigIgn in /proc/PID/status).
fn ignores_sighup(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & 1 == 1)
}

#[tokio::test]
async fn sighup_during_startup_does_not_kill_the_proxy() {
    let app = Upstream::start("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let ports = e2e::proxy::Ports {
        http: std::net::SocketAddr::from(([127, 0, 0, 1], e2e::free_port())),
        https: std::net::SocketAddr::from(([127, 0, 0, 1], e2e::free_port())),
        admin: std::net::SocketAddr::from(([127, 0, 0, 1], e2e::free_port())),
    };
    let file = dir.path().join("duotone.toml");
    std::fs::write(&file, Proxy::render(&config(&app, ""), &ports, dir.path())).unwrap();
    let mut child = tokio::process::Command::new(e2e::proxy::duotone_bin())
        .arg("run")
        .arg("-c")
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    // As soon as the proxy has started to run (SIGHUP ignored), before it
    // is ready: a SIGHUP now must be harmless.
    // (Polled without pauses: startup takes milliseconds, then the reload
    // handler replaces the ignore.)
    let start = std::time::Instant::now();
    while !ignores_sighup(pid) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "SIGHUP is never ignored during startup"
        );
        tokio::task::yield_now().await;
    }
    // SAFETY: kill(2) on our own child's pid.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as i32, libc::SIGHUP);
    }
    assert!(
        e2e::proxy::wait_healthy(ports.admin, Duration::from_secs(20)).await,
        "proxy did not come up after an early SIGHUP"
    );
    assert!(child.try_wait().unwrap().is_none(), "proxy exited");
}
