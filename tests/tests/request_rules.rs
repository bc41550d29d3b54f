//! The request rules every transport shares (`routes::request::check`), end
//! to end on each of them: the lane's HTTP/1.1, the lane's HTTP/2 (h2c
//! prior knowledge), and Pingora's path (`DUOTONE_LANE=off`). Each hostile
//! request is a class with several spellings: a route's basic auth and
//! allow list cannot be dodged by percent-encoding, merged slashes or an
//! absolute-form target, odd targets and hosts are refused, underscored
//! header names and a bare `Upgrade` do not reach the app, pipelined
//! requests are all answered, and the head deadline cannot be disarmed by
//! empty lines before the request line.

use bytes::Bytes;
use e2e::proxy::Proxy;
use e2e::scripted::Scripted;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `staff:secret`, as a client sends it.
const CREDS: &str = "Basic c3RhZmY6c2VjcmV0";

fn config(upstream: SocketAddr) -> String {
    let hash = bcrypt::hash("secret", 4).unwrap();
    format!(
        r#"
[server]
http = "{{http}}"
admin = "{{admin}}"
state_dir = "{{state}}"

[limits]
header_timeout = "1s"

[[sites]]
hosts = ["app.test"]
  [[sites.routes]]
  path = "/"
  service = "app"
  [[sites.routes]]
  path = "/admin/"
  service = "app"
  basic_auth = ["staff:{hash}"]
  [[sites.routes]]
  path = "/internal/"
  service = "app"
  allow = ["10.0.0.0/8"]

[[sites]]
hosts = ["*"]
  [[sites.routes]]
  path = "/"
  service = "app"

[services.app]
colors.blue = ["{upstream}"]
"#
    )
}

