//! Reloads cannot open or move listeners (Pingora opens its sockets at
//! start): a reload that would need an https listener that is not open, or
//! other addresses, is refused with a 400 naming the fix (restart), the
//! running config stays, and plain HTTP is never redirected to a port where
//! nothing listens.

use e2e::client::{admin, Http};
use e2e::proxy::{run_cli, Proxy};
use e2e::upstream::Upstream;
use std::time::Duration;

const TOKEN: &str = "reload-listeners-token-0123456789";

/// A config with one site `app.test` routing to `upstream`; with `tls`,
/// the site is self-signed and `server.https` is set.
fn config(upstream: &Upstream, tls: bool) -> String {
    let (https, site_tls) = if tls {
        ("https = \"{https}\"\n", "tls = \"self-signed\"\n")
    } else {
        ("", "")
    };
    format!(
        r#"
[server]
http = "{{http}}"
{https}admin = "{{admin}}"
state_dir = "{{state}}"
admin_token = "{TOKEN}"

[[sites]]
hosts = ["app.test"]
{site_tls}
  [[sites.routes]]
  path = "/"
  service = "app"

[services.app]
colors.blue = ["{member}"]
"#,
        member = upstream.member()
    )
}

async fn plain_get(p: &Proxy) -> e2e::client::Resp {
    Http::new()
        .get_with(&p.url("/"), &[("host", "app.test")])
        .await
        .unwrap()
}

async fn reload(p: &Proxy) -> e2e::client::Resp {
    admin("POST", &p.admin_url("/v1/reload"), Some(TOKEN), Some("{}"))
        .await
        .unwrap()
}

async fn reload_failures(p: &Proxy) -> f64 {
    let m = admin("GET", &p.admin_url("/metrics"), Some(TOKEN), None)
        .await
        .unwrap()
        .text();
    m.lines()
        .find_map(|l| l.strip_prefix(r#"duotone_config_reloads_total{result="failure"} "#))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_reload_that_adds_https_is_refused_and_plain_http_keeps_serving() {
    let app = Upstream::start("app").await;
    let p = Proxy::start(&config(&app, false)).await;
    let r = plain_get(&p).await;
    assert_eq!((r.status, r.text().as_str()), (200, "app"));

    p.rewrite(&config(&app, true));
    let r = reload(&p).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.header("content-type"), "application/json");
    let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
    let want = format!(
        "server.https: listeners cannot change on reload: restart duotone to add https on {}",
        p.ports.https
    );
    assert!(msg.contains(&want), "{msg}");
    assert!(
        msg.starts_with(&format!("{}:4: ", p.config.display())),
        "names the file and line: {msg}"
    );

    // The running config stays: the site is still served on plain HTTP,
    // not redirected to the https port, where nothing listens.
    let r = plain_get(&p).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "app"),
        "{:?}",
        r.headers
    );
    assert!(
        tokio::net::TcpStream::connect(p.ports.https).await.is_err(),
        "nothing listens on the https port"
    );

    // SIGHUP and the CLI are refused the same way.
    let before = reload_failures(&p).await;
    p.signal(libc::SIGHUP);
    let counted = e2e::eventually(Duration::from_secs(10), || async {
        (reload_failures(&p).await > before).then_some(())
    })
    .await;
    assert!(
        counted.is_some(),
        "SIGHUP reload not refused; log:\n{}",
        p.log()
    );
    assert!(p.log().contains(&want), "{}", p.log());
    let admin_url = p.admin_url("");
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run_cli(
            &["reload"],
            &[
                ("DUOTONE_ADMIN", &admin_url),
                ("DUOTONE_ADMIN_TOKEN", TOKEN),
            ],
        )
    })
    .await
    .unwrap();
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("400") && err.contains(&want), "{err}");
    let r = plain_get(&p).await;
    assert_eq!((r.status, r.text().as_str()), (200, "app"));
}

#[tokio::test]
async fn a_reload_that_moves_https_is_refused_and_redirects_keep_the_open_port() {
    let app = Upstream::start("app").await;
    let p = Proxy::start(&config(&app, true)).await;
    let location = format!("https://app.test:{}/x", p.ports.https.port());
    let r = Http::new()
        .get_with(&p.url("/x"), &[("host", "app.test")])
        .await
        .unwrap();
    assert_eq!((r.status, r.header("location")), (308, location.as_str()));

    let moved = e2e::free_port();
    let text = std::fs::read_to_string(&p.config).unwrap().replace(
        &format!("https = \"{}\"", p.ports.https),
        &format!("https = \"127.0.0.1:{moved}\""),
    );
    std::fs::write(&p.config, text).unwrap();
    let r = reload(&p).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.contains(&format!(
            "server.https: listeners cannot change on reload: restart duotone to move https from {} to 127.0.0.1:{moved}",
            p.ports.https
        )),
        "{msg}"
    );
    // Redirects still name the port that is open, and it is.
    let r = Http::new()
        .get_with(&p.url("/x"), &[("host", "app.test")])
        .await
        .unwrap();
    assert_eq!((r.status, r.header("location")), (308, location.as_str()));
    assert!(tokio::net::TcpStream::connect(p.ports.https).await.is_ok());

    // A reload that keeps the listeners still works.
    p.rewrite(&config(&app, true));
    let r = reload(&p).await;
    assert_eq!(r.status, 200, "{}", r.text());
}
