//! Drains with WebSockets open (Channels/Daphne apps): upgraded connections
//! are counted apart from requests, closed by the edge after the service's
//! `drain_upgraded` (or at once when the CLI asks), so `flip --drain` and
//! `deploy` finish with exit 0 and run `--stop`; requests still in flight
//! at `--drain-timeout` make them fail without stopping the old color.

use e2e::bluegreen::{two_colors, FAST_HEALTH};
use e2e::client::{admin, Http};
use e2e::proxy::Proxy;
use e2e::upstream::{ws_echo, Upstream};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "drains-test-token-0123456789";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Fixture {
    blue: Upstream,
    green: Upstream,
    p: Proxy,
    dir: tempfile::TempDir,
}

impl Fixture {
    /// Blue live, green running too; `drain_upgraded` as given.
    async fn new(drain_upgraded: &str) -> Fixture {
        let blue = Upstream::start("blue").await;
        let green = Upstream::start("green").await;
        let p = Proxy::start(&e2e::proxy::api_config(
            TOKEN,
            &two_colors(
                &blue.member(),
                &green.member(),
                &format!("drain_upgraded = \"{drain_upgraded}\"\n{FAST_HEALTH}"),
            ),
        ))
        .await;
        let f = Fixture {
            blue,
            green,
            p,
            dir: tempfile::tempdir().unwrap(),
        };
        f.wait("both colors healthy", |v| {
            v["colors"]["blue"]["healthy"] == true && v["colors"]["green"]["healthy"] == true
        })
        .await;
        f
    }

    async fn service(&self) -> serde_json::Value {
        e2e::admin::service(&self.p, TOKEN, "api").await
    }

    /// Polls the service until `f` holds (bounded).
    async fn wait(&self, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        e2e::admin::wait_service(&self.p, TOKEN, "api", what, Duration::from_secs(15), f).await
    }

    /// `(in_flight, upgraded)` of `color`.
    async fn counts(&self, color: &str) -> (i64, i64) {
        let v = self.service().await;
        let c = &v["colors"][color];
        (
            c["in_flight"].as_i64().unwrap(),
            c["upgraded"].as_i64().unwrap(),
        )
    }

    async fn metric(&self, color: &str) -> String {
        let r = admin("GET", &self.p.admin_url("/metrics"), Some(TOKEN), None)
            .await
            .unwrap();
        let line = format!("duotone_upgraded_connections{{service=\"api\",color=\"{color}\"}} ");
        r.text()
            .lines()
            .find_map(|l| l.strip_prefix(&line).map(str::to_string))
            .unwrap_or_else(|| panic!("no {line} in metrics:\n{}", r.text()))
    }

    /// Opens a WebSocket through the edge and checks one echo.
    async fn websocket(&self, expect: &str) -> Ws {
        let url = format!("ws://{}/ws", self.p.ports.http);
        let (mut ws, resp) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket handshake through duotone");
        assert_eq!(resp.status(), 101);
        assert_eq!(ws_echo(&mut ws, "hi").await, format!("{expect}: hi"));
        ws
    }

    /// Runs `duotone ARGS` off the async runtime.
    async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        e2e::admin::cli(&self.p, TOKEN, args).await
    }

    /// `--stop` command that records the stopped color.
    fn stop_cmd(&self) -> String {
        format!("echo {{color}} >> {}/stopped", self.dir.path().display())
    }

    fn stopped(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stopped")).unwrap_or_default()
    }
}

