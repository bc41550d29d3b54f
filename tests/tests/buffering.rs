//! Request and response buffering (#18), end to end in front of real
//! gunicorn sync workers (`tests/apps/edge_app.py`): slow clients cannot
//! tie up the app, chunked uploads reach it with a Content-Length, bodies
//! past `[buffering] memory` go through a temp file that leaves nothing on
//! disk, an unwritable buffer dir gives a clean 5xx, and what must stream
//! (SSE, `X-Accel-Buffering: no`, WebSockets) still streams.
//!
//! Nothing here asserts a duration: a held client moves on only when the
//! test says so, and the order in which things complete is what is checked
//! (timeouts are failure limits only). gunicorn comes from the python that
//! `DUOTONE_TEST_PYTHON` names (`./dev test` sets it); without it each
//! test prints a SKIPPED notice, unless `DUOTONE_REQUIRE_GUNICORN=1`.

use e2e::apps::{
    big_body, gunicorn_or_skip, sha256_hex, upload_body, AppDir, AppServer, Bind, Nginx,
};
use e2e::client::{admin, Http, Resp};
use e2e::held::{HeldDownload, HeldUpload, Streamed};
use e2e::proxy::Proxy;
use e2e::transport::Transport;
use e2e::upstream::Upstream;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;

const TOKEN: &str = "buffering-test-token-0123456789";
/// How long a request that must complete may take before the test fails.
const LIMIT: Duration = Duration::from_secs(10);
/// The pause between the pieces of a slow upload (its shape, not a timing).
const PACE: Duration = Duration::from_millis(10);
const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// The one config of this file: a default site whose `/` route goes to
/// the service `app` (`members` in its blue color), `route` as extra lines
/// of that route, and `buffering` as the body of a `[buffering]` table
/// (none: the defaults).
fn config(members: &[String], buffering: Option<&str>, route: &str) -> String {
    let members = members
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let buffering = buffering
        .map(|b| format!("[buffering]\n{b}\n"))
        .unwrap_or_default();
    format!(
        r#"
[server]
http = "{{http}}"
admin = "{{admin}}"
state_dir = "{{state}}"
admin_token = "{TOKEN}"

{buffering}
[[sites]]
hosts = ["*"]
  [[sites.routes]]
  path = "/"
  service = "app"
  {route}

[services.app]
colors.blue = [{members}]
"#
    )
}

/// gunicorn with `workers` sync workers on TCP, and its app dir.
async fn gunicorn(test: &str, workers: u32) -> Option<(AppServer, AppDir)> {
    let python = gunicorn_or_skip(test)?;
    let app = AppDir::new();
    let g = AppServer::gunicorn(&python, Bind::tcp(), workers, "blue", &app).await;
    Some((g, app))
}

/// What the clients talk to: Duotone, or nginx for the harness checks.
trait Front {
    /// Its plain HTTP listener.
    fn addr(&self) -> SocketAddr;
    /// Its log.
    fn log(&self) -> String;
    /// A URL on it.
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }
}

impl Front for Proxy {
    fn addr(&self) -> SocketAddr {
        self.ports.http
    }
    fn log(&self) -> String {
        Proxy::log(self)
    }
}

/// An app server's own listener (for checks of the harness).
struct Direct(SocketAddr);

impl Front for Direct {
    fn addr(&self) -> SocketAddr {
        self.0
    }
    fn log(&self) -> String {
        String::new()
    }
}

impl Front for Nginx {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn log(&self) -> String {
        Nginx::log(self)
    }
}

/// What the app saw and the proxy logged, for assertion messages.
fn context(p: &impl Front, g: &AppServer, app: &AppDir) -> String {
    format!(
        "app events: {:?}\nproxy log:\n{}\ngunicorn log:\n{}",
        app.events(),
        p.log(),
        g.log()
    )
}

/// Checks an `/upload` echo: status 200, `len` bytes with `body`'s sha256.
fn assert_upload(r: &Resp, body: &[u8], what: &str) -> serde_json::Value {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    let v = r.json();
    assert_eq!(v["len"], body.len(), "{what}: {v}");
    assert_eq!(v["sha256"], sha256_hex(body), "{what}: {v}");
    v
}

