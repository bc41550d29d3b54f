//! Pause and resume, end to end: requests to a paused service are held at
//! the edge (lane HTTP/1.1, lane HTTP/2, Pingora's path, WebSocket
//! upgrades) and sent on at the resume to the color live then; held past
//! the timeout or over the queue, 503 with `Retry-After`; a restart keeps
//! the pause; `duotone deploy --pause-during` loses no request.

use e2e::bluegreen::{two_colors, GatedColors};
use e2e::client::{admin, Http, Resp};
use e2e::load::{Counts, Load};
use e2e::proxy::{api_config, Proxy};
use e2e::recorder::Recorder;
use e2e::transport::Transport;
use e2e::upstream::{ws_echo, Upstream};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

const TOKEN: &str = "pause-test-token-0123456789";

/// A proxy with `[services.api]` = `service`.
async fn proxy(t: Transport, service: &str) -> Proxy {
    Proxy::start_on(t, &api_config(TOKEN, service)).await
}

/// A proxy in front of one upstream, blue, with the `extra` service lines.
async fn one_color(t: Transport, extra: &str) -> (Proxy, Upstream) {
    let up = Upstream::start("blue").await;
    let p = proxy(
        t,
        &format!("colors.blue = [\"{}\"]\n{extra}\n", up.member()),
    )
    .await;
    (p, up)
}

/// A proxy in front of upstreams blue (live) and green.
async fn blue_green(t: Transport) -> (Proxy, Upstream, Upstream) {
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let p = proxy(t, &two_colors(&blue.member(), &green.member(), "")).await;
    (p, blue, green)
}

async fn call(p: &Proxy, method: &str, path: &str, body: Option<&str>) -> Resp {
    let r = e2e::admin::call(p, TOKEN, method, path, body).await;
    assert!(
        (200..300).contains(&r.status),
        "{method} {path}: {} {}",
        r.status,
        r.text()
    );
    r
}

async fn service(p: &Proxy) -> serde_json::Value {
    call(p, "GET", "/v1/services/api", None).await.json()
}

async fn pause(p: &Proxy) {
    let v = call(p, "POST", "/v1/services/api/pause", Some("{}"))
        .await
        .json();
    assert_eq!(v["paused"], true, "{v:#}");
}

async fn resume(p: &Proxy) {
    // An empty body is fine too.
    let v = call(p, "POST", "/v1/services/api/resume", None)
        .await
        .json();
    assert_eq!(v["paused"], false, "{v:#}");
}

/// Waits until exactly `n` requests are held (fails after 10 s).
async fn wait_held(p: &Proxy, n: u64) {
    let last = std::sync::Mutex::new(serde_json::Value::Null);
    let got = e2e::eventually(Duration::from_secs(10), || async {
        let v = service(p).await;
        *last.lock().unwrap() = v.clone();
        (v["held"] == n).then_some(())
    })
    .await;
    assert!(
        got.is_some(),
        "never {n} held; service: {:#}\nlog:\n{}",
        last.lock().unwrap(),
        p.log()
    );
}

/// The value of the metric line starting with `prefix`.
async fn metric(p: &Proxy, prefix: &str) -> String {
    let text = call(p, "GET", "/metrics", None).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(prefix).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {prefix} in metrics:\n{text}"))
}

/// One request sent in the background, with its client.
fn spawn(
    http: &Http,
    method: &'static str,
    url: String,
    body: &'static str,
) -> JoinHandle<anyhow::Result<Resp>> {
    let http = http.clone();
    tokio::spawn(async move { http.send(method, &url, &[], body).await })
}

/// HTTP/1.1 and h2c, GET and a POST with a body each: on the lane, the
/// h1 ones and the h2 GET are the lane's, the h2 POST Pingora's path's.
fn four_requests(p: &Proxy) -> Vec<(String, JoinHandle<anyhow::Result<Resp>>)> {
    let (h1, h2) = (Http::new(), Http::h2());
    vec![
        ("h1 GET".into(), spawn(&h1, "GET", p.url("/h1-get"), "")),
        (
            "h1 POST".into(),
            spawn(&h1, "POST", p.url("/h1-post"), "h1-body-0123456789"),
        ),
        ("h2 GET".into(), spawn(&h2, "GET", p.url("/h2-get"), "")),
        (
            "h2 POST".into(),
            spawn(&h2, "POST", p.url("/h2-post"), "h2-body-abcdefghij"),
        ),
    ]
}

/// Sends [`four_requests`]; each must be refused with 503 and
/// `Retry-After: retry_after`.
async fn four_refused(p: &Proxy, retry_after: &str) {
    for (name, task) in four_requests(p) {
        let r = task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(r.status, 503, "{name}: {}", r.text());
        assert_eq!(r.header("retry-after"), retry_after, "{name}");
    }
}

