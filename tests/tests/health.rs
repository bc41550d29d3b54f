//! Why a member is down: the admin API, `duotone status` and `duotone
//! deploy` name the last check's failure (connection refused, no such
//! socket, a timeout, a status), with real sockets behind each.

use e2e::client::admin;
use e2e::proxy::{run_cli, Proxy};
use e2e::upstream::Upstream;
use std::time::Duration;

const TOKEN: &str = "health-test-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_members_say_why() {
    let answers_503 = Upstream::start("sick").await;
    answers_503.set_healthy(false);
    let healthy = Upstream::start("ok").await;
    let refused = format!("127.0.0.1:{}", e2e::free_port());
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("gone/app.sock");
    let (hanging, _fill, _listener) = e2e::blackhole();
    let p = Proxy::start(&e2e::proxy::api_config(
        TOKEN,
        &format!(
            r#"live = "blue"
health = {{ path = "/healthz", interval = "100ms", timeout = "300ms" }}
colors.blue = ["{ok}", "{sick}"]
colors.green = ["{refused}"]
colors.red = ["unix:{missing}"]
colors.slow = ["{hanging}"]
"#,
            ok = healthy.member(),
            sick = answers_503.member(),
            missing = missing.display(),
        ),
    ))
    .await;

    let get = |path: &'static str| {
        let url = p.admin_url(path);
        async move {
            let r = admin("GET", &url, Some(TOKEN), None).await.unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()
        }
    };
    let error_of = |v: &serde_json::Value, color: &str, i: usize| {
        v["colors"][color]["members"][i]["last_check_error"]
            .as_str()
            .map(str::to_string)
    };
    let all_checked = |v: &serde_json::Value| {
        ["green", "red", "slow"]
            .iter()
            .all(|c| error_of(v, c, 0).is_some())
            && error_of(v, "blue", 1).is_some()
            && v["colors"]["blue"]["members"][0]["health"] == "up"
    };
    let v = e2e::eventually(Duration::from_secs(15), || async {
        let v = get("/v1/services/api").await;
        all_checked(&v).then_some(v)
    })
    .await
    .unwrap_or_else(|| panic!("checks never failed; log:\n{}", p.log()));

    assert_eq!(error_of(&v, "blue", 1).as_deref(), Some("status 503"));
    assert_eq!(
        error_of(&v, "green", 0).as_deref(),
        Some("connection refused")
    );
    assert_eq!(
        error_of(&v, "red", 0),
        Some(format!("no such socket {}", missing.display()))
    );
    assert_eq!(
        error_of(&v, "slow", 0).as_deref(),
        Some("timed out after 300ms")
    );
    // A member whose last check passed has no error.
    assert!(
        v["colors"]["blue"]["members"][0]
            .get("last_check_error")
            .is_none(),
        "{v:#}"
    );
    for c in ["green", "red", "slow"] {
        assert_eq!(v["colors"][c]["members"][0]["health"], "down", "{v:#}");
    }

    // The list shows the same.
    let list = get("/v1/services").await;
    let api = &list["services"][0];
    assert_eq!(
        error_of(api, "green", 0).as_deref(),
        Some("connection refused")
    );

    // `duotone status` prints each reason beside "down".
    let env = [
        ("DUOTONE_ADMIN", p.admin_url("")),
        ("DUOTONE_ADMIN_TOKEN", TOKEN.to_string()),
    ];
    let cli = move |args: Vec<&'static str>| {
        let env = env.clone();
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            run_cli(&args, &env)
        })
    };
    let (code, out, err) = cli(vec!["status", "api"]).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    for want in [
        format!("{} down (status 503)", answers_503.member()),
        format!("{refused} down (connection refused)"),
        format!(
            "unix:{} down (no such socket {})",
            missing.display(),
            missing.display()
        ),
        format!("{hanging} down (timed out after 300ms)"),
    ] {
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") == want),
            "missing {want:?} in:\n{out}"
        );
    }

    // `duotone deploy` to a color that never comes up says why.
    let (code, out, err) = cli(vec![
        "deploy",
        "--service",
        "api",
        "--to",
        "green",
        "--start",
        "true",
        "--health-timeout",
        "1s",
    ])
    .await
    .unwrap();
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("{refused} check failed: connection refused")),
        "{out}"
    );
    assert!(
        err.contains("did not become healthy")
            && err.contains("last check failed: connection refused"),
        "{err}"
    );
}