/// Reads what is left of a WebSocket the edge is closing: returns the close
/// code, if a close frame came, once the stream has ended. Panics if it
/// does not end (bounded wait).
async fn ended<S>(mut ws: tokio_tungstenite::WebSocketStream<S>) -> Option<CloseCode>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut code = None;
    let done = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Close(frame)) => code = frame.map(|f| f.code),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    })
    .await;
    assert!(done.is_ok(), "the edge did not close the WebSocket");
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flip_drain_closes_websockets_of_the_old_color_and_exits_zero() {
    let f = Fixture::new("1s").await;
    let ws = f.websocket("blue").await;
    // An open WebSocket is an upgraded connection, not a request in flight.
    assert_eq!(f.counts("blue").await, (0, 1));
    assert_eq!(f.metric("blue").await, "1");
    let (code, out, err) = f.cli(&["status", "api"]).await;
    assert_eq!(code, 0, "{err}");
    let blue_line = out
        .lines()
        .find(|l| l.trim_start().starts_with("blue"))
        .unwrap();
    assert!(
        blue_line.contains("in-flight 0") && blue_line.contains("upgraded 1"),
        "{out}"
    );

    let (code, out, err) = f
        .cli(&["flip", "api", "green", "--drain", "--drain-timeout", "60s"])
        .await;
    assert_eq!(
        code, 0,
        "flip --drain must succeed\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(out.contains("api: blue -> green"), "{out}");
    // Drained means the edge closed the WebSocket: with a close frame, 1001.
    assert_eq!(ended(ws).await, Some(CloseCode::Away));
    assert_eq!(f.counts("blue").await, (0, 0));
    assert_eq!(f.metric("blue").await, "0");

    // New WebSockets go to the new color, and are counted there.
    let ws = f.websocket("green").await;
    assert_eq!(f.counts("green").await, (0, 1));
    assert_eq!(f.metric("green").await, "1");
    // The live color's WebSockets are left alone by the drain.
    assert_eq!(
        f.service().await["colors"]["green"]["upgraded_close_in_ms"],
        serde_json::Value::Null
    );
    drop(ws);
    f.wait("green's WebSocket gone", |v| {
        v["colors"]["green"]["upgraded"] == 0
    })
    .await;
    assert!(f.blue.hits_on("/ws") >= 1 && f.green.hits_on("/ws") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_with_a_websocket_open_drains_and_stops_the_old_color() {
    // A limit longer than the test: the CLI asks the edge to close the
    // WebSockets when its --drain-timeout runs out, and still exits 0.
    let f = Fixture::new("1h").await;
    let ws = f.websocket("blue").await;
    assert_eq!(f.counts("blue").await, (0, 1));
    let stop = f.stop_cmd();
    let (code, out, err) = f
        .cli(&[
            "deploy",
            "--service",
            "api",
            "--start",
            "true",
            "--stop",
            &stop,
            "--health-timeout",
            "30s",
            "--drain-timeout",
            "1s",
        ])
        .await;
    assert_eq!(
        code, 0,
        "deploy must succeed\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(out.contains("==> api is live on green"), "{out}");
    assert_eq!(f.stopped(), "blue\n", "--stop ran for the old color");
    assert_eq!(ended(ws).await, Some(CloseCode::Away));
    assert_eq!(f.counts("blue").await, (0, 0));
    assert_eq!(f.metric("blue").await, "0");
    let _green = f.websocket("green").await;
    assert_eq!(f.counts("green").await, (0, 1));

    // The admin API's drain: only colors that take no traffic, unless forced.
    let drain = |body: &'static str| {
        let url = f.p.admin_url("/v1/services/api/drain");
        async move { admin("POST", &url, Some(TOKEN), Some(body)).await.unwrap() }
    };
    let r = drain(r#"{"color":"green"}"#).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("takes new traffic"));
    let r = drain(r#"{"color":"purple"}"#).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"].is_string());
    let r = drain(r#"{"colour":"blue"}"#).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = drain("{}").await;
    assert_eq!((r.status, r.json()["closed"].as_u64()), (200, Some(0)));
    assert_eq!(f.counts("green").await, (0, 1));
    let r = admin(
        "POST",
        &f.p.admin_url("/v1/services/nope/drain"),
        Some(TOKEN),
        Some("{}"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_times_out_with_requests_in_flight_fails_and_keeps_the_old_color() {
    let f = Fixture::new("1s").await;
    // A request that outlasts every drain timeout below.
    let url = f.p.url("/slow?ms=60000");
    let slow = tokio::spawn(async move { Http::new().get(&url).await });
    f.wait("the slow request in flight on blue", |v| {
        v["colors"]["blue"]["in_flight"] == 1
    })
    .await;

    let (code, out, err) = f
        .cli(&["flip", "api", "green", "--drain", "--drain-timeout", "1s"])
        .await;
    assert_ne!(code, 0, "stdout:\n{out}");
    assert!(out.contains("api: blue -> green"), "{out}");
    assert!(
        err.contains("api flipped to green, but blue is not drained: 1 request(s) still in flight"),
        "{err}"
    );
    assert_eq!(f.service().await["live"], "green");

    // Back to blue (no drain), then deploy to green again: the drain times
    // out, so --stop is not run and the exit status says so.
    let (code, _, err) = f.cli(&["flip", "api", "blue"]).await;
    assert_eq!(code, 0, "{err}");
    let stop = f.stop_cmd();
    let deploy = |force: bool| {
        let mut args = vec![
            "deploy",
            "--service",
            "api",
            "--start",
            "true",
            "--stop",
            &stop,
            "--health-timeout",
            "30s",
            "--drain-timeout",
            "1s",
        ];
        if force {
            args.push("--force-stop");
        }
        let args: Vec<String> = args.into_iter().map(str::to_string).collect();
        let f = &f;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            f.cli(&args).await
        }
    };
    let (code, out, err) = deploy(false).await;
    assert_ne!(code, 0, "stdout:\n{out}");
    assert!(
        err.contains("api is live on green, but blue is not drained: 1 request(s) still in flight")
            && err.contains("blue was left running (--stop not run"),
        "{err}"
    );
    assert_eq!(f.stopped(), "", "--stop must not run after a failed drain");

    // --force-stop: stopped anyway, still a failure.
    let (code, _, err) = f.cli(&["flip", "api", "blue"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = deploy(true).await;
    assert_ne!(code, 0, "stdout:\n{out}");
    assert!(
        err.contains("blue was stopped anyway (--force-stop)"),
        "{err}"
    );
    assert_eq!(f.stopped(), "blue\n");
    slow.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipping_back_keeps_websockets_and_weights_drain_a_color() {
    let f = Fixture::new("1h").await;
    let mut ws = f.websocket("blue").await;
    let call = |method: &'static str, path: &'static str, body: &'static str| {
        let url = f.p.admin_url(path);
        async move {
            let r = admin(method, &url, Some(TOKEN), Some(body)).await.unwrap();
            assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
            r.json()
        }
    };
    let v = call("POST", "/v1/services/api/flip", r#"{"to":"green"}"#).await;
    assert!(
        v["colors"]["blue"]["upgraded_close_in_ms"].as_u64() > Some(0),
        "{v:#}"
    );
    // Back before the close is due: called off, the WebSocket stays usable.
    let v = call("POST", "/v1/services/api/flip", r#"{"to":"blue"}"#).await;
    assert_eq!(
        v["colors"]["blue"]["upgraded_close_in_ms"],
        serde_json::Value::Null,
        "{v:#}"
    );
    ws.send(Message::text("again")).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo in time")
        .expect("echo")
        .expect("echo frame");
    assert_eq!(msg.into_text().unwrap().as_str(), "blue: again");
    assert_eq!(f.counts("blue").await, (0, 1));

    // Weights that give blue nothing drain it like a flip.
    let v = call(
        "PUT",
        "/v1/services/api/weights",
        r#"{"blue":0,"green":100}"#,
    )
    .await;
    assert!(
        v["colors"]["blue"]["upgraded_close_in_ms"].as_u64() > Some(0),
        "{v:#}"
    );
    let v = call("POST", "/v1/services/api/drain", "{}").await;
    assert_eq!(v["closed"], 1, "{v:#}");
    assert_eq!(ended(ws).await, Some(CloseCode::Away));
    f.wait("blue's WebSocket gone", |v| {
        v["colors"]["blue"]["upgraded"] == 0
    })
    .await;
    // A new WebSocket goes where the weights say.
    let _ws = f.websocket("green").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_over_tls_are_counted_and_closed_by_a_drain() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let p = Proxy::start(&format!(
        r#"
[server]
http = "{{http}}"
https = "{{https}}"
admin = "{{admin}}"
state_dir = "{{state}}"
admin_token = "{TOKEN}"

[[sites]]
hosts = ["app.test"]
tls = "self-signed"
  [[sites.routes]]
  path = "/"
  service = "api"

[services.api]
live = "blue"
drain_upgraded = "0s"
colors.blue = ["{blue}"]
colors.green = ["{green}"]
"#,
        blue = blue.member(),
        green = green.member()
    ))
    .await;
    let tls = e2e::tls::connect_any_cert(p.ports.https, "app.test")
        .await
        .expect("TLS to duotone");
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://app.test/ws", tls)
        .await
        .expect("websocket handshake over TLS");
    assert_eq!(resp.status(), 101);
    assert_eq!(ws_echo(&mut ws, "hi").await, "blue: hi");
    let service = || e2e::admin::service(&p, TOKEN, "api");
    assert_eq!(service().await["colors"]["blue"]["upgraded"], 1);
    let (code, out, err) = e2e::admin::cli(&p, TOKEN, &["flip", "api", "green", "--drain"]).await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(ended(ws).await, Some(CloseCode::Away));
    let v = service().await;
    assert_eq!(
        (&v["colors"]["blue"]["upgraded"], &v["live"]),
        (&0.into(), &"green".into())
    );
}
