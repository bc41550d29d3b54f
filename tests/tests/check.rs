//! `duotone check` where the config is written, not where it runs: a static
//! root missing on this machine is a warning (exit 0), while `duotone run`
//! still refuses to start without it, and a root that is a file stays an
//! error.

use e2e::proxy::{duotone_bin, run_cli};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn config(static_root: &str, media_root: &str) -> String {
    format!(
        r#"[server]
http = "127.0.0.1:{http}"
admin = "127.0.0.1:{admin}"
state_dir = "state"

[[sites]]
hosts = ["*"]
  [[sites.routes]]
  path = "/static/"
  static = {{ root = "{static_root}" }}
  [[sites.routes]]
  path = "/media/"
  static = {{ root = "{media_root}" }}
"#,
        http = e2e::free_port(),
        admin = e2e::free_port(),
    )
}

/// Runs `duotone run -c FILE`, which must exit by itself within 20 s.
fn run_exits(file: &str) -> (i32, String) {
    let mut child = Command::new(duotone_bin())
        .args(["run", "-c", file])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn duotone run");
    let start = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code().unwrap_or(-1);
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`duotone run` started without its static root");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    (code, err)
}

#[test]
fn a_missing_static_root_is_a_warning_for_check_and_an_error_for_run() {
    let dir = tempfile::tempdir().unwrap();
    let media = dir.path().join("media");
    std::fs::create_dir(&media).unwrap();
    let missing = dir.path().join("collectstatic-not-run-here");
    let file = dir.path().join("duotone.toml");
    let path = file.to_str().unwrap();
    std::fs::write(
        &file,
        config(&missing.display().to_string(), &media.display().to_string()),
    )
    .unwrap();

    let (code, out, err) = run_cli(&["check", "-c", path], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains(&format!(
            "warning: {path}:10: sites[0].routes[0].static.root: {} does not exist here",
            missing.display()
        )),
        "{err}"
    );
    assert!(
        out.contains(&format!("{path}: ok (1 sites, 0 services, 1 warning)")),
        "{out}"
    );

    let (code, err) = run_exits(path);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("sites[0].routes[0].static.root")
            && err.contains(&missing.display().to_string()),
        "{err}"
    );

    // Once it exists, no warning.
    std::fs::create_dir(&missing).unwrap();
    let (code, out, err) = run_cli(&["check", "-c", path], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("warning"), "{err}");
    assert!(out.contains(": ok (1 sites, 0 services)"), "{out}");
}

#[test]
fn a_static_root_that_is_a_file_is_still_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let media = dir.path().join("media");
    std::fs::write(&media, "not a directory").unwrap();
    let file = dir.path().join("duotone.toml");
    let path = file.to_str().unwrap();
    let static_root = dir.path().display().to_string();
    std::fs::write(&file, config(&static_root, &media.display().to_string())).unwrap();
    let (code, out, err) = run_cli(&["check", "-c", path], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!(
            "{path}:13: sites[0].routes[1].static.root: {} is not a directory",
            media.display()
        )),
        "{err}"
    );
}

#[test]
fn unknown_host_buffering_and_member_protocols_are_checked_with_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("duotone.toml");
    let path = file.to_str().unwrap();
    let good = format!(
        r#"[server]
http = "127.0.0.1:{http}"
admin = "127.0.0.1:{admin}"
state_dir = "state"
unknown_host = "close"

[buffering]
memory = "128KiB"
total_memory = "64MiB"
max_file = "2GiB"

[[sites]]
hosts = ["app.test"]
  [[sites.routes]]
  path = "/"
  service = "app"
  buffer_requests = false

[services.app]
live = "blue"
colors.blue = ["uwsgi://127.0.0.1:3031"]
colors.green = ["uwsgi+unix:/run/app-green.sock"]
"#,
        http = e2e::free_port(),
        admin = e2e::free_port(),
    );
    std::fs::write(&file, &good).unwrap();
    let (code, out, err) = run_cli(&["check", "-c", path], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": ok (1 sites, 1 services)"), "{out}{err}");

    let bad = good
        .replace("\"close\"", "444")
        .replace("\"64MiB\"", "\"64KiB\"")
        .replace("\"uwsgi+unix:/run/app-green.sock\"", "\"127.0.0.1:8002\"");
    std::fs::write(&file, bad).unwrap();
    let (code, out, err) = run_cli(&["check", "-c", path], &[]);
    assert_eq!(code, 1, "{out}{err}");
    for want in [
        format!("{path}:5: server.unknown_host: 444: use 404, 421 or \"close\""),
        format!("{path}:9: buffering.total_memory: memory (131072 bytes"),
        format!(
            "{path}:22: services.app.colors.green[0]: \"127.0.0.1:8002\" speaks http but \
             services.app.colors.blue[0] speaks uwsgi"
        ),
    ] {
        assert!(err.contains(&want), "missing {want:?} in {err}");
    }
}
