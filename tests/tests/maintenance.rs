//! Maintenance mode and custom error pages, end to end on every transport
//! (lane HTTP/1.1, lane HTTP/2, Pingora's path with HTTP/1.1 and HTTP/2):
//! the maintenance page with 503 and Retry-After for a service or a site,
//! the allow list and the secret cookie that still reach the app, the
//! state kept across a restart, the CLI, and the site's pages for the
//! edge's own 404 and 502, never for the app's own answers.

use e2e::admin::{flip, maintenance};
use e2e::bluegreen::two_colors;
use e2e::client::{Http, Resp};
use e2e::proxy::{run_cli, server_config, Proxy};
use e2e::upstream::Upstream;
use serde_json::Value;
use std::path::Path;

const TOKEN: &str = "maintenance-test-token-0123";
const SECRET: &str = "let-me-in-0123456789";
const MAINTENANCE_HTML: &str = "<h1>Back soon</h1><p>custom maintenance page</p>\n";
const NOT_FOUND_HTML: &str = "<h1>Nothing here</h1><p>custom 404 page</p>\n";
const BAD_GATEWAY_HTML: &str = "<h1>Our app is down</h1><p>custom 502 page</p>\n";
const TOO_LARGE_TXT: &str = "custom 413 page: that upload is too large\n";

/// The pages (in `pages`) and a static root (in `www`) the config names.
fn write_pages(pages: &Path, www: &Path) {
    std::fs::write(pages.join("maintenance.html"), MAINTENANCE_HTML).unwrap();
    std::fs::write(pages.join("404.html"), NOT_FOUND_HTML).unwrap();
    std::fs::write(pages.join("502.html"), BAD_GATEWAY_HTML).unwrap();
    std::fs::write(pages.join("413.txt"), TOO_LARGE_TXT).unwrap();
    std::fs::write(www.join("app.css"), "body{}").unwrap();
}

