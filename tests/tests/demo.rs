//! `duotone demo` runs on embedded defaults: the proxy reaches the blue demo
//! upstream, a flip reaches green, and static files and the admin API answer.

use e2e::client::{admin, Http};
use e2e::proxy::duotone_bin;
use std::process::{Command, Stdio};
use std::time::Duration;

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn demo_serves_blue_then_green_and_static_files() {
    let listen = format!("127.0.0.1:{}", e2e::free_port());
    let admin_addr = format!("127.0.0.1:{}", e2e::free_port());
    let _child = Child(
        Command::new(duotone_bin())
            .args(["demo", "--listen", &listen, "--admin-listen", &admin_addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start demo"),
    );
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
            admin("POST", &a, None, Some(r#"{"to":"green"}"#))
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
    let metrics = admin("GET", &format!("http://{admin_addr}/metrics"), None, None)
        .await
        .unwrap();
    assert!(metrics
        .text()
        .contains("duotone_live_color{service=\"app\",color=\"green\"} 1"));
}
