//! Automatic rollback end to end: `duotone deploy --watch` and the watch
//! API. A new color whose `/healthz` passes but which answers 500 to real
//! requests is flipped back by the edge itself under load; a good one
//! passes; a watch is superseded by a manual flip, cancelled, refused when
//! it makes no sense, judges latency, fails (no flip) when the color to
//! roll back to is down, counts requests on every transport, and ends with
//! a restart (watches live in memory).

use e2e::bluegreen::GatedColors;
use e2e::client::{admin, Http, Resp};
use e2e::load::{Counts, Load};
use e2e::transport::Transport;
use std::time::Duration;

const TOKEN: &str = "rollback-test-token-0123456789";

struct Fixture(GatedColors);

impl std::ops::Deref for Fixture {
    type Target = GatedColors;
    fn deref(&self) -> &GatedColors {
        &self.0
    }
}

impl std::ops::DerefMut for Fixture {
    fn deref_mut(&mut self) -> &mut GatedColors {
        &mut self.0
    }
}

impl Fixture {
    /// Blue is running and live; green is up only if `green_ready`.
    async fn new(t: Transport, green_ready: bool) -> Fixture {
        let f = Fixture(GatedColors::start(t.env(), TOKEN, green_ready).await);
        f.wait(|v| {
            v["colors"]["blue"]["healthy"] == true
                && v["colors"]["green"]["healthy"] == green_ready
                && v["colors"]["green"]["members"][0]["checks"].as_u64() > Some(0)
        })
        .await;
        f
    }

    async fn api(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        e2e::admin::call(&self.p, TOKEN, method, path, body).await
    }

    async fn wait(&self, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        self.0.wait(Duration::from_secs(15), f).await
    }

    /// Waits until the watch has left `watching`; returns the service view.
    async fn watch_ends(&self) -> serde_json::Value {
        self.wait(|v| {
            v["watch"]["state"]
                .as_str()
                .is_some_and(|s| s != "watching")
        })
        .await
    }

    async fn flip(&self, to: &str) {
        e2e::admin::flip(&self.p, TOKEN, "api", to).await;
    }

    async fn answer(&self) -> (u16, String) {
        let r = Http::new().get(&self.p.url("/")).await.unwrap();
        (r.status, r.text())
    }

    /// The value of the sample of `name` whose labels include `labels`.
    async fn metric(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let text = self.api("GET", "/metrics", None).await.text();
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .find(|l| labels.iter().all(|want| l.contains(want)))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }
}