/// A default site `*` with error pages (`/app/` → `api`, `/down/` → a
/// service whose only member refuses connections, `/static/` → files), and
/// a site `other.test` without pages (`/` → `other`, `/down/` → `down`).
fn config(api: &Upstream, other: &Upstream, pages: &Path, www: &Path) -> String {
    let pages = pages.display();
    let down = format!("127.0.0.1:{}", e2e::free_port());
    format!(
        r#"{server}
[maintenance]
allow = ["10.1.0.0/16"]
cookie = "staff"
secret = "{SECRET}"
retry_after = "120s"

[[sites]]
hosts = ["*"]
error_pages = {{ 404 = "{pages}/404.html", 502 = "{pages}/502.html", 413 = "{pages}/413.txt", maintenance = "{pages}/maintenance.html" }}
  [[sites.routes]]
  path = "/app/"
  service = "api"
  [[sites.routes]]
  path = "/down/"
  service = "down"
  [[sites.routes]]
  path = "/upload/"
  service = "api"
  max_body = "10"
  [[sites.routes]]
  path = "/static/"
  static = {{ root = "{www}" }}

[[sites]]
hosts = ["other.test"]
  [[sites.routes]]
  path = "/"
  service = "other"
  [[sites.routes]]
  path = "/down/"
  service = "down"

[services.api]
colors.blue = ["{api}"]

[services.other]
colors.blue = ["{other}"]

[services.down]
colors.blue = ["{down}"]
"#,
        server = server_config(TOKEN, r#"trusted_proxies = ["127.0.0.1/32"]"#),
        www = www.display(),
        api = api.member(),
        other = other.member(),
    )
}

/// A running setup: the same config behind a proxy with the lane and one
/// without (`DUOTONE_LANE=off`).
struct Setup {
    lane: Proxy,
    pingora: Proxy,
    api: Upstream,
    _other: Upstream,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn setup() -> Setup {
    let api = Upstream::start("api").await;
    let other = Upstream::start("other").await;
    let pages = tempfile::tempdir().unwrap();
    let www = tempfile::tempdir().unwrap();
    write_pages(pages.path(), www.path());
    let cfg = config(&api, &other, pages.path(), www.path());
    let lane = Proxy::start(&cfg).await;
    let pingora = Proxy::start_with_env(&cfg, &[("DUOTONE_LANE", "off")]).await;
    Setup {
        lane,
        pingora,
        api,
        _other: other,
        _dirs: (pages, www),
    }
}

impl Setup {
    /// Lane HTTP/1.1, lane HTTP/2 (h2c), Pingora's path with both.
    fn transports(&self) -> Vec<(&'static str, &Proxy, Http)> {
        vec![
            ("lane h1", &self.lane, Http::new()),
            ("lane h2", &self.lane, Http::h2()),
            ("pingora h1", &self.pingora, Http::new()),
            ("pingora h2", &self.pingora, Http::h2()),
        ]
    }

    fn proxies(&self) -> [&Proxy; 2] {
        [&self.lane, &self.pingora]
    }
}

async fn call(p: &Proxy, method: &str, path: &str, body: Option<&str>) -> Resp {
    e2e::admin::call(p, TOKEN, method, path, body).await
}

async fn get(client: &Http, p: &Proxy, path: &str, headers: &[(&str, &str)]) -> Resp {
    client
        .get_with(&p.url(path), headers)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
}

/// Asserts `r` is the maintenance answer with the custom page.
fn is_maintenance(r: &Resp, what: &str) {
    assert_eq!(r.status, 503, "{what}: {}", r.text());
    assert_eq!(r.header("retry-after"), "120", "{what}");
    assert_eq!(r.header("cache-control"), "no-store", "{what}");
    assert_eq!(
        r.header("content-type"),
        "text/html; charset=utf-8",
        "{what}"
    );
    assert_eq!(r.text(), MAINTENANCE_HTML, "{what}");
}

#[tokio::test]
async fn maintenance_page_allow_list_and_cookie_on_every_transport() {
    let s = setup().await;
    for p in s.proxies() {
        let v = maintenance(p, TOKEN, "api", true).await;
        assert_eq!(v["maintenance"], true, "{v:#}");
        // A body that is not {"on": bool} is refused with its reason.
        let r = call(
            p,
            "POST",
            "/v1/services/api/maintenance",
            Some(r#"{"on":"yes"}"#),
        )
        .await;
        assert_eq!(r.status, 400, "{}", r.text());
        let r = call(
            p,
            "POST",
            "/v1/services/nope/maintenance",
            Some(r#"{"on":true}"#),
        )
        .await;
        assert_eq!(r.status, 404, "{}", r.text());
    }
    let hits = s.api.hits();
    for (name, p, client) in s.transports() {
        let r = get(&client, p, "/app/x", &[]).await;
        is_maintenance(&r, name);
        let wrong = get(
            &client,
            p,
            "/app/x",
            &[("cookie", "staff=wrong-secret-0123456789")],
        )
        .await;
        is_maintenance(&wrong, &format!("{name}, wrong cookie"));
        let other_name = format!("other={SECRET}");
        let r = get(&client, p, "/app/x", &[("cookie", &other_name)]).await;
        is_maintenance(&r, &format!("{name}, the secret under another name"));
        let head = client
            .send("HEAD", &p.url("/app/x"), &[], "")
            .await
            .unwrap();
        assert_eq!(
            (head.status, head.header("retry-after")),
            (503, "120"),
            "{name} HEAD"
        );
        assert!(head.body.is_empty(), "{name}: no body for HEAD");
        // Files of the site are not in maintenance: only the service is.
        let r = get(&client, p, "/static/app.css", &[]).await;
        assert_eq!((r.status, r.text().as_str()), (200, "body{}"), "{name}");
    }
    assert_eq!(
        s.api.hits(),
        hits,
        "no request under maintenance reached the app"
    );
    for (name, p, client) in s.transports() {
        // The secret cookie reaches the app, among others.
        let cookie = format!("a=1; staff={SECRET}; b=2");
        let r = get(&client, p, "/app/x", &[("cookie", &cookie)]).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "api"),
            "{name}, cookie"
        );
        // So does a client on the allow list (seen through trusted_proxies).
        let r = get(&client, p, "/app/x", &[("x-forwarded-for", "10.1.2.3")]).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "api"),
            "{name}, allowed"
        );
        let r = get(&client, p, "/app/x", &[("x-forwarded-for", "10.2.0.1")]).await;
        is_maintenance(&r, &format!("{name}, a client not on the allow list"));
    }
    assert_eq!(s.api.hits(), hits + 8);

    // Site-level: every route of the site, other sites untouched. The
    // default site is named "*" (sent escaped, as the CLI does).
    for p in s.proxies() {
        let v = maintenance(p, TOKEN, "api", false).await;
        assert_eq!(v["maintenance"], false, "{v:#}");
        let r = call(
            p,
            "POST",
            "/v1/sites/%2A/maintenance",
            Some(r#"{"on":true}"#),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["name"], "*");
        assert_eq!(r.json()["maintenance"], true);
        let r = call(
            p,
            "POST",
            "/v1/sites/nope.test/maintenance",
            Some(r#"{"on":true}"#),
        )
        .await;
        assert_eq!(r.status, 404, "{}", r.text());
        let sites = call(p, "GET", "/v1/sites", None).await.json();
        assert_eq!(
            sites["sites"],
            serde_json::json!([
                {"name": "*", "hosts": ["*"], "maintenance": true},
                {"name": "other.test", "hosts": ["other.test"], "maintenance": false},
            ])
        );
    }
    for (name, p, client) in s.transports() {
        for path in ["/app/x", "/static/app.css", "/missing"] {
            let r = get(&client, p, path, &[]).await;
            // A path no route serves still belongs to the site: no
            // maintenance page (nothing is routed), its 404 page.
            if path == "/missing" {
                assert_eq!(r.status, 404, "{name} {path}");
            } else {
                is_maintenance(&r, &format!("{name} {path}"));
            }
        }
    }
    for p in s.proxies() {
        let client = Http::new();
        let r = get(&client, p, "/", &[("host", "other.test")]).await;
        assert_eq!((r.status, r.text().as_str()), (200, "other"));
    }

    // Without a page of its own (and no default page): the built-in one.
    for p in s.proxies() {
        call(
            p,
            "POST",
            "/v1/services/other/maintenance",
            Some(r#"{"on":true}"#),
        )
        .await;
        let r = get(&Http::new(), p, "/", &[("host", "other.test")]).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), "120");
        assert_eq!(r.header("content-type"), "text/html; charset=utf-8");
        assert!(r.text().contains("Down for maintenance"), "{}", r.text());
    }
}

#[tokio::test]
async fn a_restart_keeps_maintenance_and_the_cli_turns_it_on_and_off() {
    let mut s = setup().await;
    let cli = |p: &Proxy, args: &[&str]| {
        let admin = p.admin_url("");
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--admin", admin.as_str(), "--token", TOKEN]);
        run_cli(&all, &[])
    };
    let (code, out, err) = cli(&s.lane, &["maintenance", "on", "api"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("maintenance on"), "{out}");
    let (code, out, err) = cli(&s.lane, &["maintenance", "on", "--site", "other.test"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("site other.test: maintenance on"), "{out}");
    let (code, _, err) = cli(&s.lane, &["maintenance", "on", "--site", "nope.test"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown site"), "{err}");
    let (code, _, err) = cli(&s.lane, &["maintenance", "on"]);
    assert_ne!(code, 0, "a service or a site is required: {err}");

    s.lane.kill();
    s.lane.spawn().await;

    let client = Http::new();
    is_maintenance(&get(&client, &s.lane, "/app/x", &[]).await, "after restart");
    let r = get(&client, &s.lane, "/", &[("host", "other.test")]).await;
    assert_eq!(r.status, 503, "the site's maintenance survives a restart");
    let v: Value = call(&s.lane, "GET", "/v1/services/api", None).await.json();
    assert_eq!(v["maintenance"], true);
    let metrics = call(&s.lane, "GET", "/metrics", None).await.text();
    for line in [
        "duotone_maintenance{service=\"api\"} 1",
        "duotone_maintenance{service=\"other\"} 0",
        "duotone_site_maintenance{site=\"other.test\"} 1",
        "duotone_site_maintenance{site=\"*\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    let (code, out, err) = cli(&s.lane, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("maintenance on: requests get the maintenance page"),
        "{out}"
    );
    assert!(out.contains("site other.test: maintenance on"), "{out}");

    let (code, out, err) = cli(&s.lane, &["maintenance", "off", "api"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cli(&s.lane, &["maintenance", "off", "--site", "other.test"]);
    assert_eq!(code, 0, "{out}{err}");
    let r = get(&client, &s.lane, "/app/x", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "api"));
    let r = get(&client, &s.lane, "/", &[("host", "other.test")]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "other"));
    let (_, out, _) = cli(&s.lane, &["status"]);
    assert!(!out.contains("maintenance on"), "{out}");

    // Off stays off across a restart too.
    s.lane.kill();
    s.lane.spawn().await;
    let r = get(&client, &s.lane, "/app/x", &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn error_pages_for_the_edges_own_answers_never_for_the_apps() {
    let s = setup().await;
    for (name, p, client) in s.transports() {
        // Every member of the service is down: the edge's 502, the page.
        let r = get(&client, p, "/down/x", &[]).await;
        assert_eq!(r.status, 502, "{name}: {}", r.text());
        assert_eq!(r.text(), BAD_GATEWAY_HTML, "{name}");
        assert_eq!(
            r.header("content-type"),
            "text/html; charset=utf-8",
            "{name}"
        );
        // No route: the 404 page.
        let r = get(&client, p, "/missing", &[]).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (404, NOT_FOUND_HTML),
            "{name}"
        );
        // A static route's 404: the page too.
        let r = get(&client, p, "/static/nope.css", &[]).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (404, NOT_FOUND_HTML),
            "{name}"
        );
        assert_eq!(
            r.header("content-type"),
            "text/html; charset=utf-8",
            "{name}"
        );
        // A body over the route's limit: the 413 page, its type by extension.
        let r = client
            .send("POST", &p.url("/upload/x"), &[], vec![b'x'; 100])
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.text().as_str()),
            (413, TOO_LARGE_TXT),
            "{name}"
        );
        assert_eq!(
            r.header("content-type"),
            "text/plain; charset=utf-8",
            "{name}"
        );
        // The app's own 502 and 404 pass through untouched.
        for code in [502, 404] {
            let r = get(&client, p, &format!("/app/status/{code}"), &[]).await;
            assert_eq!(r.status, code, "{name}");
            assert_eq!(r.text(), format!("api says {code}\n"), "{name}");
            assert_eq!(r.header("content-type"), "text/plain", "{name}");
        }
    }
    // A site without pages keeps the edge's text.
    for p in s.proxies() {
        let r = get(&Http::new(), p, "/down/x", &[("host", "other.test")]).await;
        assert_eq!(r.status, 502);
        assert_eq!(r.header("content-type"), "text/plain; charset=utf-8");
        assert!(r.text().starts_with("bad gateway"), "{}", r.text());
    }
}

#[tokio::test]
async fn unreadable_pages_and_unknown_keys_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("duotone.toml");
    let text = format!(
        r#"[server]
http = "127.0.0.1:1"
state_dir = "{state}"

[maintenance]
page = "{dir}/missing-maintenance.html"

[[sites]]
hosts = ["*"]
error_pages = {{ 404 = "{dir}/missing-404.html", 418 = "{dir}/x.html" }}
"#,
        state = dir.path().join("state").display(),
        dir = dir.path().display(),
    );
    std::fs::write(&cfg, &text).unwrap();
    let path = cfg.display().to_string();
    let (code, out, err) = run_cli(&["check", "-c", &path], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!(
            "{path}:10: sites[0].error_pages.418: unknown error page"
        )),
        "{err}"
    );
    // Unknown keys are found first; with them fixed, the files are checked.
    std::fs::write(&cfg, text.replace(", 418 = ", ", 503 = ")).unwrap();
    let (code, out, err) = run_cli(&["check", "-c", &path], &[]);
    assert_eq!(code, 1, "{out}{err}");
    for want in [
        format!("{path}:6: maintenance.page:"),
        format!("{path}:10: sites[0].error_pages.404:"),
        format!("{path}:10: sites[0].error_pages.503:"),
    ] {
        assert!(err.contains(&want), "{want} in {err}");
    }
    for f in ["missing-maintenance.html", "missing-404.html", "x.html"] {
        std::fs::write(dir.path().join(f), "<p>page</p>").unwrap();
    }
    let (code, out, err) = run_cli(&["check", "-c", &path], &[]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test]
async fn maintenance_keeps_the_config_weights_and_a_flip_keeps_maintenance() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let service = two_colors(
        &blue.member(),
        &green.member(),
        "weights = { blue = 50, green = 50 }",
    );
    let p = Proxy::start(&e2e::proxy::api_config(TOKEN, &service)).await;
    let weights = serde_json::json!({"blue": 50, "green": 50});
    let v = call(&p, "GET", "/v1/services/api", None).await.json();
    assert_eq!(v["weights"], weights);
    let v = maintenance(&p, TOKEN, "api", true).await;
    assert_eq!(
        (&v["maintenance"], &v["weights"]),
        (&Value::Bool(true), &weights)
    );
    let r = get(&Http::new(), &p, "/", &[]).await;
    assert_eq!(r.status, 503);
    // The built-in page, and the default Retry-After (300 s).
    assert_eq!(r.header("retry-after"), "300");
    let v = flip(&p, TOKEN, "api", "green").await;
    assert_eq!(v["maintenance"], true, "a flip keeps maintenance");
    let v = maintenance(&p, TOKEN, "api", false).await;
    assert_eq!(
        (&v["maintenance"], &v["live"]),
        (&Value::Bool(false), &Value::from("green"))
    );
    let r = get(&Http::new(), &p, "/", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "green"));
}