async fn scrape(p: &Proxy) -> String {
    admin("GET", &p.admin_url("/metrics"), Some(TOKEN), None)
        .await
        .map(|r| r.text())
        .unwrap_or_default()
}

/// The sum of the samples of `metric` whose labels contain `label` (""
/// for all); `None` when there is none.
fn metric(metrics: &str, metric: &str, label: &str) -> Option<f64> {
    let values: Vec<f64> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Asks for 16 MiB and reads none of it (more than the proxy's socket
/// send buffer takes, 4 MiB at most here) until the app is done with it:
/// only a buffering proxy lets it finish.
async fn unread_download(p: &Proxy, g: &AppServer, app: &AppDir, t: Transport) -> HeldDownload {
    let h = HeldDownload::start(p.ports.http, "app.test", "/big?mb=16")
        .await
        .unwrap();
    let done = e2e::eventually(3 * LIMIT, || async {
        (app.count("big end") == 1).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "{t}: the app could not finish an unread 16 MiB response\n{}",
        context(p, g, app)
    );
    h
}

/// Starts a 1 MiB upload of `body` to `/upload` and sends its first half.
async fn half_upload(p: &Proxy, body: &[u8]) -> HeldUpload {
    let mut u = HeldUpload::start(p.ports.http, "app.test", "/upload", Some(MIB))
        .await
        .unwrap();
    tokio::time::timeout(LIMIT, u.send(&body[..MIB / 2], 64 * KIB, Duration::ZERO))
        .await
        .expect("first half taken")
        .unwrap();
    u
}

/// Sends the second half of [`half_upload`]'s body and checks what the
/// app got.
async fn rest_of_upload(mut u: HeldUpload, body: &[u8], t: Transport) {
    tokio::time::timeout(LIMIT, u.send(&body[MIB / 2..], 64 * KIB, Duration::ZERO))
        .await
        .expect("second half taken")
        .unwrap();
    let r = u.finish(LIMIT).await.unwrap();
    assert_upload(&r, body, t.name());
}

/// The entries of the buffer dir (temp files are opened with O_TMPFILE,
/// so there should never be any).
fn entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

e2e::on_both_transports!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    slow_uploads_do_not_tie_up_gunicorn
);
/// The issue's first scenario: 4 clients upload 1 MiB slowly to gunicorn's
/// 2 sync workers. With the default request buffering the proxy takes each
/// body itself, so a plain GET completes while all four are held half way,
/// and the app sees no upload until its body is complete.
async fn slow_uploads_do_not_tie_up_gunicorn(t: Transport) {
    let Some((g, app)) = gunicorn("slow_uploads_do_not_tie_up_gunicorn", 2).await else {
        return;
    };
    let p = Proxy::start_on(t, &config(&[g.member()], None, "")).await;
    slow_uploads(&p, t.name(), &g, &app).await;
}

async fn slow_uploads(p: &impl Front, t: &str, g: &AppServer, app: &AppDir) {
    let body = upload_body(MIB);
    let mut uploads = Vec::new();
    for i in 0..4 {
        let mut u = HeldUpload::start(p.addr(), "app.test", "/upload", Some(MIB))
            .await
            .unwrap();
        // A buffering proxy takes the body whatever the app does; one that
        // streams stops taking it once gunicorn's workers are busy.
        tokio::time::timeout(LIMIT, u.send(&body[..MIB / 2], 64 * KIB, PACE))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{t}: the proxy stopped taking upload {i}'s body half way (streaming to a \
                     busy app instead of buffering?)\n{}",
                    context(p, g, app)
                )
            })
            .unwrap();
        uploads.push(u);
    }

    // All four are held half way: a plain GET must get through.
    let r = Http::new().get(&p.url("/")).await.unwrap_or_else(|e| {
        panic!(
            "{t}: a plain GET did not complete while 4 slow uploads were held: {e:#}\n{}",
            context(p, g, app)
        )
    });
    assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{t}");
    // Ordering: the GET completed while every upload was still unanswered.
    assert!(uploads.iter().all(|u| !u.is_finished()), "{t}");
    assert_eq!(
        app.count("upload start"),
        0,
        "{t}: the app saw an upload before its body was complete\n{}",
        context(p, g, app)
    );

    for u in &mut uploads {
        tokio::time::timeout(LIMIT, u.send(&body[MIB / 2..], 64 * KIB, PACE))
            .await
            .expect("rest of the body taken")
            .unwrap();
    }
    for (i, u) in uploads.into_iter().enumerate() {
        let r = u
            .finish(3 * LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{t}: upload {i}: {e:#}\n{}", context(p, g, app)));
        let v = assert_upload(&r, &body, &format!("{t}: upload {i}"));
        assert_eq!(v["content_length"], MIB.to_string(), "{t}: {v}");
    }
}

e2e::on_both_transports!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    unread_large_responses_do_not_tie_up_gunicorn
);
/// The issue's second scenario: 3 clients ask for 32 MiB and read none of
/// it. With the default response buffering the proxy takes each response
/// as fast as gunicorn writes it, so both sync workers are free again: the
/// app finishes all three and a plain GET completes, all while no client
/// has read a byte. Then each client still gets its whole response.
async fn unread_large_responses_do_not_tie_up_gunicorn(t: Transport) {
    let Some((g, app)) = gunicorn("unread_large_responses_do_not_tie_up_gunicorn", 2).await else {
        return;
    };
    let p = Proxy::start_on(t, &config(&[g.member()], None, "")).await;
    unread_responses(&p, t.name(), &g, &app).await;
}

