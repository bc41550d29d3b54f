//! Edge hardening of the admin API and friends, end to end: one health gate
//! for flips and weights, `Host`/`Origin`/content-type checks against web
//! pages (cross-site requests, DNS rebinding), blank tokens refused, reload
//! refusing a corrupt `live.json`, static routes not following symlinks by
//! default, and client TLS handshake failures not logged as errors.

use e2e::client::{admin, raw, Http, Resp};
use e2e::proxy::{run_cli, Proxy};
use e2e::upstream::Upstream;
use serde_json::{json, Value};
use std::time::Duration;

const TOKEN: &str = "admin-security-token-0123";
const HEALTH: &str = r#"health = { path = "/healthz", interval = "100ms" }"#;

/// One site, service `api` with colors blue and green; `server` adds lines
/// to `[server]`, `routes` adds routes before the catch-all one.
fn config(blue: &Upstream, green: &Upstream, server: &str, routes: &str) -> String {
    format!(
        r#"
[server]
http = "{{http}}"
admin = "{{admin}}"
state_dir = "{{state}}"
admin_token = "{TOKEN}"
{server}

[[sites]]
hosts = ["*"]
{routes}
  [[sites.routes]]
  path = "/"
  service = "api"

[services.api]
live = "blue"
{HEALTH}
colors.blue = ["{}"]
colors.green = ["{}"]
"#,
        blue.member(),
        green.member()
    )
}

async fn call(p: &Proxy, method: &str, path: &str, body: Option<&str>) -> Resp {
    e2e::admin::call(p, TOKEN, method, path, body).await
}

/// Sends `method path` with exactly these headers (plus the token) and body.
async fn send(p: &Proxy, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let auth = format!("Bearer {TOKEN}");
    let mut all = vec![("authorization", auth.as_str())];
    all.extend_from_slice(headers);
    Http::new()
        .send(method, &p.admin_url(path), &all, body.to_string())
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
}

async fn service(p: &Proxy) -> Value {
    e2e::admin::service(p, TOKEN, "api").await
}

async fn wait_service(p: &Proxy, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    e2e::admin::wait_service(p, TOKEN, "api", what, Duration::from_secs(10), f).await
}

fn healthy(v: &Value, color: &str) -> bool {
    v["colors"][color]["healthy"] == Value::Bool(true)
}

