//! Log output: plain text (no ANSI colour codes) unless stderr is a
//! terminal, and never with a non-empty `NO_COLOR`. The terminal cases run
//! the binary with stderr on a real pseudo-terminal.

use e2e::proxy::{duotone_bin, Proxy};
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CONFIG: &str = r#"
[server]
http = "{http}"
admin = "{admin}"
state_dir = "{state}"
admin_token = "logs-test-token-0123456789"
"#;

const ESC: &str = "\x1b[";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_to_a_file_have_no_colour_codes() {
    // `Proxy` sends the child's stdout and stderr to a file.
    let p = Proxy::start(CONFIG).await;
    let log = e2e::eventually(Duration::from_secs(10), || async {
        let log = p.log();
        log.contains("duotone running").then_some(log)
    })
    .await
    .unwrap_or_else(|| panic!("no start-up line in the log:\n{}", p.log()));
    assert!(!log.contains(ESC), "colour codes in a log file:\n{log:?}");
}

/// Starts `duotone run` with stderr on a new pseudo-terminal and `NO_COLOR`
/// as given; returns what it wrote there once it logged that it runs.
async fn stderr_on_a_terminal(no_color: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let ports = e2e::proxy::Ports {
        http: ([127, 0, 0, 1], e2e::free_port()).into(),
        https: ([127, 0, 0, 1], e2e::free_port()).into(),
        admin: ([127, 0, 0, 1], e2e::free_port()).into(),
    };
    let config = dir.path().join("duotone.toml");
    std::fs::write(&config, Proxy::render(CONFIG, &ports, dir.path())).unwrap();

    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two new descriptors into the given ints; the
    // name, termios and window size pointers may be null.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are new and owned by nothing else.
    #[allow(unsafe_code)]
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };

    let mut cmd = Command::new(duotone_bin());
    cmd.arg("run")
        .arg("-c")
        .arg(&config)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::from(slave));
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let mut child = cmd.spawn().expect("spawn duotone");
    drop(cmd); // closes our copy of the slave: reads end when the child exits

    let seen = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let seen = seen.clone();
        let mut master = std::fs::File::from(master);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    let started = e2e::eventually(Duration::from_secs(20), || async {
        let t = text();
        t.contains("duotone running").then_some(t)
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    started.unwrap_or_else(|| panic!("no start-up line on the terminal:\n{:?}", text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_gets_colour_unless_no_color_is_set() {
    let coloured = stderr_on_a_terminal(None).await;
    assert!(
        coloured.contains(ESC),
        "no colour on a terminal:\n{coloured:?}"
    );
    // An empty NO_COLOR does not count (no-color.org).
    let empty = stderr_on_a_terminal(Some("")).await;
    assert!(empty.contains(ESC), "{empty:?}");
    let plain = stderr_on_a_terminal(Some("1")).await;
    assert!(
        !plain.contains(ESC),
        "colour despite NO_COLOR=1:\n{plain:?}"
    );
}