/// A uWSGI process (Debian's `uwsgi` with `uwsgi-plugin-python3`), killed
/// on drop.
struct Uwsgi(std::process::Child);

impl Drop for Uwsgi {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts uWSGI speaking the uwsgi protocol on `socket` (`host:port` or a
/// path) with the WSGI app in `app`; `None` when uWSGI or its python3
/// plugin is not installed.
fn uwsgi(socket: &str, app: &std::path::Path) -> Option<Uwsgi> {
    let usable = std::process::Command::new("uwsgi")
        .args(["--plugin", "python3", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !usable {
        return None;
    }
    let child = std::process::Command::new("uwsgi")
        .args([
            "--plugin",
            "python3",
            "--socket",
            socket,
            "--processes",
            "1",
        ])
        .arg("--wsgi-file")
        .arg(app)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    Some(Uwsgi(child))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uwsgi_members_are_checked_over_the_uwsgi_protocol() {
    let dir = tempfile::tempdir().unwrap();
    // 200 only for a GET of /healthz whose variables say so, as nginx's
    // uwsgi_params would; the sick app always answers 503.
    let ok = dir.path().join("ok.py");
    std::fs::write(
        &ok,
        r#"
def application(env, start_response):
    good = (env.get("REQUEST_METHOD") == "GET" and env.get("PATH_INFO") == "/healthz"
            and env.get("HTTP_HOST") == "app.test" and env.get("SERVER_NAME") == "app.test"
            and env.get("HTTP_USER_AGENT") == "duotone-health")
    start_response("200 OK" if good else "500 Internal Server Error", [("Content-Type", "text/plain")])
    return [repr(sorted(env.items())).encode()]
"#,
    )
    .unwrap();
    let sick = dir.path().join("sick.py");
    std::fs::write(
        &sick,
        "def application(env, start_response):\n    start_response(\"503 Service Unavailable\", [])\n    return [b\"no\"]\n",
    )
    .unwrap();
    let tcp = format!("127.0.0.1:{}", e2e::free_port());
    let sock = dir.path().join("sick.sock");
    let (Some(_ok), Some(_sick)) = (uwsgi(&tcp, &ok), uwsgi(sock.to_str().unwrap(), &sick)) else {
        eprintln!("SKIPPED uwsgi_members_are_checked_over_the_uwsgi_protocol: no uwsgi with the python3 plugin");
        return;
    };
    let p = Proxy::start(&e2e::proxy::api_config(
        TOKEN,
        &format!(
            r#"live = "blue"
health = {{ path = "/healthz", interval = "100ms", timeout = "1s", host = "app.test" }}
colors.blue = ["uwsgi://{tcp}"]
colors.green = ["uwsgi+unix:{sock}"]
"#,
            sock = sock.display(),
        ),
    ))
    .await;
    let url = p.admin_url("/v1/services/api");
    let member = |v: &serde_json::Value, color: &str| v["colors"][color]["members"][0].clone();
    let v = e2e::eventually(Duration::from_secs(20), || async {
        let r = admin("GET", &url, Some(TOKEN), None).await.ok()?;
        let v = r.json();
        (member(&v, "blue")["health"] == "up" && member(&v, "green")["health"] == "down")
            .then_some(v)
    })
    .await
    .unwrap_or_else(|| panic!("uwsgi checks did not settle; log:\n{}", p.log()));
    assert!(
        member(&v, "blue").get("last_check_error").is_none(),
        "{v:#}"
    );
    assert_eq!(
        member(&v, "green")["last_check_error"],
        "status 503",
        "{v:#}"
    );
}