async fn unread_responses(p: &impl Front, t: &str, g: &AppServer, app: &AppDir) {
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            HeldDownload::start(p.addr(), "app.test", "/big?mb=32")
                .await
                .unwrap(),
        );
    }
    // Both workers have taken one of them (the third waits or follows).
    let started = e2e::eventually(3 * LIMIT, || async {
        (app.count("big start") >= 2).then_some(())
    })
    .await;
    assert!(
        started.is_some(),
        "{t}: the app never started two /big responses\n{}",
        context(p, g, app)
    );

    let r = Http::new().get(&p.url("/")).await.unwrap_or_else(|e| {
        panic!(
            "{t}: a plain GET did not complete while 3 clients left 32 MiB responses unread: \
             {e:#}\n{}",
            context(p, g, app)
        )
    });
    assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{t}");
    // The app wrote all three responses to the end, though no client read.
    let ended = e2e::eventually(6 * LIMIT, || async {
        (app.count("big end") == 3).then_some(())
    })
    .await;
    assert!(
        ended.is_some(),
        "{t}: the app could not finish the three unread responses\n{}",
        context(p, g, app)
    );

    let want = big_body(32 * MIB);
    let sha = sha256_hex(&want);
    for (i, h) in held.into_iter().enumerate() {
        let r = h
            .read(6 * LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{t}: download {i}: {e:#}\n{}", context(p, g, app)));
        assert_eq!(r.status, 200, "{t}: download {i}");
        assert_eq!(r.body.len(), want.len(), "{t}: download {i}");
        assert_eq!(sha256_hex(&r.body), sha, "{t}: download {i}");
    }
}

e2e::on_both_transports!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    chunked_upload_reaches_gunicorn_with_a_content_length
);
/// A chunked upload larger than `[buffering] memory` arrives at the app
/// with a Content-Length and no Transfer-Encoding, byte for byte, and with
/// X-Forwarded-Port.
async fn chunked_upload_reaches_gunicorn_with_a_content_length(t: Transport) {
    let Some((g, app)) = gunicorn("chunked_upload_reaches_gunicorn_with_a_content_length", 2).await
    else {
        return;
    };
    let p = Proxy::start_on(t, &config(&[g.member()], Some(r#"memory = "16KiB""#), "")).await;
    let v = chunked_upload(&p, t.name(), &g, &app).await;
    assert_eq!(
        v["forwarded_port"],
        p.ports.http.port().to_string(),
        "{t}: {v}"
    );
}

/// Sends a chunked upload; checks what the app saw; returns its echo.
async fn chunked_upload(p: &impl Front, t: &str, g: &AppServer, app: &AppDir) -> serde_json::Value {
    let body = upload_body(256 * KIB + 123);
    let r = e2e::held::chunked_upload(p.addr(), "app.test", "/upload", &body, 16 * KIB, LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{t}: {e:#}\n{}", context(p, g, app)));
    let v = assert_upload(&r, &body, t);
    assert_eq!(v["content_length"], body.len().to_string(), "{t}: {v}");
    assert_eq!(v["transfer_encoding"], "", "{t}: {v}");
    v
}

/// Reads a streaming view through the proxy: the first event must arrive
/// while the app is still waiting for the test's go-ahead to send the
/// second. Returns the finished stream.
async fn stream_in_steps(
    p: &impl Front,
    app: &AppDir,
    path: &str,
    key: &str,
    marks: [&str; 3],
) -> Streamed {
    let mut s = Streamed::get(p.addr(), "app.test", path, LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{path}: no response head: {e:#}\n{}", p.log()));
    assert_eq!(s.status, 200, "{path}");
    assert!(
        s.read_until(marks[0], LIMIT).await,
        "{path}: the first event did not reach the client before the app was let to send the \
         second (buffered?); got {:?}",
        s.text()
    );
    assert!(!s.text().contains(marks[1]), "{path}: {:?}", s.text());
    app.go_ahead(key, 2);
    assert!(
        s.read_until(marks[1], LIMIT).await,
        "{path}: second event: {:?}",
        s.text()
    );
    assert!(!s.text().contains(marks[2]), "{path}: {:?}", s.text());
    app.go_ahead(key, 3);
    assert!(s.read_to_end(LIMIT).await, "{path}: end: {:?}", s.text());
    s
}

e2e::on_both_transports!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    server_sent_events_are_not_buffered
);
/// A `text/event-stream` view streams through a route with buffering on:
/// each event reaches the client before the app may send the next.
async fn server_sent_events_are_not_buffered(t: Transport) {
    let Some((g, app)) = gunicorn("server_sent_events_are_not_buffered", 2).await else {
        return;
    };
    let route = "buffer_requests = true\n  buffer_responses = true";
    let p = Proxy::start_on(t, &config(&[g.member()], None, route)).await;
    let s = stream_in_steps(
        &p,
        &app,
        "/sse?key=sse&n=3",
        "sse",
        [
            "data: event 1\n\n",
            "data: event 2\n\n",
            "data: event 3\n\n",
        ],
    )
    .await;
    assert!(
        s.header("content-type").starts_with("text/event-stream"),
        "{t}: {:?}",
        s.headers
    );
    assert_eq!(
        s.text(),
        "data: event 1\n\ndata: event 2\n\ndata: event 3\n\n",
        "{t}"
    );
}

e2e::on_both_transports!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    x_accel_buffering_no_streams_and_is_not_passed_on
);
/// A response with `X-Accel-Buffering: no` (Django's streaming views)
/// streams like SSE, and the field itself is not passed to the client.
async fn x_accel_buffering_no_streams_and_is_not_passed_on(t: Transport) {
    let Some((g, app)) = gunicorn("x_accel_buffering_no_streams_and_is_not_passed_on", 2).await
    else {
        return;
    };
    let p = Proxy::start_on(t, &config(&[g.member()], None, "")).await;
    x_accel_no(&p, t.name(), &app).await;
}

async fn x_accel_no(p: &impl Front, t: &str, app: &AppDir) {
    let s = stream_in_steps(
        p,
        app,
        "/stream-no-buffer?key=nb&n=3",
        "nb",
        ["line 1\n", "line 2\n", "line 3\n"],
    )
    .await;
    assert_eq!(s.text(), "line 1\nline 2\nline 3\n", "{t}");
    assert!(
        s.headers.get("x-accel-buffering").is_none(),
        "{t}: X-Accel-Buffering reached the client: {:?}",
        s.headers
    );
}

e2e::on_both_transports!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    websockets_still_work_with_buffering_on
);
/// A WebSocket upgrade is never buffered: messages (one larger than
/// `[buffering] memory`) go both ways through a route buffering both.
async fn websockets_still_work_with_buffering_on(t: Transport) {
    let up = Upstream::start("app").await;
    let route = "buffer_requests = true\n  buffer_responses = true";
    let p = Proxy::start_on(
        t,
        &config(&[up.member()], Some(r#"memory = "16KiB""#), route),
    )
    .await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", p.ports.http))
        .await
        .unwrap_or_else(|e| panic!("{t}: websocket handshake: {e}\n{}", p.log()));
    assert_eq!(resp.status(), 101, "{t}");
    let large = "x".repeat(100 * KIB);
    for msg in ["ping 1", "ping 2", large.as_str()] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg))
            .await
            .unwrap();
        let got = tokio::time::timeout(LIMIT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("{t}: no echo of a {}-byte message", msg.len()))
            .expect("stream open")
            .expect("message");
        assert_eq!(
            got.into_text().unwrap().as_str(),
            format!("app: {msg}"),
            "{t}"
        );
    }
    ws.close(None).await.unwrap();
}

e2e::on_both_transports!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    bodies_past_the_memory_threshold_use_a_temp_file_that_leaves_nothing
);
/// A request body and a response body larger than `[buffering] memory`
/// (16 KiB here) are held on disk (`duotone_buffered_bytes{where="disk"}`
/// rises while the test holds them), arrive whole, and leave nothing in
/// the buffer dir, during or after (temp files are never named), with both
/// gauges back at 0.
async fn bodies_past_the_memory_threshold_use_a_temp_file_that_leaves_nothing(t: Transport) {
    let Some((g, app)) = gunicorn(
        "bodies_past_the_memory_threshold_use_a_temp_file_that_leaves_nothing",
        2,
    )
    .await
    else {
        return;
    };
    let buffers = tempfile::tempdir().unwrap();
    let dir = buffers.path().display().to_string();
    let buffering = format!("dir = \"{dir}\"\nmemory = \"16KiB\"");
    let p = Proxy::start_on(t, &config(&[g.member()], Some(&buffering), "")).await;
    let on_disk = || async {
        metric(
            &scrape(&p).await,
            "duotone_buffered_bytes",
            "where=\"disk\"",
        )
        .filter(|v| *v > 0.0)
    };

    // A request body, held half way: past 16 KiB, so on disk.
    let body = upload_body(MIB);
    let u = half_upload(&p, &body).await;
    let disk = e2e::eventually(LIMIT, on_disk).await;
    assert!(
        disk.is_some(),
        "{t}: duotone_buffered_bytes{{where=\"disk\"}} never rose while a 1 MiB upload was held \
         half way:\n{}\n{}",
        scrape(&p).await,
        context(&p, &g, &app)
    );
    assert_eq!(
        entries(buffers.path()),
        Vec::<String>::new(),
        "{t}: named temp file"
    );
    assert_eq!(
        app.count("upload start"),
        0,
        "{t}: the app saw a partial upload"
    );
    rest_of_upload(u, &body, t).await;

    // A response body the client does not read (more than the proxy's
    // socket send buffer takes, 4 MiB at most here): on disk once the app
    // is done.
    let h = unread_download(&p, &g, &app, t).await;
    assert!(
        e2e::eventually(LIMIT, on_disk).await.is_some(),
        "{t}: an unread 16 MiB response is not on disk:\n{}",
        scrape(&p).await
    );
    assert_eq!(
        entries(buffers.path()),
        Vec::<String>::new(),
        "{t}: named temp file"
    );
    let r = h.read(3 * LIMIT).await.unwrap();
    assert_eq!(r.status, 200, "{t}");
    assert_eq!(sha256_hex(&r.body), sha256_hex(&big_body(16 * MIB)), "{t}");

    // Afterwards: nothing buffered, nothing left.
    let released = e2e::eventually(LIMIT, || async {
        let m = scrape(&p).await;
        let mem = metric(&m, "duotone_buffered_bytes", "where=\"memory\"")?;
        let disk = metric(&m, "duotone_buffered_bytes", "where=\"disk\"")?;
        (mem == 0.0 && disk == 0.0).then_some(())
    })
    .await;
    assert!(
        released.is_some(),
        "{t}: buffered bytes not back to 0:\n{}",
        scrape(&p).await
    );
    assert_eq!(entries(buffers.path()), Vec::<String>::new(), "{t}");
}

e2e::on_both_transports!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    routes_can_turn_buffering_off
);
/// `buffer_requests = false`: an upload reaches the app while the client
/// is still sending it. `buffer_responses = false`: a response the client
/// does not read for a while never goes to a temp file (with buffering on
/// it would: `bodies_past_the_memory_threshold_use_a_temp_file_that_leaves_nothing`).
async fn routes_can_turn_buffering_off(t: Transport) {
    let Some((g, app)) = gunicorn("routes_can_turn_buffering_off", 2).await else {
        return;
    };
    let buffering = "memory = \"16KiB\"";
    let off = "buffer_requests = false\n  buffer_responses = false";
    let p = Proxy::start_on(t, &config(&[g.member()], Some(buffering), off)).await;

    let body = upload_body(MIB);
    let u = half_upload(&p, &body).await;
    let started = e2e::eventually(LIMIT, || async {
        (app.count("upload start") == 1).then_some(())
    })
    .await;
    assert!(
        started.is_some(),
        "{t}: with buffer_requests = false the app never saw the upload while it was held\n{}",
        context(&p, &g, &app)
    );
    assert!(!u.is_finished(), "{t}");
    rest_of_upload(u, &body, t).await;

    // 4 MiB, not read until the app has written what the socket buffers
    // take: streamed, so nothing spills to disk.
    let h = HeldDownload::start(p.ports.http, "app.test", "/big?mb=4")
        .await
        .unwrap();
    e2e::eventually(LIMIT, || async {
        (app.count("big start") == 1).then_some(())
    })
    .await
    .expect("the app started the response");
    let r = h.read(3 * LIMIT).await.unwrap();
    assert_eq!(r.body.len(), 4 * MIB, "{t}");
    let spilled = metric(&scrape(&p).await, "duotone_buffer_spilled_bytes_total", "");
    assert_eq!(spilled, Some(0.0), "{t}: a response went to a temp file");
}

e2e::on_both_transports!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    streamed_uploads_still_get_buffered_responses
);
/// `buffer_requests = false` alone: a chunked upload goes to the app as it
/// arrives (chunked, whole), while responses stay buffered: one the client
/// does not read goes to a temp file and the app is done with it.
async fn streamed_uploads_still_get_buffered_responses(t: Transport) {
    let Some((g, app)) = gunicorn("streamed_uploads_still_get_buffered_responses", 2).await else {
        return;
    };
    let buffering = "memory = \"16KiB\"";
    let p = Proxy::start_on(
        t,
        &config(&[g.member()], Some(buffering), "buffer_requests = false"),
    )
    .await;

    let body = upload_body(256 * KIB + 123);
    let r = e2e::held::chunked_upload(p.ports.http, "app.test", "/upload", &body, 16 * KIB, LIMIT)
        .await
        .unwrap();
    let v = assert_upload(&r, &body, t.name());
    assert_eq!(
        v["transfer_encoding"], "chunked",
        "{t}: streamed as it came: {v}"
    );
    let spilled = metric(&scrape(&p).await, "duotone_buffer_spilled_bytes_total", "");
    assert_eq!(spilled, Some(0.0), "{t}: the upload went to a temp file");

    let h = unread_download(&p, &g, &app, t).await;
    let spilled = metric(&scrape(&p).await, "duotone_buffer_spilled_bytes_total", "");
    assert!(spilled > Some(0.0), "{t}: the response was not buffered");
    let r = h.read(3 * LIMIT).await.unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&big_body(16 * MIB)), "{t}");
}