/// The answer is the given status with a JSON `{"error": "…"}` body.
#[track_caller]
fn assert_error(r: &Resp, status: u16, what: &str) -> String {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert_eq!(r.header("content-type"), "application/json", "{what}");
    r.json()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error string in {}", r.text()))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_and_flip_share_the_health_gate() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    green.set_healthy(false);
    let p = Proxy::start(&config(&blue, &green, "", "")).await;
    wait_service(&p, "blue up, green down", |v| {
        healthy(v, "blue") && v["colors"]["green"]["members"][0]["health"] == "down"
    })
    .await;

    // Any weight on the down color is refused, as a flip to it is.
    for body in [
        r#"{"blue":90,"green":10}"#,
        r#"{"blue":0,"green":100}"#,
        r#"{"green":1}"#,
        r#"{"blue":90,"green":10,"force":false}"#,
    ] {
        let r = call(&p, "PUT", "/v1/services/api/weights", Some(body)).await;
        let reason = assert_error(&r, 409, body);
        assert!(
            reason.contains("\"green\"") && reason.contains("no healthy member"),
            "{body}: {reason}"
        );
        assert!(!reason.contains("\"blue\""), "{body}: {reason}");
    }
    let flip = call(
        &p,
        "POST",
        "/v1/services/api/flip",
        Some(r#"{"to":"green"}"#),
    )
    .await;
    let flip_reason = assert_error(&flip, 409, "flip to green");
    let weights = call(
        &p,
        "PUT",
        "/v1/services/api/weights",
        Some(r#"{"green":100}"#),
    )
    .await;
    // One rule, one wording.
    assert_eq!(flip_reason, assert_error(&weights, 409, "weights"));
    let v = service(&p).await;
    assert_eq!(
        (v["live"].clone(), v["weights"].clone()),
        (json!("blue"), Value::Null)
    );

    // Weight 0 on the down color sends it nothing: allowed.
    let r = call(
        &p,
        "PUT",
        "/v1/services/api/weights",
        Some(r#"{"blue":100,"green":0}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Forced, in the body or the query.
    let r = call(
        &p,
        "PUT",
        "/v1/services/api/weights",
        Some(r#"{"blue":90,"green":10,"force":true}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["weights"], json!({"blue":90,"green":10}));
    let r = call(
        &p,
        "PUT",
        "/v1/services/api/weights?force=true",
        Some(r#"{"blue":50,"green":50}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["weights"], json!({"blue":50,"green":50}));
    // A malformed flag is a 400, not a silent "no".
    for (path, body) in [
        (
            "/v1/services/api/weights",
            r#"{"blue":1,"green":1,"force":"yes"}"#,
        ),
        (
            "/v1/services/api/weights?force=maybe",
            r#"{"blue":1,"green":1}"#,
        ),
        (
            "/v1/services/api/weights?forse=true",
            r#"{"blue":1,"green":1}"#,
        ),
    ] {
        let r = call(&p, "PUT", path, Some(body)).await;
        let reason = assert_error(&r, 400, body);
        assert!(reason.contains("force"), "{body}: {reason}");
    }
    assert_eq!(service(&p).await["weights"], json!({"blue":50,"green":50}));
    // The query flag works for flips too.
    let r = call(
        &p,
        "POST",
        "/v1/services/api/flip?force=true",
        Some(r#"{"to":"green"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["live"], "green");

    // The CLI: refused with the reason, then --force.
    let admin_url = p.admin_url("");
    let env = [("DUOTONE_ADMIN_TOKEN", TOKEN)];
    let (code, out, err) = run_cli(
        &[
            "weights", "api", "blue=80", "green=20", "--admin", &admin_url,
        ],
        &env,
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("409") && err.contains("no healthy member"),
        "{err}"
    );
    let (code, out, err) = run_cli(
        &[
            "weights", "api", "blue=80", "green=20", "--force", "--admin", &admin_url,
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(service(&p).await["weights"], json!({"blue":80,"green":20}));

    // Both colors down: the reason names both.
    blue.set_healthy(false);
    wait_service(&p, "blue down too", |v| !healthy(v, "blue")).await;
    let r = call(
        &p,
        "PUT",
        "/v1/services/api/weights",
        Some(r#"{"blue":50,"green":50}"#),
    )
    .await;
    let reason = assert_error(&r, 409, "both down");
    assert!(
        reason.contains("\"blue\"") && reason.contains("\"green\""),
        "{reason}"
    );
    // Health returns: no force needed any more.
    blue.set_healthy(true);
    green.set_healthy(true);
    wait_service(&p, "both healthy", |v| {
        healthy(v, "blue") && healthy(v, "green")
    })
    .await;
    let r = call(
        &p,
        "PUT",
        "/v1/services/api/weights",
        Some(r#"{"blue":50,"green":50}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Raw HTTP/1.1 to the admin listener; returns the status code (0 if none).
async fn raw_status(p: &Proxy, head: &str) -> (u16, String) {
    let text = raw(p.ports.admin, head.as_bytes(), Duration::from_secs(5)).await;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_origin_must_be_the_admin_apis_own() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let p = Proxy::start(&config(
        &blue,
        &green,
        r#"admin_hosts = ["edge.internal", "Other.Internal:1234"]"#,
        "",
    ))
    .await;
    let port = p.ports.admin.port();
    let get = |host: String| {
        let p = &p;
        async move { send(p, "GET", "/v1/services", &[("host", host.as_str())], "").await }
    };

    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_string(),
        format!("localhost.evil.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        format!("localhost:{}", port.wrapping_add(1)),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
        format!("other.internal:{port}"),
        "edge.internal:x".to_string(),
        format!("user@localhost:{port}"),
    ] {
        let r = get(host.clone()).await;
        let reason = assert_error(&r, 403, &host);
        assert!(reason.contains("admin_hosts"), "{host}: {reason}");
    }
    for host in [
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("edge.internal:{port}"),
        "edge.internal".to_string(),
        "other.internal:1234".to_string(),
    ] {
        let r = get(host.clone()).await;
        assert_eq!(r.status, 200, "{host}: {}", r.text());
    }

    // No Host, two Hosts, or a foreign absolute-form target: refused.
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    for head in [
        format!("GET /v1/services HTTP/1.1\r\n{auth}Connection: close\r\n\r\n"),
        format!("GET /v1/services HTTP/1.0\r\n{auth}\r\n"),
        format!(
            "GET /v1/services HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: evil.example:{port}\r\n{auth}Connection: close\r\n\r\n"
        ),
        format!(
            "GET http://evil.example:{port}/v1/services HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Connection: close\r\n\r\n"
        ),
    ] {
        let (status, text) = raw_status(&p, &head).await;
        assert_eq!(status, 403, "{head:?}:\n{text}");
        assert!(text.contains("\"error\""), "{head:?}:\n{text}");
    }
    let (status, text) = raw_status(
        &p,
        &format!("GET /v1/services HTTP/1.1\r\nHost: localhost:{port}\r\n{auth}Connection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{text}");

    // Origin: a web page elsewhere is refused, even with a JSON flip.
    for origin in [
        "http://evil.example",
        &format!("http://evil.example:{port}"),
        "null",
        &format!("http://localhost:{}", port.wrapping_add(1)),
        &format!("ftp://localhost:{port}"),
    ] {
        for (method, path, body) in [
            ("GET", "/v1/services", ""),
            ("POST", "/v1/services/api/flip", r#"{"to":"green"}"#),
        ] {
            let r = send(
                &p,
                method,
                path,
                &[("origin", origin), ("content-type", "application/json")],
                body,
            )
            .await;
            let reason = assert_error(&r, 403, origin);
            assert!(reason.contains("origin"), "{origin}: {reason}");
        }
    }
    assert_eq!(service(&p).await["live"], "blue");
    for origin in [
        format!("http://localhost:{port}"),
        format!("http://127.0.0.1:{port}"),
        format!("http://edge.internal:{port}"),
    ] {
        let r = send(
            &p,
            "GET",
            "/v1/services",
            &[("origin", origin.as_str())],
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{origin}: {}", r.text());
    }

    // The checks come before auth, and auth still applies to allowed hosts.
    let r = admin(
        "GET",
        &p.admin_url("/v1/services"),
        Some("wrong-token-wrong-token"),
        None,
    )
    .await
    .unwrap();
    assert_error(&r, 401, "wrong token");
    // /healthz stays open to any caller (container health checks).
    let r = Http::new()
        .send(
            "GET",
            &p.admin_url("/healthz"),
            &[("host", "evil.example")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    // admin_hosts is re-read on reload.
    p.rewrite(&config(
        &blue,
        &green,
        r#"admin_hosts = ["new.internal"]"#,
        "",
    ));
    let r = call(&p, "POST", "/v1/reload", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get("new.internal".into()).await.status, 200);
    assert_eq!(get(format!("edge.internal:{port}")).await.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_need_a_json_content_type() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let p = Proxy::start(&config(&blue, &green, "", "")).await;
    wait_service(&p, "both healthy", |v| {
        healthy(v, "blue") && healthy(v, "green")
    })
    .await;
    let changes = [
        ("POST", "/v1/services/api/flip", r#"{"to":"green"}"#),
        ("POST", "/v1/services/api/flip", ""),
        (
            "PUT",
            "/v1/services/api/weights",
            r#"{"blue":50,"green":50}"#,
        ),
        ("POST", "/v1/reload", ""),
        ("DELETE", "/v1/services/api", ""),
        ("PATCH", "/v1/services/api", "{}"),
    ];
    let refused: [Option<&str>; 8] = [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=xyz"),
        Some("application/jsonp"),
        Some("text/json"),
        Some(""),
        None,
    ];
    for (method, path, body) in changes {
        for ct in refused {
            let headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
            let r = send(&p, method, path, &headers, body).await;
            let reason = assert_error(&r, 415, &format!("{method} {path} {ct:?}"));
            assert!(reason.contains("application/json"), "{reason}");
        }
    }
    // No refused reload ran (neither succeeded nor failed).
    let metrics = call(&p, "GET", "/metrics", None).await.text();
    let reloads: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("duotone_config_reloads_total{"))
        .collect();
    assert_eq!(reloads.len(), 2, "{metrics}");
    assert!(reloads.iter().all(|l| l.ends_with(" 0")), "{reloads:?}");
    let v = service(&p).await;
    assert_eq!(
        (v["live"].clone(), v["weights"].clone()),
        (json!("blue"), Value::Null)
    );

    // JSON with parameters or in another case is JSON.
    for ct in ["application/json; charset=utf-8", "Application/JSON"] {
        let r = send(
            &p,
            "POST",
            "/v1/services/api/flip",
            &[("content-type", ct)],
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{ct}: {}", r.text());
    }
    assert_eq!(service(&p).await["live"], "blue");
    // Reads are not affected by a content type.
    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let r = send(&p, "GET", "/v1/services/api", &[("content-type", ct)], "").await;
        assert_eq!(r.status, 200, "{ct}: {}", r.text());
    }

    // The CLI sends JSON for every change, even an empty flip and a reload.
    let admin_url = p.admin_url("");
    let env = [("DUOTONE_ADMIN_TOKEN", TOKEN)];
    let (code, out, err) = run_cli(&["flip", "api", "--admin", &admin_url], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("blue -> green"), "{out}");
    let (code, out, err) = run_cli(&["reload", "--admin", &admin_url], &env);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test]
async fn blank_admin_tokens_are_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, token_line: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!("[server]\nhttp = \"127.0.0.1:8080\"\n{token_line}\nstate_dir = \"state\"\n"),
        )
        .unwrap();
        path.display().to_string()
    };
    for (name, line, env) in [
        ("empty.toml", "admin_token = \"\"", None),
        (
            "spaces.toml",
            "admin_token = \"                    \"",
            None,
        ),
        ("tabs.toml", "admin_token = \"\\t\\n \"", None),
        ("envvar.toml", "admin_token = \"${T}\"", Some("   ")),
        ("default.toml", "admin_token = \"${T:-}\"", None),
    ] {
        let file = write(name, line);
        let env: Vec<(&str, &str)> = env.map(|v| ("T", v)).into_iter().collect();
        let (code, out, err) = run_cli(&["check", "-c", &file], &env);
        assert_eq!(code, 1, "{name}: {out}{err}");
        assert!(
            err.contains(&format!("{file}:3: server.admin_token: ")) && err.contains("empty"),
            "{name}: {err}"
        );
    }
    let good = write("good.toml", &format!("admin_token = \"{TOKEN}\""));
    let (code, out, err) = run_cli(&["check", "-c", &good], &[]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_refuses_a_corrupt_live_state_file() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let p = Proxy::start(&config(&blue, &green, "", "")).await;
    wait_service(&p, "both healthy", |v| {
        healthy(v, "blue") && healthy(v, "green")
    })
    .await;
    let r = call(
        &p,
        "POST",
        "/v1/services/api/flip",
        Some(r#"{"to":"green"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let live = p.state_dir().join("live.json");
    assert!(live.exists());
    let http = Http::new();
    assert_eq!(http.get(&p.url("/moved/")).await.unwrap().status, 200);

    // A new config (a redirect) and a torn state file.
    p.rewrite(&config(
        &blue,
        &green,
        "",
        "  [[sites.routes]]\n  path = \"/moved/\"\n  redirect = { to = \"https://example.com/\", status = 308 }\n",
    ));
    std::fs::write(&live, "{\n  \"services\": {\n    \"api\": {\"live\": \"gr").unwrap();
    let r = call(&p, "POST", "/v1/reload", None).await;
    let reason = assert_error(&r, 400, "reload with a torn live.json");
    assert!(
        reason.starts_with(&format!("{}:3: ", live.display())) && reason.contains("restart"),
        "{reason}"
    );
    // The running config and live color stay.
    assert_eq!(http.get(&p.url("/moved/")).await.unwrap().status, 200);
    assert_eq!(service(&p).await["live"], "green");
    // SIGHUP takes the same path.
    p.signal(libc::SIGHUP);
    let logged = e2e::eventually(Duration::from_secs(5), || async {
        p.log().contains("SIGHUP: reload refused").then_some(())
    })
    .await;
    assert!(logged.is_some(), "{}", p.log());
    assert_eq!(http.get(&p.url("/moved/")).await.unwrap().status, 200);

    // JSON of the wrong shape: refused too.
    std::fs::write(&live, r#"{"services":{"api":{"live":5}}}"#).unwrap();
    let r = call(&p, "POST", "/v1/reload", None).await;
    let reason = assert_error(&r, 400, "reload with a misshapen live.json");
    assert!(reason.contains("live.json"), "{reason}");

    // Once the file is fixed, the reload goes through.
    std::fs::remove_file(&live).unwrap();
    let r = call(&p, "POST", "/v1/reload", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(http.get(&p.url("/moved/")).await.unwrap().status, 308);
    assert_eq!(service(&p).await["live"], "green");
}

#[tokio::test]
async fn static_routes_do_not_follow_symlinks_unless_asked() {
    let files = tempfile::tempdir().unwrap();
    let root = files.path().join("www");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("real.txt"), "real\n").unwrap();
    std::os::unix::fs::symlink("real.txt", root.join("alias.txt")).unwrap();
    std::fs::create_dir(root.join("sub")).unwrap();
    std::os::unix::fs::symlink("sub", root.join("sublink")).unwrap();
    std::fs::write(root.join("sub/inner.txt"), "inner\n").unwrap();
    let root = root.display();
    let p = Proxy::start(&format!(
        r#"
[server]
http = "{{http}}"
admin = "{{admin}}"
state_dir = "{{state}}"
admin_token = "{TOKEN}"

[[sites]]
hosts = ["*"]
  [[sites.routes]]
  path = "/default/"
  static = {{ root = "{root}" }}
  [[sites.routes]]
  path = "/follow/"
  static = {{ root = "{root}", follow_symlinks = true }}
"#
    ))
    .await;
    let http = Http::new();
    for (path, status) in [
        ("/default/real.txt", 200),
        ("/default/sub/inner.txt", 200),
        ("/default/alias.txt", 404),
        ("/default/sublink/inner.txt", 404),
        ("/follow/real.txt", 200),
        ("/follow/alias.txt", 200),
        ("/follow/sublink/inner.txt", 200),
    ] {
        let r = http.get(&p.url(path)).await.unwrap();
        assert_eq!(r.status, status, "{path}: {}", r.text());
    }
}

/// Failed client handshakes (garbage, a client that rejects the
/// certificate, one that hangs up) are normal at an edge: no ERROR line
/// each, one summary line; the proxy's real errors are not hidden by this
/// (see the unit test of `duotone::ops::logging`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tls_handshakes_are_not_logged_as_errors() {
    let app = Upstream::start("app").await;
    let p = Proxy::start(&format!(
        r#"
[server]
http = "{{http}}"
https = "{{https}}"
admin = "{{admin}}"
state_dir = "{{state}}"
admin_token = "{TOKEN}"

[[sites]]
hosts = ["self.test"]
tls = "self-signed"
  [[sites.routes]]
  path = "/"
  service = "app"

[services.app]
colors.blue = ["{}"]
"#,
        app.member()
    ))
    .await;
    let https = p.ports.https;
    for _ in 0..3 {
        // Not TLS at all.
        raw(
            https,
            b"GET / HTTP/1.1\r\nHost: self.test\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        // A ClientHello cut short, then the client hangs up.
        raw(
            https,
            &[0x16, 0x03, 0x01, 0x00, 0xff, 0x01],
            Duration::from_millis(200),
        )
        .await;
    }
    // A client that does not trust the certificate aborts with an alert.
    let roots = rustls::RootCertStore::empty();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = match tokio::net::TcpStream::connect(https).await {
        Ok(tcp) => tcp,
        Err(e) => panic!("connect {https}: {e}; proxy log:\n{}", p.log()),
    };
    let name = rustls::pki_types::ServerName::try_from("self.test").unwrap();
    assert!(connector.connect(name, tcp).await.is_err());

    // The proxy still serves, so what it logged about those is in the log.
    let r = Http::new().get(&p.url("/")).await.unwrap();
    assert!(
        r.status == 200 || r.status == 404 || r.status == 308,
        "{}",
        r.text()
    );
    let summary = e2e::eventually(Duration::from_secs(5), || async {
        p.log().contains("client handshakes failed").then_some(())
    })
    .await;
    let log = p.log();
    assert!(summary.is_some(), "no summary line:\n{log}");
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("pingora_core::services::listening"))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}\n{log}");
    // One summary for the burst, not one line per failure.
    assert_eq!(log.matches("client handshakes failed").count(), 1, "{log}");
    // Each one is counted (the last ones may end a moment after the client).
    let counted = e2e::eventually(Duration::from_secs(5), || async {
        let metrics = call(&p, "GET", "/metrics", None).await.text();
        let failures: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("duotone_client_handshake_failures_total "))
            .and_then(|v| v.trim().parse().ok())?;
        (failures >= 7.0).then_some(())
    })
    .await;
    assert!(
        counted.is_some(),
        "{}",
        call(&p, "GET", "/metrics", None).await.text()
    );
}
