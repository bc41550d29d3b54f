//! `duotone healthcheck` against a real running proxy (no Docker needed):
//! it finds the admin API from the config, falls back to the http listener
//! with `admin = "off"` and to the https listener without either, and fails
//! once nothing answers.

use e2e::proxy::{run_cli, Proxy};

const TOKEN: &str = "healthcheck-test-token-0123456789";

/// The running proxy: admin API, plain HTTP and an https listener with a
/// self-signed site.
fn running(token: &str) -> String {
    format!(
        r#"
[server]
http = "{{http}}"
https = "{{https}}"
admin = "{{admin}}"
admin_token = "{token}"
state_dir = "{{state}}"

[[sites]]
hosts = ["app.test"]
tls = "self-signed"
  [[sites.routes]]
  path = "/"
  static = {{ root = "{{dir}}" }}
"#
    )
}

/// Runs `duotone healthcheck -c FILE` on a config holding only `server`.
fn healthcheck(p: &Proxy, name: &str, server: &str) -> (i32, String, String) {
    let file = p.dir.path().join(name);
    std::fs::write(&file, format!("[server]\n{server}\n")).expect("write config");
    run_cli(
        &[
            "healthcheck",
            "-c",
            file.to_str().expect("utf-8 path"),
            "--timeout",
            "2s",
        ],
        &[],
    )
}

#[tokio::test]
async fn healthcheck_follows_the_config_to_a_listener_that_answers() {
    let mut p = Proxy::start(&running(TOKEN)).await;
    let ports = p.ports.clone();
    // Admin API from the config; the token is not needed (nor set: an
    // unset variable gets a stand-in).
    let cases = [
        (
            "admin.toml",
            format!(
                "admin = \"{}\"\nadmin_token = \"${{UNSET_IN_THIS_TEST}}\"",
                ports.admin
            ),
            "admin API",
        ),
        (
            "http.toml",
            format!("admin = \"off\"\nhttp = \"{}\"", ports.http),
            "http listener",
        ),
        (
            "https.toml",
            format!("admin = \"off\"\nhttps = \"{}\"", ports.https),
            "https listener",
        ),
    ];
    for (name, server, what) in &cases {
        let (code, out, err) = healthcheck(&p, name, server);
        assert_eq!(code, 0, "{name}: {err}{out}");
        assert!(out.contains(what), "{name}: {out}");
    }
    // The running proxy's own config works too.
    let (code, out, err) = run_cli(
        &["healthcheck", "-c", p.config.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("http://{}/healthz", ports.admin)),
        "{out}"
    );

    // A wrong admin address (the http listener, which answers /healthz with
    // something else than the admin API's 200) is not healthy.
    let (code, _, err) = healthcheck(&p, "wrong.toml", &format!("admin = \"{}\"", ports.http));
    assert_eq!(code, 1, "{err}");

    p.kill();
    for (name, server, _) in &cases {
        let (code, out, err) = healthcheck(&p, name, server);
        assert_eq!(code, 1, "{name} after the proxy stopped: {out}");
        assert!(err.contains("connect to"), "{name}: {err}");
    }
    let (code, _, err) = healthcheck(&p, "none.toml", "admin = \"off\"");
    assert_eq!(code, 1);
    assert!(err.contains("no admin, http or https listener"), "{err}");
}