/// `duotone_hold_refused_total` of service `api` for `reason`.
async fn refused_total(p: &Proxy, reason: &str) -> String {
    let name = format!("duotone_hold_refused_total{{service=\"api\",reason=\"{reason}\"}}");
    metric(p, &name).await
}

e2e::on_both_transports!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    held_requests_all_succeed_after_resume,
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_flip_during_a_pause_sends_held_requests_to_the_new_color,
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    held_past_the_timeout_get_503_with_retry_after,
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    the_queue_bound_refuses_the_excess_and_the_rest_succeed,
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    websocket_upgrades_are_held_too,
);

async fn held_requests_all_succeed_after_resume(t: Transport) {
    let (blue, green) = (Recorder::start().await, Recorder::start().await);
    let p = proxy(
        t,
        &two_colors(&blue.addr.to_string(), &green.addr.to_string(), ""),
    )
    .await;
    pause(&p).await;
    assert_eq!(metric(&p, "duotone_paused{service=\"api\"}").await, "1");
    let sent = four_requests(&p);
    wait_held(&p, 4).await;
    assert_eq!(
        metric(&p, "duotone_held_requests{service=\"api\"}").await,
        "4"
    );
    let v = service(&p).await;
    // Held requests are in flight for no color: a drain is not held up.
    assert_eq!(v["colors"]["blue"]["in_flight"], 0, "{v:#}");
    assert!(
        blue.take().await.is_empty(),
        "a request reached the app during the pause"
    );
    resume(&p).await;
    for (name, task) in sent {
        let r = task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(r.status, 200, "{name}: {}", r.text());
    }
    let seen: Vec<String> = blue
        .take()
        .await
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    assert_eq!(seen.len(), 4, "{seen:#?}");
    for (path, body) in [
        ("GET /h1-get ", ""),
        ("POST /h1-post ", "h1-body-0123456789"),
        ("GET /h2-get ", ""),
        ("POST /h2-post ", "h2-body-abcdefghij"),
    ] {
        let r = seen
            .iter()
            .find(|r| r.starts_with(path))
            .unwrap_or_else(|| panic!("{path} never reached blue: {seen:#?}"));
        assert!(r.ends_with(&format!("\r\n\r\n{body}")), "{r}");
    }
    assert!(green.take().await.is_empty());
    assert_eq!(service(&p).await["held"], 0);
    assert_eq!(metric(&p, "duotone_paused{service=\"api\"}").await, "0");
}

async fn a_flip_during_a_pause_sends_held_requests_to_the_new_color(t: Transport) {
    let (p, blue, green) = blue_green(t).await;
    // In flight when the pause starts: it finishes normally, on blue.
    let h1 = Http::new();
    let slow = spawn(&h1, "GET", p.url("/slow?ms=1500"), "");
    e2e::eventually(Duration::from_secs(10), || async {
        (blue.hits() == 1).then_some(())
    })
    .await
    .expect("the slow request reached blue");
    pause(&p).await;
    let sent = four_requests(&p);
    wait_held(&p, 4).await;
    let v = e2e::admin::flip(&p, TOKEN, "api", "green").await;
    // A flip keeps the pause.
    assert_eq!((&v["live"], &v["paused"]), (&"green".into(), &true.into()));
    let r = slow.await.unwrap().unwrap();
    assert_eq!((r.status, r.text()), (200, "blue".to_string()));
    assert_eq!(service(&p).await["held"], 4);
    resume(&p).await;
    for (name, task) in sent {
        let r = task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(r.header("x-upstream"), "green", "{name}");
    }
    assert_eq!(blue.hits(), 1, "a held request reached the old color");
    assert_eq!(green.hits(), 4);
}

async fn held_past_the_timeout_get_503_with_retry_after(t: Transport) {
    let (p, up) = one_color(t, r#"pause = { timeout = "1s", retry_after = "7s" }"#).await;
    pause(&p).await;
    let v = service(&p).await;
    assert_eq!(
        v["pause"],
        serde_json::json!({"timeout_ms": 1000, "queue": 1000, "retry_after_s": 7})
    );
    let start = Instant::now();
    four_refused(&p, "7").await;
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "answered before the timeout: {:?}",
        start.elapsed()
    );
    assert_eq!(up.hits(), 0);
    assert_eq!(service(&p).await["held"], 0);
    assert_eq!(refused_total(&p, "timeout").await, "4");
    // Still paused; once resumed, requests go through.
    resume(&p).await;
    let r = Http::new().get(&p.url("/")).await.unwrap();
    assert_eq!((r.status, r.text()), (200, "blue".to_string()));
}