/// The app's own 500, from green, which says so: expected from the bad
/// color until the rollback (anything else but a 200 is a failure).
fn green_500(r: &Resp) -> bool {
    r.status == 500 && r.header("x-upstream") == "green" && r.text() == "green"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_rolls_back_a_color_that_fails_real_requests() {
    let f = Fixture::new(Transport::Lane, false).await;
    // Green starts, passes /healthz, and answers 500 to everything else.
    f.green.set_failing(true);
    let load = Load::start_expecting(&f.p.url("/"), 8, green_500);
    let (code, out, err) = f
        .deploy_started(
            &f.start_cmd(),
            &["--watch", "30s", "--max-error-rate", "2%"],
        )
        .await;
    let Counts {
        ok,
        expected: app_500,
        failed,
        samples,
        ..
    } = load.finish().await;
    eprintln!(
        "rollback under load: {} requests sent, {ok} ok, {app_500} answered 500 by the bad \
         color before the rollback, {failed} failed",
        ok + app_500 + failed
    );
    eprintln!("deploy output:\n{out}{err}");
    assert_ne!(code, 0, "the deploy must fail: {out}{err}");
    assert!(out.contains("ROLLED BACK to blue: error rate"), "{out}");
    assert!(
        err.contains("deploy rolled back: error rate")
            && err.contains("blue is live again, green stopped"),
        "{err}"
    );
    // Every request got an answer: no connection error, no edge 502.
    assert_eq!(failed, 0, "{failed} failed requests: {samples:?}");
    assert!(app_500 > 0, "green never got traffic");
    assert!(ok > 0);
    // Blue is live again and was never stopped; green was drained and stopped.
    let v = f.service().await;
    assert_eq!(v["live"], "blue", "{v:#}");
    let w = &v["watch"];
    assert_eq!(
        (w["state"].as_str(), w["color"].as_str()),
        (Some("rolled_back"), Some("green")),
        "{w:#}"
    );
    assert_eq!(w["rollback_to"], "blue");
    assert!(w["requests"].as_u64() >= Some(20), "{w:#}");
    assert!(w["error_rate"].as_f64() > Some(0.02), "{w:#}");
    assert_eq!(v["colors"]["green"]["in_flight"], 0);
    assert_eq!(f.log("stopped"), "green\n");
    assert!(f.blue.marker.exists() && !f.green.marker.exists());
    assert_eq!(f.answer().await, (200, "blue".to_string()));
    assert_eq!(
        f.metric("duotone_rollbacks_total", &[r#"service="api""#])
            .await,
        Some(1.0)
    );
    assert_eq!(
        f.metric(
            "duotone_watch_decisions_total",
            &[r#"service="api""#, r#"decision="rolled_back""#]
        )
        .await,
        Some(1.0)
    );
    // The decision is logged with its figures.
    let log = f.p.log();
    assert!(
        log.contains("watch rolled_back: error rate") && log.contains("errors="),
        "{log}"
    );
    // `duotone status` shows it.
    let (code, out, err) = e2e::admin::cli(&f.p, TOKEN, &["status", "api"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("watch green (rolls back to blue): rolled_back"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_of_a_good_color_passes_the_watch() {
    let f = Fixture::new(Transport::Lane, false).await;
    let load = Load::start_expecting(&f.p.url("/"), 4, green_500);
    let (code, out, err) = f
        .deploy_started(
            &f.start_cmd(),
            &[
                "--watch",
                "2s",
                "--max-error-rate",
                "0.02",
                "--max-latency",
                "2s",
            ],
        )
        .await;
    let Counts {
        ok,
        expected: app_500,
        failed,
        samples,
        ..
    } = load.finish().await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!((app_500, failed), (0, 0), "{ok} ok; {samples:?}");
    assert!(out.contains("watch passed:"), "{out}");
    assert!(out.contains("api is live on green"), "{out}");
    let v = f.service().await;
    assert_eq!(v["live"], "green");
    assert_eq!(v["watch"]["state"], "passed", "{v:#}");
    assert_eq!(v["watch"]["errors"], 0);
    // The old color was stopped only after the watch passed.
    assert_eq!(f.log("stopped"), "blue\n");
    assert_eq!(f.answer().await, (200, "green".to_string()));
    assert_eq!(
        f.metric(
            "duotone_watch_decisions_total",
            &[r#"service="api""#, r#"decision="passed""#]
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        f.metric("duotone_rollbacks_total", &[r#"service="api""#])
            .await,
        Some(0.0)
    );
}

#[tokio::test]
async fn a_manual_flip_supersedes_a_watch_and_a_watch_can_be_cancelled() {
    let f = Fixture::new(Transport::Lane, true).await;
    f.flip("green").await;
    // Color and rollback color default to the live one and the other one.
    let r = f
        .api("POST", "/v1/services/api/watch", Some(r#"{"for":"60s"}"#))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let w = &r.json()["watch"];
    assert_eq!(
        (
            w["state"].as_str(),
            w["color"].as_str(),
            w["rollback_to"].as_str()
        ),
        (Some("watching"), Some("green"), Some("blue")),
        "{w:#}"
    );
    assert!(w["remaining_ms"].as_u64() > Some(50_000), "{w:#}");
    // A second watch while one runs is refused.
    let r = f
        .api("POST", "/v1/services/api/watch", Some(r#"{"for":"60s"}"#))
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("is running"), "{}", r.text());

    // Someone flips by hand: the watch ends, nothing else happens.
    f.flip("blue").await;
    let v = f.watch_ends().await;
    assert_eq!(v["watch"]["state"], "superseded", "{v:#}");
    assert_eq!(v["live"], "blue");
    assert_eq!(
        f.metric(
            "duotone_watch_decisions_total",
            &[r#"decision="superseded""#]
        )
        .await,
        Some(1.0)
    );

    // Weights count as a change too.
    let r = f
        .api(
            "POST",
            "/v1/services/api/watch",
            Some(r#"{"color":"blue","rollback_to":"green","for":"60s"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    e2e::admin::set_weights(&f.p, TOKEN, "api", r#"{"blue":90,"green":10}"#).await;
    assert_eq!(f.watch_ends().await["watch"]["state"], "superseded");

    // Cancelled through the API (DELETE); a second DELETE has nothing to end.
    let r = f
        .api(
            "POST",
            "/v1/services/api/watch",
            Some(r#"{"color":"green","rollback_to":"blue","for":"60s"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = f.api("DELETE", "/v1/services/api/watch", Some("{}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["watch"]["state"], "cancelled");
    let r = f.api("DELETE", "/v1/services/api/watch", Some("{}")).await;
    assert_eq!(r.status, 409, "{}", r.text());
    let r = f.api("GET", "/v1/services/api/watch", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "cancelled");

    // Refusals: 4xx with a reason.
    let r = f
        .api(
            "POST",
            "/v1/services/api/watch",
            Some(r#"{"for":"60s","max_error_rate":5}"#),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("max_error_rate"), "{}", r.text());
    for (body, status) in [
        (r#"{"max_error_rate":0.1}"#, 400),
        (r#"{"for":"soon"}"#, 400),
        (r#"{"for":"60s","colour":"green"}"#, 400),
        (r#"{"for":"60s","color":"red"}"#, 400),
        (
            r#"{"for":"60s","color":"green","rollback_to":"green"}"#,
            400,
        ),
    ] {
        let r = f.api("POST", "/v1/services/api/watch", Some(body)).await;
        assert_eq!(r.status, status, "{body}: {}", r.text());
    }
    // Back to one live color: green takes no traffic, nothing to watch.
    f.flip("blue").await;
    let r = f
        .api(
            "POST",
            "/v1/services/api/watch",
            Some(r#"{"color":"green","for":"60s"}"#),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("takes no traffic"), "{}", r.text());
    let r = f
        .api("POST", "/v1/services/nope/watch", Some(r#"{"for":"60s"}"#))
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    // Behind the admin token like everything else.
    let r = admin(
        "POST",
        &f.p.admin_url("/v1/services/api/watch"),
        None,
        Some(r#"{"for":"60s"}"#),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    let r = f.api("PUT", "/v1/services/api/watch", Some("{}")).await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn a_slow_color_is_rolled_back_and_a_refused_rollback_fails_without_a_flip() {
    let f = Fixture::new(Transport::Lane, true).await;
    f.green.set_delay(Duration::from_millis(300));
    f.flip("green").await;
    let r = f
        .api(
            "POST",
            "/v1/services/api/watch",
            Some(r#"{"for":"60s","max_error_rate":1,"max_latency":"100ms","min_requests":5}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let http = Http::new();
    let url = f.p.url("/");
    let answers = futures_util::future::join_all((0..5).map(|_| http.get(&url))).await;
    for a in answers {
        let a = a.unwrap();
        assert_eq!((a.status, a.text()), (200, "green".to_string()));
    }
    let v = f.watch_ends().await;
    let w = &v["watch"];
    assert_eq!(w["state"], "rolled_back", "{v:#}");
    assert!(
        w["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("p99 latency 3")),
        "{w:#}"
    );
    assert!(w["p99_ms"].as_f64() >= Some(300.0), "{w:#}");
    assert_eq!(v["live"], "blue");

    // Again, but blue is down by the time green fails: the rollback is
    // refused (as a flip to a color without a healthy member is), so the
    // watch fails and green stays live.
    f.green.set_delay(Duration::ZERO);
    f.green.set_failing(true);
    f.flip("green").await;
    std::fs::remove_file(&f.blue.marker).unwrap();
    f.wait(|v| v["colors"]["blue"]["healthy"] == false).await;
    let r = f
        .api(
            "POST",
            "/v1/services/api/watch",
            Some(r#"{"for":"60s","min_requests":5}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for _ in 0..5 {
        assert_eq!(f.answer().await, (500, "green".to_string()));
    }
    let v = f.watch_ends().await;
    let w = &v["watch"];
    assert_eq!(w["state"], "failed", "{v:#}");
    let reason = w["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("the rollback to blue was refused") && reason.contains("no healthy member"),
        "{reason}"
    );
    assert_eq!(v["live"], "green");
    assert_eq!(
        f.metric("duotone_rollbacks_total", &[r#"service="api""#])
            .await,
        Some(1.0)
    );
    assert_eq!(
        f.metric("duotone_watch_decisions_total", &[r#"decision="failed""#])
            .await,
        Some(1.0)
    );
}

e2e::on_both_transports!(
    #[tokio::test]
    a_watch_counts_every_transport
);
/// The counters a watch judges are fed by every client kind: HTTP/1.1 and
/// HTTP/2 GETs (the lane, or Pingora's path with the lane off) and a POST
/// with a body (Pingora's path either way).
async fn a_watch_counts_every_transport(t: Transport) {
    let f = Fixture::new(t, true).await;
    f.green.set_failing(true);
    f.flip("green").await;
    let r = f
        .api(
            "POST",
            "/v1/services/api/watch",
            Some(r#"{"for":"60s","max_error_rate":0.5,"min_requests":12}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let url = f.p.url("/");
    let counted = |n: u64| {
        let f = &f;
        async move {
            f.wait(|v| v["watch"]["requests"] == n && v["watch"]["errors"] == n)
                .await
        }
    };
    let h1 = Http::new();
    for _ in 0..4 {
        assert_eq!(h1.get(&url).await.unwrap().status, 500);
    }
    counted(4).await;
    let h2 = Http::h2();
    for _ in 0..4 {
        let r = h2.get(&url).await.unwrap();
        assert_eq!((r.status, r.text()), (500, "green".to_string()));
    }
    counted(8).await;
    // Still watching: 8 is below min_requests.
    assert_eq!(f.service().await["watch"]["state"], "watching");
    for _ in 0..4 {
        let r = h1
            .send("POST", &url, &[("content-type", "text/plain")], "a body")
            .await
            .unwrap();
        assert_eq!(r.status, 500);
    }
    let v = f.watch_ends().await;
    assert_eq!(v["watch"]["state"], "rolled_back", "{t}: {v:#}");
    assert_eq!(v["watch"]["requests"], 12, "{t}: {v:#}");
    assert_eq!(v["live"], "blue");
    assert_eq!(f.answer().await, (200, "blue".to_string()));
}

#[tokio::test]
async fn a_restart_ends_a_watch_and_keeps_the_live_color() {
    let mut f = Fixture::new(Transport::Lane, true).await;
    f.flip("green").await;
    let r = f
        .api("POST", "/v1/services/api/watch", Some(r#"{"for":"60s"}"#))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    f.p.kill();
    f.p.spawn().await;
    let v = f.service().await;
    assert_eq!(v["live"], "green", "{v:#}");
    assert!(v.get("watch").is_none(), "{v:#}");
    let r = f.api("GET", "/v1/services/api/watch", None).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(f.answer().await, (200, "green".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_held_by_a_pause_is_not_the_colors_latency() {
    let f = Fixture::new(Transport::Lane, true).await;
    f.flip("green").await;
    let r = f
        .api(
            "POST",
            "/v1/services/api/watch",
            Some(r#"{"for":"60s","max_latency":"400ms","min_requests":3}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = f.api("POST", "/v1/services/api/pause", Some("{}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let url = f.p.url("/");
    let held: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Http::new().get(&url).await })
        })
        .collect();
    f.wait(|v| v["held"] == 3).await;
    // Held well past max_latency (the pause, as a migration would).
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = f.api("POST", "/v1/services/api/resume", Some("{}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for h in held {
        let r = h.await.unwrap().unwrap();
        assert_eq!((r.status, r.text()), (200, "green".to_string()));
    }
    let v = f.wait(|v| v["watch"]["requests"] == 3).await;
    let w = &v["watch"];
    assert_eq!(w["state"], "watching", "{w:#}");
    assert!(w["p99_ms"].as_f64() < Some(400.0), "{w:#}");
    // (Without leaving the hold out, p99_ms above is over 800.)
    let r = f.api("DELETE", "/v1/services/api/watch", Some("{}")).await;
    assert_eq!(r.json()["watch"]["state"], "cancelled", "{}", r.text());
    assert_eq!(f.service().await["live"], "green");
}
