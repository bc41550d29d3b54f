//! Zero-downtime blue/green at the edge, end to end: flips under load, health
//! gates, weights, persistence across restarts and SIGKILL, admin auth,
//! draining, and the CLI.

use e2e::bluegreen::{summary_ms, FlipLoad};
use e2e::client::{admin, Http};
use e2e::proxy::{run_cli, Proxy};
use e2e::upstream::Upstream;
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "bluegreen-test-token-0123";
const HEALTH: &str = r#"health = { path = "/healthz", interval = "100ms" }"#;

/// One site, one service `api` with the given colors; `server` and
/// `service` are extra lines for those tables.
fn config(server: &str, service: &str, colors: &[(&str, String)]) -> String {
    let colors: String = colors
        .iter()
        .map(|(c, m)| format!("colors.{c} = [\"{m}\"]\n"))
        .collect();
    format!(
        r#"
[server]
http = "{{http}}"
admin = "{{admin}}"
state_dir = "{{state}}"
{server}

[[sites]]
hosts = ["*"]
  [[sites.routes]]
  path = "/"
  service = "api"

[services.api]
live = "blue"
{service}
{colors}
"#
    )
}

fn blue_green(blue: &Upstream, green: &Upstream, server: &str, service: &str) -> String {
    config(
        server,
        service,
        &[("blue", blue.member()), ("green", green.member())],
    )
}

async fn call(p: &Proxy, method: &str, path: &str, body: Option<&str>) -> e2e::client::Resp {
    e2e::admin::call(p, TOKEN, method, path, body).await
}

async fn service(p: &Proxy) -> Value {
    e2e::admin::service(p, TOKEN, "api").await
}

/// Waits until the service JSON satisfies `f`.
async fn wait_service(p: &Proxy, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    e2e::admin::wait_service(p, TOKEN, "api", what, Duration::from_secs(10), f).await
}

fn healthy(v: &Value, color: &str) -> bool {
    v["colors"][color]["healthy"] == Value::Bool(true)
}