/// The scripted upstream with two proxies in front: the lane on, and off.
async fn start() -> (Scripted, [(&'static str, Proxy); 2]) {
    let up = Scripted::start().await;
    let cfg = config(up.addr);
    let lane = Proxy::start(&cfg).await;
    let pingora = Proxy::start_with_env(&cfg, &[("DUOTONE_LANE", "off")]).await;
    (up, [("lane", lane), ("pingora", pingora)])
}

/// Sends raw bytes on a new connection; returns every response's status
/// and the whole text the proxy sent until it closed (or 5 s passed).
async fn raw(addr: SocketAddr, bytes: &[u8]) -> (Vec<u16>, String) {
    let text = e2e::client::raw(addr, bytes, Duration::from_secs(5)).await;
    let statuses = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect();
    (statuses, text)
}

/// One HTTP/1.1 request for `target` with extra header lines.
fn h1(target: &str, extra: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: app.test\r\n{extra}Connection: close\r\n\r\n")
        .into_bytes()
}

/// The upstream's count of requests received.
fn hits(up: &Scripted) -> usize {
    up.seen.lock().unwrap().len()
}

#[tokio::test]
async fn route_rules_hold_for_every_spelling_of_a_path() {
    let (up, proxies) = start().await;
    // (target, extra header lines, status): no spelling of /admin/ or
    // /internal/ reaches the app without credentials or from outside.
    let cases: &[(&str, &str, u16)] = &[
        ("/admin/x", "", 401),
        ("/%61dmin/x", "", 401),
        ("/%61%64%6D%69%6E/x", "", 401),
        ("/a%64min/x", "", 401),
        ("//admin/x", "", 401),
        ("///admin//x", "", 401),
        ("http://app.test/%61dmin/x", "", 401),
        // Pingora's parser refuses an upper-case scheme.
        ("HTTP://APP.TEST//admin/x", "", 400),
        ("/%69nternal/x", "", 403),
        ("//internal/x", "", 403),
        ("/admin%2fx", "", 400),
        ("/admin%2Fx", "", 400),
        ("/admin%5cx", "", 400),
        ("/admin\\x", "", 400),
        ("/x/%2e%2e/admin/x", "", 400),
        ("/x/..%2fadmin/x", "", 400),
        ("/x/%2E./admin/x", "", 400),
        ("/x/./admin/x", "", 400),
        ("/a%00b", "", 400),
        ("/a%0d%0aX-Injected:%201", "", 400),
        ("/%zz", "", 400),
        ("/%6", "", 400),
        ("*", "", 400),
        ("app.test:80", "", 400),
        ("ftp://app.test/x", "", 400),
    ];
    for (name, p) in &proxies {
        for (target, extra, want) in cases {
            let before = hits(&up);
            let (statuses, text) = raw(p.ports.http, &h1(target, extra)).await;
            assert_eq!(statuses.first(), Some(want), "{name}: {target}: {text}");
            assert_eq!(hits(&up), before, "{name}: {target} reached the app");
        }
        // With credentials, the app gets the path the route matched.
        let auth = format!("Authorization: {CREDS}\r\n");
        for target in [
            "/%61dmin//x?q=%61",
            "//admin/x?q=%61",
            "http://app.test/a%64min/x?q=%61",
        ] {
            let (statuses, text) = raw(p.ports.http, &h1(target, &auth)).await;
            assert_eq!(statuses, [200], "{name}: {target}: {text}");
            assert!(
                text.contains("\r\n\r\nGET /admin/x?q=%61 HTTP/1.1\r\n"),
                "{name}: {target}: upstream saw {text}"
            );
        }
        // A route without rules gets the canonical path too; an escaped
        // `%` stays escaped (the app decodes it once, to `%61dmin`).
        let (statuses, text) = raw(p.ports.http, &h1("/pub/%7e%2561dmin//a%3fb", "")).await;
        assert_eq!(statuses, [200], "{name}: {text}");
        assert!(
            text.contains("\r\n\r\nGET /pub/~%2561dmin/a%3Fb HTTP/1.1\r\n"),
            "{name}: {text}"
        );
        // Raw bytes a request-target may not hold: control and non-ASCII
        // bytes are refused; spaces and the printable characters a path
        // may not hold raw are percent-encoded (Pingora's parser rewrites a
        // line with spaces), so the app never sees them raw.
        for (line, want, seen) in [
            (&b"GET /a\x01b HTTP/1.1"[..], 400, ""),
            (b"GET /a\x7f HTTP/1.1", 400, ""),
            (b"GET /a\x00 HTTP/1.1", 400, ""),
            (b"GET /a b HTTP/1.1", 200, "GET /a%20b HTTP/1.1"),
            (b"GET /a< HTTP/1.1", 400, ""),
            (b"GET /a\" HTTP/1.1", 400, ""),
            (b"GET /a?q=\"x\" HTTP/1.1", 400, ""),
            (b"GET /a` HTTP/1.1", 400, ""),
            (b"GET /a?q=> HTTP/1.1", 400, ""),
            (
                b"GET /{x}|^[] HTTP/1.1",
                200,
                "GET /%7Bx%7D%7C%5E%5B%5D HTTP/1.1",
            ),
            (b"GET /a?q={x}|^ HTTP/1.1", 200, "GET /a?q={x}|^ HTTP/1.1"),
            (b"GET /caf\xc3\xa9 HTTP/1.1", 400, ""),
            (b"GET /a\xff HTTP/1.1", 400, ""),
        ] {
            let before = hits(&up);
            let req = [line, b"\r\nHost: app.test\r\nConnection: close\r\n\r\n"].concat();
            let (statuses, text) = raw(p.ports.http, &req).await;
            let shown = String::from_utf8_lossy(line);
            assert_eq!(statuses.first(), Some(&want), "{name}: {shown:?}: {text}");
            if want == 200 {
                assert!(
                    text.contains(&format!("\r\n\r\n{seen}\r\n")),
                    "{name}: {shown:?}: {text}"
                );
            } else {
                assert_eq!(hits(&up), before, "{name}: {shown:?} reached the app");
            }
        }
        // CONNECT is refused.
        let (statuses, text) = raw(
            p.ports.http,
            b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n",
        )
        .await;
        assert_eq!(statuses.first(), Some(&405), "{name}: {text}");
    }
}

#[tokio::test]
async fn hosts_are_required_single_and_sane() {
    let (up, proxies) = start().await;
    let cases: &[(&[u8], u16)] = &[
        (b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
        (
            b"GET /x HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            b"GET /x HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            b"GET /x HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            b"GET /x HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            b"GET /x HTTP/1.1\r\nHost: a/b\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            b"GET /x HTTP/1.1\r\nHost: u@app.test\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            b"GET /x HTTP/1.1\r\nHost: ..\r\nConnection: close\r\n\r\n",
            400,
        ),
    ];
    for (name, p) in &proxies {
        for (req, want) in cases {
            let before = hits(&up);
            let (statuses, text) = raw(p.ports.http, req).await;
            assert_eq!(
                statuses.first(),
                Some(want),
                "{name}: {:?}: {text}",
                String::from_utf8_lossy(req)
            );
            assert_eq!(
                hits(&up),
                before,
                "{name}: {:?}",
                String::from_utf8_lossy(req)
            );
        }
        // HTTP/1.0 may omit Host: the default site answers.
        let (statuses, text) = raw(p.ports.http, b"GET /old HTTP/1.0\r\n\r\n").await;
        assert!(
            text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
            "{name}: {text}"
        );
        let _ = statuses;
        // Absolute form routes by its authority; a Host that names another
        // site is refused (Pingora's parser checks them against each other),
        // never routed by Host past the authority's rules.
        let auth = format!("Authorization: {CREDS}\r\n");
        for creds in ["", auth.as_str()] {
            let before = hits(&up);
            let req = format!(
                "GET http://app.test/admin/x HTTP/1.1\r\nHost: other.test\r\n{creds}Connection: close\r\n\r\n"
            );
            let (statuses, text) = raw(p.ports.http, req.as_bytes()).await;
            assert_eq!(statuses, [400], "{name}: {text}");
            assert_eq!(hits(&up), before, "{name}: {text}");
        }
        let req = format!(
            "GET http://app.test/%61dmin//x HTTP/1.1\r\nHost: app.test\r\n{auth}Connection: close\r\n\r\n"
        );
        let (statuses, text) = raw(p.ports.http, req.as_bytes()).await;
        assert_eq!(statuses, [200], "{name}: {text}");
        assert!(
            text.contains("\r\n\r\nGET /admin/x HTTP/1.1\r\n"),
            "{name}: {text}"
        );
        assert!(
            text.to_ascii_lowercase().contains("\r\nhost: app.test\r\n"),
            "{name}: {text}"
        );
    }
}

#[tokio::test]
async fn hop_by_hop_and_aliasing_fields_do_not_reach_the_app() {
    let (_up, proxies) = start().await;
    for (name, p) in &proxies {
        // Underscored names are dropped (they alias X-Forwarded-For and the
        // like in WSGI environ); the dashed ones are the edge's own.
        let extra =
            "X_Forwarded_For: 6.6.6.6\r\nX-Real_IP: 6.6.6.6\r\nX_Custom: a\r\nX-Custom: b\r\n";
        let (statuses, text) = raw(p.ports.http, &h1("/fields", extra)).await;
        assert_eq!(statuses, [200], "{name}: {text}");
        assert!(!text.contains("6.6.6.6"), "{name}: {text}");
        assert!(!text.contains("X_Custom"), "{name}: {text}");
        assert!(text.contains("\r\nX-Custom: b\r\n"), "{name}: {text}");
        assert!(
            text.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
            "{name}: {text}"
        );
        // Upgrade without `Connection: upgrade` is a plain request.
        for extra in [
            "Upgrade: websocket\r\n",
            "Upgrade: h2c\r\nConnection: keep-alive\r\n",
        ] {
            let (statuses, text) = raw(p.ports.http, &h1("/plain", extra)).await;
            assert_eq!(statuses, [200], "{name}: {extra:?}: {text}");
            let body = &text[text.find("\r\n\r\n").unwrap()..];
            assert!(
                !body.to_ascii_lowercase().contains("upgrade"),
                "{name}: {extra:?}: upstream saw {body}"
            );
        }
    }
}

#[tokio::test]
async fn pipelined_requests_are_all_answered() {
    let (_up, proxies) = start().await;
    for (name, p) in &proxies {
        // The first request goes to Pingora's path on either setting (auth);
        // the ones pipelined behind it must not be lost.
        let req = format!(
            "GET /admin/one HTTP/1.1\r\nHost: app.test\r\nAuthorization: {CREDS}\r\n\r\n\
             GET /two HTTP/1.1\r\nHost: app.test\r\n\r\n\
             POST /three HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc\
             GET /four HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
        );
        let (statuses, text) = raw(p.ports.http, req.as_bytes()).await;
        assert_eq!(statuses, [200, 200, 200, 200], "{name}: {text}");
        let order: Vec<usize> = ["GET /admin/one ", "GET /two ", "POST /three ", "GET /four "]
            .iter()
            .map(|r| {
                text.find(r)
                    .unwrap_or_else(|| panic!("{name}: {r} missing: {text}"))
            })
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{name}: {text}");
    }
}

#[tokio::test]
async fn empty_lines_before_the_request_line_do_not_end_the_head_deadline() {
    let (_up, proxies) = start().await;
    for (name, p) in &proxies {
        for preamble in ["\r\n\r\n", "\n\n", "\r\n\r\n\r\n\r\n"] {
            let mut slow = tokio::net::TcpStream::connect(p.ports.http).await.unwrap();
            slow.write_all(preamble.as_bytes()).await.unwrap();
            slow.write_all(b"GET /x HTTP/1.1\r\nHost: app.test\r\n")
                .await
                .unwrap();
            // header_timeout is 1 s: trickling headers for up to 20 s must
            // see the connection cut, long before the trickle ends.
            let mut cut = false;
            for i in 0..100 {
                let line = format!("X-{i}: y\r\n");
                if slow.write_all(line.as_bytes()).await.is_err() {
                    cut = true;
                    break;
                }
                let mut buf = [0u8; 256];
                match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        cut = true;
                        break;
                    }
                    Ok(Ok(_)) | Err(_) => {}
                }
            }
            assert!(cut, "{name}: {preamble:?} disarmed the head deadline");
        }
        // A well-formed request after empty lines is still served.
        let (statuses, text) = raw(
            p.ports.http,
            &[b"\r\n\r\n".as_slice(), &h1("/ok", "")].concat(),
        )
        .await;
        assert_eq!(statuses, [200], "{name}: {text}");
    }
}

use e2e::h2c::connect as h2_connect;

/// One body-less HTTP/2 request: status and body as text.
async fn h2_get(
    send: &h2::client::SendRequest<Bytes>,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let (status, _, body) = e2e::h2c::call(send, "GET", path, headers, b"").await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn http2_streams_follow_the_same_rules() {
    let (up, proxies) = start().await;
    let cases: &[(&str, u16)] = &[
        ("/%61dmin/x", 401),
        ("//admin/x", 401),
        ("/a%64min/x", 401),
        ("/%69nternal/x", 403),
        ("/admin%2fx", 400),
        ("/x/%2e%2e/admin/x", 400),
        ("/a%00b", 400),
        ("/%zz", 400),
    ];
    for (name, p) in &proxies {
        let send = h2_connect(p.ports.http).await;
        for (path, want) in cases {
            let before = hits(&up);
            let (status, body) = h2_get(&send, path, &[]).await;
            assert_eq!(status, *want, "{name}: {path}: {body}");
            assert_eq!(hits(&up), before, "{name}: {path} reached the app");
        }
        for path in ["/%61dmin//x?q=%61", "//admin/x?q=%61"] {
            let (status, body) = h2_get(&send, path, &[("authorization", CREDS)]).await;
            assert_eq!(status, 200, "{name}: {path}: {body}");
            assert!(
                body.starts_with("GET /admin/x?q=%61 HTTP/1.1\r\n"),
                "{name}: {path}: upstream saw {body}"
            );
        }
        let (status, body) = h2_get(
            &send,
            "/fields",
            &[
                ("x_forwarded_for", "6.6.6.6"),
                ("x_custom", "a"),
                ("x-custom", "b"),
            ],
        )
        .await;
        assert_eq!(status, 200, "{name}: {body}");
        assert!(
            !body.contains("6.6.6.6") && !body.contains("x_custom"),
            "{name}: {body}"
        );
        assert!(body.contains("\r\nx-custom: b\r\n"), "{name}: {body}");
    }
    // Scripted upstream answers every request it got; make sure the cases
    // above were not simply never sent.
    assert!(hits(&up) >= 6);
}
