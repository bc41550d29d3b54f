//! #18's smaller parts, end to end: `X-Forwarded-Port` beside the other
//! forwarded fields, and `server.unknown_host`, the answer for a Host no
//! site serves ("close" drops the connection without a byte, like nginx's
//! `return 444`; 421 or 404).

use e2e::client::{raw, Http};
use e2e::proxy::{run_cli, Proxy};
use e2e::transport::Transport;
use e2e::upstream::Upstream;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The one config of this file: `server` as extra `[server]` lines, one
/// site for `app.test` routing to `up`.
fn config(up: &Upstream, server: &str) -> String {
    format!(
        r#"
[server]
http = "{{http}}"
admin = "{{admin}}"
state_dir = "{{state}}"
{server}

[[sites]]
hosts = ["app.test", "127.0.0.1"]
  [[sites.routes]]
  path = "/"
  service = "app"

[services.app]
colors.blue = ["{up}"]
"#,
        up = up.member()
    )
}

e2e::on_both_transports!(
    #[tokio::test]
    x_forwarded_port_is_the_port_the_client_connected_to
);
/// The app gets `X-Forwarded-Port` with the listener's port, on HTTP/1.1
/// and HTTP/2, and a client's own value is replaced.
async fn x_forwarded_port_is_the_port_the_client_connected_to(t: Transport) {
    let up = Upstream::start("app").await;
    let p = Proxy::start_on(t, &config(&up, "")).await;
    let port = p.ports.http.port().to_string();
    // HTTP/2 by `:authority` (127.0.0.1:port): a Host beside it that
    // differs would be refused.
    let h1: &[(&str, &str)] = &[("host", "app.test"), ("x-forwarded-port", "1")];
    let h2: &[(&str, &str)] = &[("x-forwarded-port", "1")];
    for (proto, client, headers) in [("h1", Http::new(), h1), ("h2c", Http::h2(), h2)] {
        let r = client.get_with(&p.url("/headers"), headers).await.unwrap();
        assert_eq!(r.status, 200, "{t} {proto}");
        assert_eq!(
            r.json()["headers"]["x-forwarded-port"],
            port.as_str(),
            "{t} {proto}: {}",
            r.text()
        );
    }
}

e2e::on_both_transports!(
    #[tokio::test]
    a_trusted_proxys_x_forwarded_port_is_kept
);
/// Behind a load balancer in `trusted_proxies`, its `X-Forwarded-Port`
/// (the port the real client used) is kept, as its X-Forwarded-Proto is.
async fn a_trusted_proxys_x_forwarded_port_is_kept(t: Transport) {
    let up = Upstream::start("app").await;
    let p = Proxy::start_on(t, &config(&up, r#"trusted_proxies = ["127.0.0.1/32"]"#)).await;
    let r = Http::new()
        .get_with(
            &p.url("/headers"),
            &[
                ("host", "app.test"),
                ("x-forwarded-for", "198.51.100.7"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-port", "443"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{t}");
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-proto"], "https", "{t}: {}", r.text());
    assert_eq!(h["x-forwarded-port"], "443", "{t}: {}", r.text());
}

e2e::on_both_transports!(
    #[tokio::test]
    unknown_host_close_drops_the_connection_without_a_byte
);
/// `unknown_host = "close"`: a request for a host no site serves gets no
/// response at all, the connection is closed (EOF, not a timeout), and the
/// app never sees it; a known host is served as usual.
async fn unknown_host_close_drops_the_connection_without_a_byte(t: Transport) {
    let up = Upstream::start("app").await;
    let p = Proxy::start_on(t, &config(&up, r#"unknown_host = "close""#)).await;
    let r = Http::new()
        .get_with(&p.url("/"), &[("host", "app.test")])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{t}");

    let mut s = tokio::net::TcpStream::connect(p.ports.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "{t}: the connection was left open (got {:?})",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(
        String::from_utf8_lossy(&got),
        "",
        "{t}: bytes were written for an unknown host"
    );
    assert_eq!(up.hits(), 1, "{t}: the app saw the unknown host's request");
}

e2e::on_both_transports!(
    #[tokio::test]
    unknown_host_421_answers_misdirected_request
);
/// `unknown_host = 421` answers 421 Misdirected Request (the connection
/// stays usable for a known host).
async fn unknown_host_421_answers_misdirected_request(t: Transport) {
    let up = Upstream::start("app").await;
    let p = Proxy::start_on(t, &config(&up, "unknown_host = 421")).await;
    let http = Http::new();
    let r = http
        .get_with(&p.url("/"), &[("host", "other.test")])
        .await
        .unwrap();
    assert_eq!(r.status, 421, "{t}: {}", r.text());
    let r = http
        .get_with(&p.url("/"), &[("host", "app.test")])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{t}");
    // And on a raw connection, the status line itself.
    let out = raw(
        p.ports.http,
        b"GET / HTTP/1.1\r\nHost: nobody.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 421"), "{t}: {out:?}");
    assert_eq!(up.hits(), 1, "{t}");
}

#[test]
fn unknown_host_values_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("duotone.toml");
    let path = file.to_str().unwrap();
    let write = |value: &str| {
        std::fs::write(
            &file,
            format!(
                "[server]\nhttp = \"127.0.0.1:{}\"\nunknown_host = {value}\nstate_dir = \"state\"\n\n\
                 [[sites]]\nhosts = [\"app.test\"]\n",
                e2e::free_port()
            ),
        )
        .unwrap()
    };
    for ok in [r#""close""#, "421", r#""421""#, "404", r#""404""#] {
        write(ok);
        let (code, out, err) = run_cli(&["check", "-c", path], &[]);
        assert_eq!(code, 0, "unknown_host = {ok}: {out}{err}");
    }
    for bad in ["500", r#""drop""#, "true"] {
        write(bad);
        let (code, out, err) = run_cli(&["check", "-c", path], &[]);
        assert_eq!(code, 1, "unknown_host = {bad}: {out}{err}");
        assert!(
            err.contains(&format!("{path}:3: server.unknown_host")),
            "unknown_host = {bad}: {err}"
        );
    }
}
