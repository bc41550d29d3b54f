//! uWSGI members (#18), end to end with Debian's uWSGI and its python3
//! plugin running `tests/apps/edge_app.py` on uwsgi-protocol sockets:
//! `uwsgi://host:port` and `uwsgi+unix:/path` members answer GETs and
//! POSTs with the CGI variables nginx's `uwsgi_params` would give, a flip
//! between a TCP and a unix color under load fails no request, and health
//! checks mark a dead member down.
//!
//! The uwsgi binary is the one `DUOTONE_TEST_UWSGI` names (`./dev test`
//! installs Debian's `uwsgi` and `uwsgi-plugin-python3` and sets it);
//! without it each test prints a SKIPPED notice, unless
//! `DUOTONE_REQUIRE_UWSGI=1`.

use e2e::apps::{big_body, sha256_hex, upload_body, uwsgi_or_skip, AppDir, AppServer, Bind};
use e2e::bluegreen::FlipLoad;
use e2e::client::{admin, Http};
use e2e::held::chunked_upload;
use e2e::proxy::{run_cli, Proxy};
use e2e::transport::Transport;
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::time::Duration;

const TOKEN: &str = "uwsgi-test-token-0123456789";
const LIMIT: Duration = Duration::from_secs(10);
const KIB: usize = 1 << 10;
const HEALTH: &str = r#"health = { path = "/healthz", interval = "100ms", timeout = "1s" }"#;

/// The one config of this file: one site per `(host, service)` pair, and
/// each service's lines (`live`, `health`, colors) as given.
fn config(sites: &[(&str, &str)], services: &[(&str, String)]) -> String {
    let mut out = format!(
        r#"
[server]
http = "{{http}}"
admin = "{{admin}}"
state_dir = "{{state}}"
admin_token = "{TOKEN}"
"#
    );
    for (host, service) in sites {
        out.push_str(&format!(
            "\n[[sites]]\nhosts = [\"{host}\"]\n  [[sites.routes]]\n  path = \"/\"\n  service = \"{service}\"\n"
        ));
    }
    for (name, body) in services {
        out.push_str(&format!("\n[services.{name}]\n{body}\n"));
    }
    out
}

/// uWSGI with 2 processes for `color` on `bind`.
async fn uwsgi(test: &str, bind: Bind, color: &str, app: &AppDir) -> Option<AppServer> {
    let bin = uwsgi_or_skip(test)?;
    Some(AppServer::uwsgi(&bin, bind, 2, color, app).await)
}

/// Two uWSGI servers: "blue" on TCP and "green" on a unix socket.
async fn blue_tcp_green_unix(test: &str, app: &AppDir) -> Option<(AppServer, AppServer)> {
    let blue = uwsgi(test, Bind::tcp(), "blue", app).await?;
    let sock = app.path().join("green.sock");
    let green = uwsgi(test, Bind::unix(sock), "green", app).await?;
    Some((blue, green))
}

async fn service(p: &Proxy, name: &str) -> Value {
    admin(
        "GET",
        &p.admin_url(&format!("/v1/services/{name}")),
        Some(TOKEN),
        None,
    )
    .await
    .map(|r| r.json())
    .unwrap_or(Value::Null)
}