e2e::on_both_transports!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    an_unwritable_buffer_dir_gives_a_clean_5xx_and_small_requests_pass
);
/// A buffer dir that cannot hold a file (it lies under a regular file, so
/// this fails for root too): an upload past `[buffering] memory` gets a
/// 502 or 503 and never reaches the app, the failure is counted, and
/// requests that fit in memory still succeed.
async fn an_unwritable_buffer_dir_gives_a_clean_5xx_and_small_requests_pass(t: Transport) {
    let Some((g, app)) = gunicorn(
        "an_unwritable_buffer_dir_gives_a_clean_5xx_and_small_requests_pass",
        2,
    )
    .await
    else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let buffering = format!(
        "dir = \"{}\"\nmemory = \"16KiB\"",
        file.join("sub").display()
    );
    let p = Proxy::start_on(t, &config(&[g.member()], Some(&buffering), "")).await;

    let body = upload_body(MIB);
    let mut u = HeldUpload::start(p.ports.http, "app.test", "/upload", Some(MIB))
        .await
        .unwrap();
    // The proxy may answer before it has taken the whole body.
    let _ = tokio::time::timeout(LIMIT, u.send(&body, 64 * KIB, Duration::ZERO)).await;
    let r = u
        .finish(LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{t}: no clean answer to a large upload: {e:#}\n{}", p.log()));
    assert!(
        matches!(r.status, 502 | 503),
        "{t}: {} {}\n{}",
        r.status,
        r.text(),
        context(&p, &g, &app)
    );
    assert_eq!(
        app.count("upload start"),
        0,
        "{t}: part of the body reached the app"
    );

    let small = upload_body(KIB);
    let r = Http::new()
        .send("POST", &p.url("/upload"), &[], small.clone())
        .await
        .unwrap();
    assert_upload(&r, &small, &format!("{t}: small upload"));
    let r = Http::new().get(&p.url("/")).await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{t}");
    let m = scrape(&p).await;
    assert!(
        metric(&m, "duotone_buffer_failures_total", "").is_some_and(|v| v > 0.0),
        "{t}: the failure is not counted:\n{m}"
    );
}

/// The harness itself: the slow-client scenarios above, with nginx and its
/// default buffering in front of gunicorn instead of Duotone, pass (so a
/// failure behind Duotone is Duotone's). Needs nginx (`DUOTONE_TEST_NGINX`
/// or the PATH): `cargo test -p duotone-e2e --test buffering -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "harness check against nginx; run with --ignored"]
async fn harness_slow_client_scenarios_pass_behind_nginx() {
    let Some((g, app)) = gunicorn("harness_slow_client_scenarios_pass_behind_nginx", 2).await
    else {
        return;
    };
    let Some(n) = Nginx::start(&g.member()).await else {
        panic!("no nginx: set DUOTONE_TEST_NGINX or install nginx");
    };
    slow_uploads(&n, "nginx", &g, &app).await;
    unread_responses(&n, "nginx", &g, &app).await;
    chunked_upload(&n, "nginx", &g, &app).await;
    x_accel_no(&n, "nginx", &app).await;
    // The go-ahead files pace the app's streams (straight to gunicorn).
    let Bind::Tcp(direct) = g.bind.clone() else {
        unreachable!("gunicorn on TCP")
    };
    stream_in_steps(
        &Direct(direct),
        &app,
        "/sse?key=direct&n=3",
        "direct",
        [
            "data: event 1\n\n",
            "data: event 2\n\n",
            "data: event 3\n\n",
        ],
    )
    .await;
    // A held upload reads an answer sent before its body is all sent, as
    // the unwritable buffer dir's 5xx may be (here nginx's early 413).
    let small = Nginx::start_with(&g.member(), "client_max_body_size 64k;")
        .await
        .expect("nginx");
    let mut u = HeldUpload::start(small.addr, "app.test", "/upload", Some(MIB))
        .await
        .unwrap();
    let _ = tokio::time::timeout(LIMIT, u.send(&upload_body(MIB), 64 * KIB, Duration::ZERO)).await;
    let r = u.finish(LIMIT).await.unwrap();
    assert_eq!(r.status, 413, "{}", small.log());
}