async fn body_of(http: &Http, p: &Proxy, path: &str) -> String {
    let r = http.get(&p.url(path)).await.expect("proxy request");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flips_under_load_lose_no_requests() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let p = Proxy::start(&blue_green(
        &blue,
        &green,
        &format!("admin_token = \"{TOKEN}\""),
        "",
    ))
    .await;
    let load = FlipLoad::new("blue", "green");
    let clients = load.spawn(8, &p.url("/"));
    let flips = 100u64;
    // Checked answers to wait for after each flip: 100 × 24 = 2400 at least.
    const PER_FLIP: u64 = 24;
    let (mut latencies, mut calls) = (Vec::new(), Vec::new());
    let api = Http::new();
    let auth = format!("Bearer {TOKEN}");
    for k in 1..=flips {
        let to = load.target(k).to_string();
        let before = load.checked.load(Ordering::SeqCst);
        let t0 = load.begin_flip(k);
        let r = api
            .send(
                "POST",
                &p.admin_url("/v1/services/api/flip"),
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                format!(r#"{{"to":"{to}"}}"#),
            )
            .await
            .expect("flip call");
        calls.push(t0.elapsed());
        assert_eq!(r.status, 200, "flip {k}: {}", r.text());
        assert_eq!(r.json()["live"], to.as_str(), "flip {k}");
        load.end_flip(k);
        // Pace the flips by traffic, not time: let the clients get a few
        // answers in the new state before flipping back.
        let seen = e2e::eventually(Duration::from_secs(10), || {
            let load = load.clone();
            async move {
                let first = load.first_new(k)?;
                (load.checked.load(Ordering::SeqCst) >= before + PER_FLIP).then_some(first)
            }
        })
        .await
        .unwrap_or_else(|| panic!("no traffic reached {to} after flip {k}"));
        latencies.push(seen.saturating_duration_since(t0));
    }
    load.stop();
    for c in clients {
        c.await.expect("client task");
    }
    let (ok, failed) = (
        load.ok.load(Ordering::SeqCst),
        load.failed.load(Ordering::SeqCst),
    );
    let (checked, wrong) = (
        load.checked.load(Ordering::SeqCst),
        load.wrong.load(Ordering::SeqCst),
    );
    let (min, median, max) = summary_ms(&latencies);
    let (cmin, cmedian, cmax) = summary_ms(&calls);
    println!(
        "{flips} flips under 8 keep-alive clients: {ok} ok, {failed} failed, {checked} checked \
         against the live color, {} overlapped a flip; flip latency (call start to first \
         new-color response) min {min:.2} ms, median {median:.2} ms, max {max:.2} ms; \
         flip call (incl. fsync) min {cmin:.2} ms, median {cmedian:.2} ms, max {cmax:.2} ms",
        load.ambiguous.load(Ordering::SeqCst)
    );
    let samples = load.samples.lock().unwrap().clone();
    assert_eq!(failed, 0, "failed requests: {samples:#?}");
    assert_eq!(wrong, 0, "answers from the wrong color: {samples:#?}");
    assert!(checked >= flips * PER_FLIP, "only {checked} checked");
    // Both upstreams really served traffic, and the in-flight counts settle.
    assert!(blue.hits() > 500 && green.hits() > 500);
    let v = wait_service(&p, "in-flight counts back to zero", |v| {
        v["colors"]["blue"]["in_flight"] == 0 && v["colors"]["green"]["in_flight"] == 0
    })
    .await;
    assert_eq!(v["live"], "blue");
}

#[tokio::test]
async fn flip_is_gated_by_health_unless_forced() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    green.set_healthy(false);
    let p = Proxy::start(&blue_green(&blue, &green, "", HEALTH)).await;
    let http = Http::new();
    let v = wait_service(&p, "blue up and green down", |v| {
        healthy(v, "blue") && v["colors"]["green"]["members"][0]["health"] == "down"
    })
    .await;
    assert_eq!(v["live"], "blue");
    assert_eq!(v["colors"]["green"]["healthy"], false);

    // Refused with a reason; nothing changes.
    let r = call(
        &p,
        "POST",
        "/v1/services/api/flip",
        Some(r#"{"to":"green"}"#),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.header("content-type"), "application/json");
    let reason = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.contains("green") && reason.contains("healthy"),
        "{reason}"
    );
    assert_eq!(service(&p).await["live"], "blue");
    assert_eq!(body_of(&http, &p, "/").await, "blue");
    // The empty body means "the other color": refused the same way.
    assert_eq!(
        call(&p, "POST", "/v1/services/api/flip", None).await.status,
        409
    );

    // Forced: flipped, and traffic follows.
    let r = call(
        &p,
        "POST",
        "/v1/services/api/flip",
        Some(r#"{"to":"green","force":true}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["live"], "green");
    assert_eq!(r.json()["colors"]["green"]["live"], true);
    assert_eq!(body_of(&http, &p, "/").await, "green");

    // Empty body flips to the other of two colors (blue is healthy).
    let r = call(&p, "POST", "/v1/services/api/flip", Some("")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["live"], "blue");
    assert_eq!(body_of(&http, &p, "/").await, "blue");

    // Health comes back (rise = 2 checks): the flip is allowed without force.
    green.set_healthy(true);
    wait_service(&p, "green healthy again", |v| healthy(v, "green")).await;
    let r = call(
        &p,
        "POST",
        "/v1/services/api/flip",
        Some(r#"{"to":"green"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(body_of(&http, &p, "/").await, "green");

    // Blue goes down (fall = 3 checks): flipping back is refused.
    blue.set_healthy(false);
    let v = wait_service(&p, "blue down", |v| !healthy(v, "blue")).await;
    assert_eq!(v["colors"]["blue"]["members"][0]["health"], "down");
    let r = call(
        &p,
        "POST",
        "/v1/services/api/flip",
        Some(r#"{"to":"blue"}"#),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(service(&p).await["live"], "green");

    // Unknown colors and bodies are 400; unknown services 404.
    for body in [
        r#"{"to":"purple"}"#,
        r#"{"to":"blue","forse":true}"#,
        r#"{"to":"#,
        r#"["blue"]"#,
    ] {
        let r = call(&p, "POST", "/v1/services/api/flip", Some(body)).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.json()["error"].is_string(), "{body}: {}", r.text());
    }
    let r = call(&p, "POST", "/v1/services/nope/flip", None).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(service(&p).await["live"], "green");
}

#[tokio::test]
async fn a_dead_member_is_ejected_and_gates_the_flip() {
    // No active checks: members count as healthy unless passively ejected.
    let blue = Upstream::start("blue").await;
    let closed = e2e::free_port();
    let p = Proxy::start(&config(
        "",
        "",
        &[
            ("blue", blue.member()),
            ("green", format!("127.0.0.1:{closed}")),
        ],
    ))
    .await;
    let v = service(&p).await;
    assert_eq!(v["colors"]["green"]["healthy"], true, "{v:#}");
    assert_eq!(v["colors"]["green"]["members"][0]["health"], "unknown");
    let r = call(
        &p,
        "POST",
        "/v1/services/api/flip",
        Some(r#"{"to":"green"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The connect failure ejects green's only member.
    let r = Http::new().get(&p.url("/")).await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    let r = call(
        &p,
        "POST",
        "/v1/services/api/flip",
        Some(r#"{"to":"blue"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = service(&p).await;
    assert_eq!(v["colors"]["green"]["members"][0]["ejected"], true, "{v:#}");
    let r = call(
        &p,
        "POST",
        "/v1/services/api/flip",
        Some(r#"{"to":"green"}"#),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(body_of(&Http::new(), &p, "/").await, "blue");
}

#[tokio::test]
async fn weights_split_traffic() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let p = Proxy::start(&blue_green(&blue, &green, "", "")).await;
    let r = call(
        &p,
        "PUT",
        "/v1/services/api/weights",
        Some(r#"{"blue":90,"green":10}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["weights"],
        serde_json::json!({"blue":90,"green":10})
    );
    let v = service(&p).await;
    assert_eq!(v["weights"], serde_json::json!({"blue":90,"green":10}));
    assert_eq!(v["live"], "blue");

    let http = Http::new();
    let mut green_n = 0;
    for _ in 0..1000 {
        match body_of(&http, &p, "/").await.as_str() {
            "green" => green_n += 1,
            "blue" => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!((30..=200).contains(&green_n), "green got {green_n} of 1000");
    let v = service(&p).await;
    assert!(v["colors"]["green"]["requests"].as_u64().unwrap() >= 30);

    for bad in [
        r#"{"blue":90,"purple":10}"#,
        r#"{"blue":0,"green":0}"#,
        r#"{}"#,
        r#"{"blue":-1,"green":10}"#,
        r#"{"blue":"90"}"#,
        r#"{"blue":4294967295,"green":4294967295}"#,
        r#"[90,10]"#,
        "",
    ] {
        let r = call(&p, "PUT", "/v1/services/api/weights", Some(bad)).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(r.json()["error"].is_string(), "{bad}: {}", r.text());
    }
    // Still the good weights.
    assert_eq!(
        service(&p).await["weights"],
        serde_json::json!({"blue":90,"green":10})
    );
    // A flip sends everything to one color again.
    let r = call(
        &p,
        "POST",
        "/v1/services/api/flip",
        Some(r#"{"to":"green"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["weights"], Value::Null);
    for _ in 0..50 {
        assert_eq!(body_of(&http, &p, "/").await, "green");
    }
}

fn saved_live(p: &Proxy) -> String {
    let path = p.state_dir().join("live.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{path:?} does not parse ({e}): {text:?}"));
    v["services"]["api"]["live"]
        .as_str()
        .unwrap_or_else(|| panic!("no live color in {text}"))
        .to_string()
}

#[tokio::test]
async fn live_color_survives_restart_and_sigkill() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let red = Upstream::start("red").await;
    let mut p = Proxy::start(&config(
        &format!("admin_token = \"{TOKEN}\""),
        "",
        &[
            ("blue", blue.member()),
            ("green", green.member()),
            ("red", red.member()),
        ],
    ))
    .await;
    let http = Http::new();
    assert_eq!(body_of(&http, &p, "/").await, "blue");
    let r = call(
        &p,
        "POST",
        "/v1/services/api/flip",
        Some(r#"{"to":"green"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(
        &p,
        "PUT",
        "/v1/services/api/weights",
        Some(r#"{"green":3,"red":1}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Graceful restart: the saved state wins over `live = "blue"` in the file.
    p.signal(libc::SIGTERM);
    assert_eq!(
        p.wait_exit(Duration::from_secs(15)).await,
        Some(0),
        "{}",
        p.log()
    );
    p.spawn().await;
    let v = service(&p).await;
    assert_eq!(v["live"], "green", "{v:#}");
    assert_eq!(
        v["weights"],
        serde_json::json!({"blue":0,"green":3,"red":1})
    );
    let r = call(&p, "POST", "/v1/services/api/flip", Some(r#"{"to":"red"}"#)).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // An acknowledged flip survives SIGKILL right after the answer.
    p.kill();
    p.spawn().await;
    assert_eq!(service(&p).await["live"], "red");
    assert_eq!(body_of(&Http::new(), &p, "/").await, "red");

    // SIGKILL while a task flips round and round (blue → green → red).
    let cycle = ["blue", "green", "red"];
    for round in 0..4u64 {
        let url = p.admin_url("/v1/services/api/flip");
        let acked = Arc::new(std::sync::Mutex::new((None::<usize>, 0u64)));
        let flipper = {
            let acked = acked.clone();
            tokio::spawn(async move {
                let mut i = 0usize;
                loop {
                    let body = format!(r#"{{"to":"{}"}}"#, cycle[i % 3]);
                    match admin("POST", &url, Some(TOKEN), Some(&body)).await {
                        Ok(r) if r.status == 200 => {
                            let mut a = acked.lock().unwrap();
                            *a = (Some(i % 3), a.1 + 1);
                        }
                        _ => return,
                    }
                    i += 1;
                }
            })
        };
        let want = 5 + round * 7;
        e2e::eventually(Duration::from_secs(10), || {
            let acked = acked.clone();
            async move { (acked.lock().unwrap().1 >= want).then_some(()) }
        })
        .await
        .expect("flips acknowledged");
        p.kill();
        flipper.await.expect("flipper");
        let (last, _) = *acked.lock().unwrap();
        let last = last.expect("some flip acknowledged");
        // The file is whole and names the last acknowledged color or the
        // one whose flip was in flight when the process died.
        let saved = saved_live(&p);
        let allowed = [cycle[last], cycle[(last + 1) % 3]];
        assert!(
            allowed.contains(&saved.as_str()),
            "round {round}: saved {saved}, allowed {allowed:?}"
        );
        let leftovers: Vec<_> = std::fs::read_dir(p.state_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        p.spawn().await;
        let v = service(&p).await;
        assert_eq!(v["live"], saved.as_str(), "round {round}");
        assert_eq!(body_of(&Http::new(), &p, "/").await, saved);
        // A temp file left by the kill is cleaned up at start.
        for n in leftovers {
            assert!(!p.state_dir().join(&n).exists(), "{n} left behind");
        }
    }
}

#[tokio::test]
async fn admin_api_requires_the_token() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let p = Proxy::start(&blue_green(
        &blue,
        &green,
        &format!("admin_token = \"{TOKEN}\""),
        "",
    ))
    .await;
    let url = p.admin_url("/v1/services");
    for token in [None, Some("wrong-token-wrong-token"), Some("")] {
        let r = admin("GET", &url, token, None).await.unwrap();
        assert_eq!(r.status, 401, "{token:?}: {}", r.text());
        assert!(r.json()["error"].is_string(), "{}", r.text());
        assert_eq!(r.header("www-authenticate"), "Bearer");
    }
    // Wrong token on a change: refused and nothing changes.
    let r = admin(
        "POST",
        &p.admin_url("/v1/services/api/flip"),
        Some("wrong-token-wrong-token"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    // A token with a different length than the real one.
    let r = admin("GET", &url, Some(&TOKEN[..10]), None).await.unwrap();
    assert_eq!(r.status, 401);
    let r = admin("GET", &url, Some(TOKEN), None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["services"][0]["live"], "blue");
    // The auth scheme is case-insensitive (RFC 9110).
    let lower = format!("bearer {TOKEN}");
    let r = Http::new()
        .get_with(&url, &[("authorization", &lower)])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // /healthz stays open.
    let r = admin("GET", &p.admin_url("/healthz"), None, None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    let r = call(&p, "GET", "/v1/services/nope", None).await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    let r = call(&p, "POST", "/v1/services/api/flip", Some("{not json")).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"].as_str().unwrap().contains("JSON"),
        "{}",
        r.text()
    );
    for (method, path) in [
        ("GET", "/v1/services/api/flip"),
        ("DELETE", "/v1/services/api"),
        ("POST", "/v1/services/api/weights"),
        ("GET", "/v1/reload"),
    ] {
        let r = call(&p, method, path, None).await;
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
        assert!(r.json()["error"].is_string());
    }
    assert_eq!(service(&p).await["live"], "blue");
}

#[test]
fn check_refuses_an_open_admin_listener_without_token() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, server: &str| {
        let path = dir.path().join(name);
        let text = config(server, "", &[("blue", "127.0.0.1:9".into())])
            .replace("{http}", "127.0.0.1:8080")
            .replace("{admin}", "0.0.0.0:9190")
            .replace("{state}", &dir.path().join("state").display().to_string());
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (code, out, err) = run_cli(&["check", "-c", &write("open.toml", "")], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("server.admin") && err.contains("not loopback") && err.contains("admin_token"),
        "{err}"
    );
    let short = write("short.toml", "admin_token = \"short\"");
    let (code, _, err) = run_cli(&["check", "-c", &short], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("at least 16"), "{err}");
    let good = write("good.toml", &format!("admin_token = \"{TOKEN}\""));
    let (code, out, err) = run_cli(&["check", "-c", &good], &[]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flip_drains_the_old_color() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let p = Proxy::start(&blue_green(
        &blue,
        &green,
        &format!("admin_token = \"{TOKEN}\""),
        "",
    ))
    .await;
    let slow = |p: &Proxy| {
        let url = p.url("/slow?ms=1500");
        tokio::spawn(async move {
            let r = Http::new().get(&url).await;
            (r, Instant::now())
        })
    };

    // Through the API.
    let req = slow(&p);
    wait_service(&p, "the slow request in flight on blue", |v| {
        v["colors"]["blue"]["in_flight"].as_i64() >= Some(1)
    })
    .await;
    let r = call(
        &p,
        "POST",
        "/v1/services/api/flip",
        Some(r#"{"to":"green"}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["colors"]["blue"]["in_flight"], 1, "{}", r.text());
    assert_eq!(body_of(&Http::new(), &p, "/").await, "green");
    assert_eq!(service(&p).await["colors"]["blue"]["in_flight"], 1);
    let (r, _) = req.await.unwrap();
    let r = r.expect("slow request");
    assert_eq!((r.status, r.text()), (200, "blue".to_string()));
    wait_service(&p, "blue drained", |v| {
        v["colors"]["blue"]["in_flight"] == 0
    })
    .await;

    // Through the CLI: `flip --drain` returns only once blue is drained.
    let r = call(
        &p,
        "POST",
        "/v1/services/api/flip",
        Some(r#"{"to":"blue"}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    let req = slow(&p);
    wait_service(&p, "the slow request in flight on blue", |v| {
        v["colors"]["blue"]["in_flight"].as_i64() >= Some(1)
    })
    .await;
    let admin_url = p.admin_url("");
    let (code, out, err, cli_done) = tokio::task::spawn_blocking(move || {
        let (code, out, err) = run_cli(
            &["flip", "api", "green", "--drain", "--admin", &admin_url],
            &[("DUOTONE_ADMIN_TOKEN", TOKEN)],
        );
        (code, out, err, Instant::now())
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("blue -> green"), "{out}");
    let (r, slow_done) = req.await.unwrap();
    let r = r.expect("slow request");
    assert_eq!((r.status, r.text()), (200, "blue".to_string()));
    // The CLI returned after the proxy finished the slow response (the
    // client reads it a moment later at most).
    assert!(
        cli_done + Duration::from_millis(300) >= slow_done,
        "CLI returned {:?} before the slow request finished",
        slow_done - cli_done
    );
    assert_eq!(service(&p).await["colors"]["blue"]["in_flight"], 0);
}

#[tokio::test]
async fn cli_status_and_refused_flip() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    green.set_healthy(false);
    let p = Proxy::start(&blue_green(
        &blue,
        &green,
        &format!("admin_token = \"{TOKEN}\""),
        HEALTH,
    ))
    .await;
    wait_service(&p, "blue up and green down", |v| {
        healthy(v, "blue") && v["colors"]["green"]["members"][0]["health"] == "down"
    })
    .await;
    let admin_url = p.admin_url("");
    let env = [
        ("DUOTONE_ADMIN", admin_url.as_str()),
        ("DUOTONE_ADMIN_TOKEN", TOKEN),
    ];
    let (code, out, err) = run_cli(&["status"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("api: live blue"), "{out}");
    let line = |color: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(color))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("blue").contains("healthy") && line("blue").contains("(live)"),
        "{out}"
    );
    assert!(line("green").contains("UNHEALTHY"), "{out}");
    assert!(
        out.contains(&green.member()) && out.contains("down"),
        "{out}"
    );
    let (code, out, _) = run_cli(&["status", "api", "--json"], &env);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).expect("status --json");
    assert_eq!(v[0]["live"], "blue");

    // Refused flip: non-zero exit with the API's reason.
    let (code, out, err) = run_cli(&["flip", "api", "green"], &env);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("409") && err.contains("no healthy member"),
        "{err}"
    );
    // Without the token the CLI says so.
    let (code, _, err) = run_cli(&["status", "--admin", &admin_url], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("401"), "{err}");
    // --force works from the CLI too.
    let (code, out, err) = run_cli(&["flip", "api", "green", "--force"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("blue -> green"), "{out}");
    let (_, out, _) = run_cli(&["status", "api"], &env);
    assert!(out.contains("api: live green"), "{out}");
}