/// Waits until `/v1/services/{name}` satisfies `f`; panics with the last
/// state and the log otherwise.
async fn wait_service(p: &Proxy, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let last = std::sync::Mutex::new(Value::Null);
    let got = e2e::eventually(3 * LIMIT, || async {
        let v = service(p, name).await;
        let ok = f(&v);
        *last.lock().unwrap() = v.clone();
        ok.then_some(v)
    })
    .await;
    got.unwrap_or_else(|| {
        panic!(
            "timed out waiting for {what}; last state: {:#}\nlog:\n{}",
            last.lock().unwrap(),
            p.log()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_uwsgi_speaks_the_uwsgi_protocol_on_tcp_and_unix() {
    // The harness itself, without Duotone: the test's uwsgi client reaches
    // the app on both kinds of socket.
    let app = AppDir::new();
    let test = "harness_uwsgi_speaks_the_uwsgi_protocol_on_tcp_and_unix";
    let Some((tcp, unix)) = blue_tcp_green_unix(test, &app).await else {
        return;
    };
    for (s, color) in [(&tcp, "blue"), (&unix, "green")] {
        let r = s.get("/color").await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, color));
        let body = upload_body(100 * KIB);
        let r = s
            .request(
                "POST",
                "/upload",
                &[("host", "app.test")],
                body.clone().into(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["sha256"], sha256_hex(&body), "{}", r.text());
    }
}

e2e::on_both_transports!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    get_and_post_through_uwsgi_over_tcp_and_unix
);
/// Through `uwsgi://` (TCP) and `uwsgi+unix:` members: a GET with the CGI
/// variables nginx's uwsgi_params gives (REMOTE_ADDR, HTTP_HOST,
/// QUERY_STRING, a percent-decoded PATH_INFO, REQUEST_URI, SERVER_NAME,
/// SERVER_PORT, the forwarded fields), a 2 MiB response, and POST bodies
/// with a Content-Length and chunked, byte for byte.
async fn get_and_post_through_uwsgi_over_tcp_and_unix(t: Transport) {
    let app = AppDir::new();
    let test = "get_and_post_through_uwsgi_over_tcp_and_unix";
    let Some(tcp) = uwsgi(test, Bind::tcp(), "blue", &app).await else {
        return;
    };
    let Some(unix) = uwsgi(test, Bind::unix(app.path().join("u.sock")), "green", &app).await else {
        return;
    };
    let p = Proxy::start_on(
        t,
        &config(
            &[("tcp.test", "tcp"), ("unix.test", "unix")],
            &[
                ("tcp", format!("colors.blue = [\"{}\"]", tcp.member())),
                ("unix", format!("colors.blue = [\"{}\"]", unix.member())),
            ],
        ),
    )
    .await;
    let port = p.ports.http.port().to_string();
    let http = Http::new();
    for (host, color) in [("tcp.test", "blue"), ("unix.test", "green")] {
        let what = format!("{t} {host}");
        let r = http
            .get_with(
                &p.url("/env/a%20b?x=1&y=%C3%A9"),
                &[("host", host), ("x-custom", "yes")],
            )
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", p.log()));
        assert_eq!(r.status, 200, "{what}: {}\n{}", r.text(), p.log());
        let v = r.json();
        let want = [
            ("color", color),
            ("REQUEST_METHOD", "GET"),
            ("REMOTE_ADDR", "127.0.0.1"),
            ("HTTP_HOST", host),
            ("SERVER_NAME", host),
            ("SERVER_PORT", port.as_str()),
            ("QUERY_STRING", "x=1&y=%C3%A9"),
            ("PATH_INFO", "/env/a b"),
            ("REQUEST_URI", "/env/a%20b?x=1&y=%C3%A9"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("HTTP_X_CUSTOM", "yes"),
            ("HTTP_X_FORWARDED_FOR", "127.0.0.1"),
            ("HTTP_X_FORWARDED_PROTO", "http"),
            ("HTTP_X_FORWARDED_PORT", port.as_str()),
        ];
        for (k, val) in want {
            assert_eq!(v[k], val, "{what}: {k} in {v:#}");
        }

        let r = http
            .get_with(&p.url("/big?mb=2"), &[("host", host)])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{what}");
        assert_eq!(r.body.len(), 2 << 20, "{what}");
        assert_eq!(
            sha256_hex(&r.body),
            sha256_hex(&big_body(2 << 20)),
            "{what}"
        );

        let body = upload_body(300 * KIB + 7);
        let r = http
            .send("POST", &p.url("/upload"), &[("host", host)], body.clone())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        let v = r.json();
        assert_eq!(v["sha256"], sha256_hex(&body), "{what}: {v}");
        assert_eq!(v["content_length"], body.len().to_string(), "{what}: {v}");

        // Chunked from the client: the app still gets a CONTENT_LENGTH
        // (WSGI under uWSGI reads CONTENT_LENGTH bytes, nothing more).
        let r = chunked_upload(p.ports.http, host, "/upload", &body, 32 * KIB, LIMIT)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{what}: chunked: {}", r.text());
        let v = r.json();
        assert_eq!(v["sha256"], sha256_hex(&body), "{what}: chunked: {v}");
        assert_eq!(v["content_length"], body.len().to_string(), "{what}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flips_between_uwsgi_colors_under_load_fail_no_request() {
    let app = AppDir::new();
    let test = "flips_between_uwsgi_colors_under_load_fail_no_request";
    let Some((blue, green)) = blue_tcp_green_unix(test, &app).await else {
        return;
    };
    let p = Proxy::start(&config(
        &[("*", "api")],
        &[(
            "api",
            format!(
                "live = \"blue\"\n{HEALTH}\ncolors.blue = [\"{}\"]\ncolors.green = [\"{}\"]",
                blue.member(),
                green.member()
            ),
        )],
    ))
    .await;
    wait_service(&p, "api", "both uWSGI colors healthy", |v| {
        v["colors"]["blue"]["healthy"] == true && v["colors"]["green"]["healthy"] == true
    })
    .await;

    let load = FlipLoad::new("blue", "green");
    let clients = load.spawn(4, &p.url("/color"));
    let api = Http::new();
    let auth = format!("Bearer {TOKEN}");
    for k in 1..=6u64 {
        let to = load.target(k).to_string();
        let before = load.checked.load(Ordering::SeqCst);
        load.begin_flip(k);
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
        assert_eq!(r.status, 200, "flip {k}: {}", r.text());
        load.end_flip(k);
        // Paced by traffic: some answers from the new color before the next.
        let seen = e2e::eventually(3 * LIMIT, || {
            let load = load.clone();
            async move {
                load.first_new(k)?;
                (load.checked.load(Ordering::SeqCst) >= before + 20).then_some(())
            }
        })
        .await;
        assert!(
            seen.is_some(),
            "no traffic reached {to} after flip {k}: {:?}\n{}",
            load.samples.lock().unwrap(),
            p.log()
        );
    }
    load.stop();
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed, wrong) = (
        load.ok.load(Ordering::SeqCst),
        load.failed.load(Ordering::SeqCst),
        load.wrong.load(Ordering::SeqCst),
    );
    assert!(
        failed == 0 && wrong == 0 && ok > 0,
        "ok {ok}, failed {failed}, wrong {wrong}: {:?}\nlog:\n{}\nblue:\n{}\ngreen:\n{}",
        load.samples.lock().unwrap(),
        p.log(),
        blue.log(),
        green.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_mark_a_dead_uwsgi_member_down() {
    let app = AppDir::new();
    let test = "health_checks_mark_a_dead_uwsgi_member_down";
    let Some(a) = uwsgi(test, Bind::tcp(), "blue", &app).await else {
        return;
    };
    let Some(mut b) = uwsgi(test, Bind::unix(app.path().join("b.sock")), "blue", &app).await else {
        return;
    };
    let p = Proxy::start(&config(
        &[("*", "api")],
        &[(
            "api",
            format!(
                "live = \"blue\"\n{HEALTH}\ncolors.blue = [\"{}\", \"{}\"]",
                a.member(),
                b.member()
            ),
        )],
    ))
    .await;
    let health = |v: &Value, i: usize| v["colors"]["blue"]["members"][i]["health"].clone();
    wait_service(&p, "api", "both uWSGI members up", |v| {
        health(v, 0) == "up" && health(v, 1) == "up"
    })
    .await;

    b.kill();
    let v = wait_service(&p, "api", "the killed uWSGI member down", |v| {
        health(v, 0) == "up" && health(v, 1) == "down"
    })
    .await;
    assert!(
        v["colors"]["blue"]["members"][1]["last_check_error"].is_string(),
        "{v:#}"
    );
    let http = Http::new();
    for i in 0..20 {
        let r = http
            .get(&p.url("/color"))
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e:#}\n{}", p.log()));
        assert_eq!((r.status, r.text().as_str()), (200, "blue"), "request {i}");
    }
}

#[test]
fn a_service_mixing_uwsgi_and_http_members_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("duotone.toml");
    let path = file.to_str().unwrap();
    let write = |blue: &str, green: &str| {
        std::fs::write(
            &file,
            format!(
                "[server]\nhttp = \"127.0.0.1:{}\"\nstate_dir = \"state\"\n\n\
                 [[sites]]\nhosts = [\"*\"]\n  [[sites.routes]]\n  path = \"/\"\n  service = \"api\"\n\n\
                 [services.api]\nlive = \"blue\"\ncolors.blue = [\"{blue}\"]\ncolors.green = [\"{green}\"]\n",
                e2e::free_port()
            ),
        )
        .unwrap()
    };
    write("uwsgi://127.0.0.1:3031", "uwsgi+unix:/run/app-green.sock");
    let (code, out, err) = run_cli(&["check", "-c", path], &[]);
    assert_eq!(code, 0, "{out}{err}");

    // The same config with green on HTTP: only the mix is wrong.
    write("uwsgi://127.0.0.1:3031", "127.0.0.1:8002");
    let (code, out, err) = run_cli(&["check", "-c", path], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("{path}:")) && err.contains("services.api"),
        "{err}"
    );
}
