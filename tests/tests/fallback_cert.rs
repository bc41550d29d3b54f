//! Self-signed certificates (a `tls = "self-signed"` site, and the fallback
//! an ACME site serves before its first certificate) are kept under
//! `state_dir/self-signed` (0600) and served again after a restart.

use e2e::proxy::Proxy;
use e2e::upstream::Upstream;
use std::os::unix::fs::PermissionsExt;

async fn leaf(p: &Proxy, host: &str) -> Vec<u8> {
    let (leaf, r) = e2e::tls::get_any_cert(p.ports.https, host, "/")
        .await
        .unwrap_or_else(|e| panic!("https {host}: {e:#}; log:\n{}", p.log()));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!leaf.is_empty());
    leaf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_serves_the_same_self_signed_certificates() {
    let app = Upstream::start("app").await;
    // Nothing listens there: the ACME site keeps its fallback.
    let no_ca = format!("https://127.0.0.1:{}/dir", e2e::free_port());
    let mut p = Proxy::start(&format!(
        r#"
[server]
http = "{{http}}"
https = "{{https}}"
admin = "{{admin}}"
state_dir = "{{state}}"
admin_token = "fallback-test-token-0123456789"

[acme]
directory = "{no_ca}"

[[sites]]
hosts = ["self.test"]
tls = "self-signed"
  [[sites.routes]]
  path = "/"
  service = "app"

[[sites]]
hosts = ["acme.test"]
tls = "acme"
  [[sites.routes]]
  path = "/"
  service = "app"

[services.app]
colors.blue = ["{app}"]
"#,
        app = app.member()
    ))
    .await;

    let before = (leaf(&p, "self.test").await, leaf(&p, "acme.test").await);
    assert_ne!(before.0, before.1);

    let kept = p.state_dir().join("self-signed");
    let files: Vec<_> = std::fs::read_dir(&kept)
        .unwrap_or_else(|e| panic!("{}: {e}", kept.display()))
        .map(|e| e.unwrap().path())
        .collect();
    // One per site, and the default for unknown names.
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }

    p.kill();
    p.spawn().await;
    let after = (leaf(&p, "self.test").await, leaf(&p, "acme.test").await);
    assert!(
        before == after,
        "a restart served other certificates; log:\n{}",
        p.log()
    );
}
