//! `duotone demo` runs on embedded defaults: the proxy reaches the blue demo
//! upstream, a flip reaches green, and static files and the admin API answer.

use e2e::client::{admin, Http};
use e2e::proxy::duotone_bin;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the demo; returns it and the admin token it printed.
fn start_demo(listen: &str, admin_addr: &str, env_token: Option<&str>) -> (Child, String) {
    let mut cmd = Command::new(duotone_bin());
    cmd.args(["demo", "--listen", listen, "--admin-listen", admin_addr])
        .env_remove("DUOTONE_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(t) = env_token {
        cmd.env("DUOTONE_ADMIN_TOKEN", t);
    }
    let mut child = Child(cmd.spawn().expect("start demo"));
    let stdout = child.0.stdout.take().expect("demo stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut printed = String::new();
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        for line in lines.by_ref() {
            printed.push_str(&line);
            printed.push('\n');
            if line.contains("Ctrl-C stops") {
                break;
            }
        }
        let _ = tx.send(printed);
        // Keep reading (the access log goes to stdout) until the demo ends.
        lines.for_each(drop);
    });
    let printed = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("demo printed its help");
    let token = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("export DUOTONE_ADMIN_TOKEN="))
        .map(|t| t.trim_matches('\'').to_string())
        .unwrap_or_else(|| panic!("no token in the demo's output:\n{printed}"));
    // The curl examples carry the token.
    assert!(
        printed.contains(&format!("-H 'Authorization: Bearer {token}'")),
        "{printed}"
    );
    (child, token)
}

#[tokio::test]
async fn demo_serves_blue_then_green_and_static_files() {
    let listen = format!("127.0.0.1:{}", e2e::free_port());
    let admin_addr = format!("127.0.0.1:{}", e2e::free_port());
    let (_child, token) = start_demo(&listen, &admin_addr, None);
    // A random token for this run, required by the admin API.
    assert_eq!(token.len(), 32, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    let token = token.as_str();
    let http = Http::new();
    let url = format!("http://{listen}/");
    let first = e2e::eventually(Duration::from_secs(20), || {
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(&url).await.ok().filter(|r| r.status == 200) }
    })
    .await
    .expect("demo answers");
    assert!(
        first.text().starts_with("Hello from blue!"),
        "{}",
        first.text()
    );
    // The green upstream passes its health check, then the flip goes through.
    let flipped = e2e::eventually(Duration::from_secs(10), || {
        let a = format!("http://{admin_addr}/v1/services/app/flip");
        async move {
            admin("POST", &a, Some(token), Some(r#"{"to":"green"}"#))
                .await
                .ok()
                .filter(|r| r.status == 200)
        }
    })
    .await
    .expect("flip to green");
    assert_eq!(flipped.json()["live"], "green");
    assert!(http
        .get(&url)
        .await
        .unwrap()
        .text()
        .starts_with("Hello from green!"));
    let css = http
        .get(&format!("http://{listen}/static/app.3f2a9c81b7d4.css"))
        .await
        .unwrap();
    assert_eq!(css.status, 200);
    assert_eq!(
        css.header("cache-control"),
        "public, max-age=31536000, immutable"
    );
    let index = http.get(&format!("http://{listen}/static/")).await.unwrap();
    assert!(
        index.text().contains("Served by duotone"),
        "{}",
        index.text()
    );
    let metrics = admin(
        "GET",
        &format!("http://{admin_addr}/metrics"),
        Some(token),
        None,
    )
    .await
    .unwrap();
    assert!(metrics
        .text()
        .contains("duotone_live_color{service=\"app\",color=\"green\"} 1"));
}

#[tokio::test]
async fn demo_admin_api_needs_its_token() {
    let listen = format!("127.0.0.1:{}", e2e::free_port());
    let admin_addr = format!("127.0.0.1:{}", e2e::free_port());
    let mine = "demo-token-from-the-environment";
    let (_child, token) = start_demo(&listen, &admin_addr, Some(mine));
    assert_eq!(token, mine);
    let url = format!("http://{admin_addr}/v1/services");
    let ok = e2e::eventually(Duration::from_secs(20), || {
        let url = url.clone();
        async move {
            admin("GET", &url, Some(mine), None)
                .await
                .ok()
                .filter(|r| r.status == 200)
        }
    })
    .await;
    assert!(ok.is_some(), "the demo's admin API did not answer");
    for token in [None, Some("demo-token-not-the-right-one")] {
        let r = admin("GET", &url, token, None).await.unwrap();
        assert_eq!(r.status, 401, "{token:?}: {}", r.text());
    }
}