async fn the_queue_bound_refuses_the_excess_and_the_rest_succeed(t: Transport) {
    let (p, up) = one_color(t, r#"pause = { queue = 4, retry_after = "2s" }"#).await;
    pause(&p).await;
    let sent = four_requests(&p);
    wait_held(&p, 4).await;
    // The queue is full: refused at once, on every client.
    four_refused(&p, "2").await;
    assert_eq!(refused_total(&p, "queue").await, "4");
    assert_eq!(service(&p).await["held"], 4);
    resume(&p).await;
    for (name, task) in sent {
        let r = task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!((r.status, r.text()), (200, "blue".to_string()), "{name}");
    }
    assert_eq!(up.hits(), 4);
}

async fn websocket_upgrades_are_held_too(t: Transport) {
    let (p, blue, _green) = blue_green(t).await;
    pause(&p).await;
    let url = format!("ws://{}/ws", p.ports.http);
    let ws = tokio::spawn(async move { tokio_tungstenite::connect_async(url).await });
    wait_held(&p, 1).await;
    e2e::admin::flip(&p, TOKEN, "api", "green").await;
    resume(&p).await;
    let (mut ws, resp) = ws.await.unwrap().expect("handshake after the resume");
    assert_eq!(resp.status(), 101);
    assert_eq!(ws_echo(&mut ws, "hi").await, "green: hi");
    assert_eq!(blue.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_a_pause_comes_back_paused() {
    let (mut p, up) = one_color(Transport::Lane, "").await;
    pause(&p).await;
    p.kill();
    p.spawn().await;
    let v = service(&p).await;
    assert_eq!(v["paused"], true, "{v:#}");
    let sent = four_requests(&p);
    wait_held(&p, 4).await;
    assert_eq!(up.hits(), 0);
    resume(&p).await;
    for (name, task) in sent {
        let r = task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!((r.status, r.text()), (200, "blue".to_string()), "{name}");
    }
    // The resume is persisted too.
    p.kill();
    p.spawn().await;
    assert_eq!(service(&p).await["paused"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_pause_resume_and_status() {
    let (p, _up) = one_color(Transport::Lane, "").await;
    let cli = |args: &'static [&'static str]| e2e::admin::cli(&p, TOKEN, args);
    let (code, out, err) = cli(&["pause", "api"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("paused (0 held)"), "{out}");
    let held = spawn(&Http::new(), "GET", p.url("/"), "");
    wait_held(&p, 1).await;
    let (code, out, err) = cli(&["status", "api"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("api: live blue, paused (1 held)"), "{out}");
    let (code, out, err) = cli(&["resume", "api"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("paused"), "{out}");
    assert_eq!(held.await.unwrap().unwrap().status, 200);
    // Unknown service: 404 with the reason; no token: 401.
    let (code, _, err) = cli(&["pause", "nope"]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("404") && err.contains("unknown service"),
        "{err}"
    );
    let r = admin(
        "POST",
        &p.admin_url("/v1/services/api/pause"),
        None,
        Some("{}"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    let r = admin(
        "GET",
        &p.admin_url("/v1/services/api/pause"),
        Some(TOKEN),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(service(&p).await["paused"], false);
}

/// Blue live and healthy, green's app not started (its health check
/// passes once `green.ready` exists).
async fn deploy_fixture() -> GatedColors {
    let f = GatedColors::start(Transport::Lane.env(), TOKEN, false).await;
    e2e::eventually(Duration::from_secs(10), || async {
        (service(&f.p).await["colors"]["blue"]["healthy"] == true).then_some(())
    })
    .await
    .expect("blue healthy");
    f
}

/// `duotone deploy` to green, started by the fixture's start command and,
/// if `stop`, stopped by its stop command, with `pause_during` run while
/// the service is paused, then `more` options.
async fn deploy(
    f: &GatedColors,
    stop: bool,
    pause_during: &str,
    more: &[&str],
) -> (i32, String, String) {
    let (start, stop_cmd) = (f.start_cmd(), f.stop_cmd());
    let mut args = vec!["--health-timeout", "20s", "--start", &start];
    if stop {
        args.extend(["--stop", &stop_cmd]);
    }
    args.extend(["--pause-during", pause_during]);
    args.extend(more);
    f.deploy(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_pause_during_a_migration_loses_no_request() {
    let f = deploy_fixture().await;
    let GatedColors {
        dir,
        blue,
        green,
        p,
        ..
    } = &f;
    let d = dir.path().display();
    let load = Load::start(&p.url("/"), 8);
    // Some traffic on blue first.
    blue.serves(50, "load on blue").await;
    let migrate = format!("sleep 5 && echo \"{{color}} from {{old}}\" > {d}/migrated");
    let (code, out, err) = deploy(&f, true, &migrate, &[]).await;
    // Traffic on green after the deploy.
    green.serves(50, "load on green").await;
    let Counts {
        sent,
        failed,
        longest_ms: longest,
        samples,
        ..
    } = load.finish().await;
    eprintln!(
        "deploy --pause-during (5 s migration, 8 clients): requests sent {sent}, failed {failed}, \
         longest hold {longest} ms"
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("resumed api after"), "{out}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("migrated")).unwrap(),
        "green from blue\n"
    );
    assert_eq!(failed, 0, "failed requests: {samples:#?}");
    assert!(
        longest >= 4000,
        "no request was held through the migration: longest {longest} ms"
    );
    let v = service(p).await;
    assert_eq!((&v["live"], &v["paused"]), (&"green".into(), &false.into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_pause_during_a_failed_migration_resumes_and_keeps_the_old_color() {
    let f = deploy_fixture().await;
    let GatedColors { dir, blue, p, .. } = &f;
    let load = Load::start(&p.url("/"), 4);
    let (code, out, err) = deploy(&f, true, "sleep 1 && exit 3", &[]).await;
    blue.serves(20, "load on blue after the failed deploy")
        .await;
    let Counts {
        sent,
        failed,
        samples,
        ..
    } = load.finish().await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("command failed"), "{err}");
    assert!(err.contains("blue stays live"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("stopped")).unwrap(),
        "green\n"
    );
    assert!(sent > 0);
    assert_eq!(failed, 0, "{samples:#?}");
    let v = service(p).await;
    assert_eq!((&v["live"], &v["paused"]), (&"blue".into(), &false.into()));

    // A command that runs too long is stopped; the service is resumed.
    let (code, out, err) = deploy(&f, false, "sleep 30", &["--pause-timeout", "1s"]).await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("still running after 1s"), "{err}");
    let v = service(p).await;
    assert_eq!((&v["live"], &v["paused"]), (&"blue".into(), &false.into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_the_pause_stops_the_command_and_resumes() {
    let f = deploy_fixture().await;
    let GatedColors { dir, p, .. } = &f;
    let d = dir.path().display();
    let pidfile = dir.path().join("migrate.pid");
    let child = std::process::Command::new(e2e::proxy::duotone_bin())
        .args(["deploy", "--service", "api", "--health-timeout", "20s"])
        .arg("--start")
        .arg(format!("touch {d}/{{color}}.ready"))
        .arg("--pause-during")
        .arg(format!("echo $$ > {}; sleep 60", pidfile.display()))
        .env("DUOTONE_ADMIN", p.admin_url(""))
        .env("DUOTONE_ADMIN_TOKEN", TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Paused, with the command running.
    let pid = e2e::eventually(Duration::from_secs(20), || async {
        let text = std::fs::read_to_string(&pidfile).ok()?;
        text.trim().parse::<i32>().ok()
    })
    .await
    .expect("the --pause-during command started");
    assert_eq!(service(p).await["paused"], true);
    let held = spawn(&Http::new(), "GET", p.url("/"), "");
    wait_held(p, 1).await;
    // SAFETY: kill(2) on our own child.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(err.contains("blue stays live"), "{err}");
    // The command's process group was stopped.
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    #[allow(unsafe_code)]
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "the --pause-during command is still running");
    let v = service(p).await;
    assert_eq!((&v["live"], &v["paused"]), (&"blue".into(), &false.into()));
    let r = held.await.unwrap().unwrap();
    assert_eq!((r.status, r.text()), (200, "blue".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bluegreen_sh_passes_pause_during_on() {
    let f = deploy_fixture().await;
    let GatedColors { dir, green, p, .. } = &f;
    let d = dir.path().display();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/bluegreen.sh");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(script)
        .args(["api", "--health-timeout", "20s", "--start"])
        .arg(format!("touch {d}/{{color}}.ready"))
        .arg("--pause-during")
        .arg(format!("echo \"{{color}} from {{old}}\" > {d}/migrated"))
        .args(["--pause-timeout", "20s"])
        .env("DUOTONE_BIN", e2e::proxy::duotone_bin())
        .env("DUOTONE_ADMIN", p.admin_url(""))
        .env("DUOTONE_ADMIN_TOKEN", TOKEN);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("resumed api after"), "{text}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("migrated")).unwrap(),
        "green from blue\n"
    );
    let r = Http::new().get(&p.url("/")).await.unwrap();
    assert_eq!((r.status, r.text()), (200, "green".to_string()));
    assert!(green.hits() >= 1);
    assert_eq!(service(p).await["paused"], false);
}
