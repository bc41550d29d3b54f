//! In-place upgrade (`duotone upgrade`): a second process takes the
//! listening sockets (plain HTTP, HTTPS, the admin API) over from the
//! running one under continuous load, the old one drains and exits; no
//! connection is refused and no request fails. A new process that cannot
//! start leaves the old one serving.

use e2e::client::admin;
use e2e::handover::{Client, Load};
use e2e::proxy::{duotone_bin, Proxy};
use e2e::upstream::Upstream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "upgrade-test-token";

/// HTTP for `plain.test`, HTTPS (self-signed) for `localhost`, the admin API,
/// both sites proxied to the service `api` (blue and green).
fn config(blue: &Upstream, green: &Upstream, extra_route: &str) -> String {
    format!(
        r#"
[server]
http = "{{http}}"
https = "{{https}}"
admin = "{{admin}}"
state_dir = "{{state}}"
admin_token = "{TOKEN}"
grace_period = "10s"

[[sites]]
hosts = ["plain.test"]
  [[sites.routes]]
  path = "/"
  service = "api"
{extra_route}
[[sites]]
hosts = ["localhost"]
tls = "self-signed"
  [[sites.routes]]
  path = "/"
  service = "api"

[services.api]
live = "blue"
colors.blue = ["{}"]
colors.green = ["{}"]
"#,
        blue.member(),
        green.member()
    )
}

/// Runs `duotone upgrade -c CONFIG --log LOG` to completion: (exit code,
/// stdout + stderr).
async fn upgrade(p: &Proxy) -> (i32, String) {
    let config = p.config.clone();
    let log = p.dir.path().join("duotone.log");
    tokio::task::spawn_blocking(move || {
        let out = Command::new(duotone_bin())
            .arg("upgrade")
            .arg("-c")
            .arg(&config)
            .arg("--log")
            .arg(&log)
            .env_remove("RUST_LOG")
            .output()
            .expect("run duotone upgrade");
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
    .await
    .expect("upgrade task")
}

/// The pid in the state directory's pid file.
fn pid_file(state: &Path) -> Option<i32> {
    std::fs::read_to_string(state.join("duotone.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` runs (and is not a zombie).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(str::to_string))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

/// Stops a process the test did not start itself (the new one, a child of
/// the upgrade command): SIGTERM, then SIGKILL if it lingers.
struct Stray(i32);

impl Drop for Stray {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on the pid of the process this test made.
        unsafe {
            libc::kill(self.0, libc::SIGTERM);
        }
        let start = Instant::now();
        while alive(self.0) && start.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(self.0) {
            #[allow(unsafe_code)]
            // SAFETY: as above.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_hands_every_listener_over_under_load_without_a_failure() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let mut p = Proxy::start(&config(&blue, &green, "")).await;
    let old = p.pid();
    assert_eq!(pid_file(&p.state_dir()), Some(old), "the pid file names it");

    // State the new process must find: green live (persisted in state_dir).
    let flip = admin(
        "POST",
        &p.admin_url("/v1/services/api/flip"),
        Some(TOKEN),
        Some(r#"{"to":"green","force":true}"#),
    )
    .await
    .expect("flip");
    assert_eq!(flip.status, 200, "{}", flip.text());

    let plain = |keep_alive, path: &str| Client {
        addr: p.ports.http,
        tls: false,
        host: "plain.test".into(),
        path: path.into(),
        keep_alive,
    };
    let tls = |keep_alive| Client {
        addr: p.ports.https,
        tls: true,
        host: "localhost".into(),
        path: "/".into(),
        keep_alive,
    };
    // 0-3 plain keep-alive, 4-5 TLS keep-alive, 6-7 plain new connections,
    // 8 TLS new connections, 9-10 slow keep-alive (in flight at the hand-over).
    let clients = vec![
        plain(true, "/"),
        plain(true, "/"),
        plain(true, "/"),
        plain(true, "/"),
        tls(true),
        tls(true),
        plain(false, "/"),
        plain(false, "/"),
        tls(false),
        plain(true, "/slow?ms=700"),
        plain(true, "/slow?ms=700"),
    ];
    let fast = |c: usize| c < 9;
    let load = Load::new();
    let loaded = Instant::now();
    let running = load.spawn(&clients, "green");
    e2e::eventually(Duration::from_secs(20), || async {
        (load.ok() >= 300).then_some(())
    })
    .await
    .expect("the load runs");

    let began = Instant::now();
    let (code, out) = upgrade(&p).await;
    let ended = Instant::now();
    let new = pid_file(&p.state_dir()).unwrap_or(0);
    let _stray = (new != 0 && new != old).then(|| Stray(new));
    assert_eq!(code, 0, "duotone upgrade failed:\n{out}\nlog:\n{}", p.log());
    assert_ne!(new, old, "the pid file names the new process");
    assert!(alive(new), "the new process runs");
    // The old process drained and exited by itself, with status 0.
    assert_eq!(
        p.wait_exit(Duration::from_secs(5)).await,
        Some(0),
        "log:\n{}",
        p.log()
    );

    // The load goes on against the new process alone.
    load.serve_then_stop(running, 300, "the new process serves the load")
        .await;

    let failed = load.failed.load(std::sync::atomic::Ordering::SeqCst);
    let refused = load.refused.load(std::sync::atomic::Ordering::SeqCst);
    let closed = load
        .closed_under_request
        .load(std::sync::atomic::Ordering::SeqCst);
    let told = load.told_to_close.load(std::sync::atomic::Ordering::SeqCst);
    let stall = load.longest(began, ended, fast);
    let slow = load.longest(began, ended, |c| !fast(c));
    let before = load.longest(loaded, began, fast);
    eprintln!(
        "upgrade under load: {} requests ok, {failed} failed, {refused} refused, \
         {closed} keep-alive connections closed under a request, {told} told to close \
         (then reconnected); hand-over took {:.1} s; longest fast request during it {:.1} ms \
         (slow /slow?ms=700 ones: {:.1} ms; longest fast one before the upgrade: {:.1} ms); \
         {} requests served after the old process exited",
        load.ok(),
        (ended - began).as_secs_f64(),
        stall.as_secs_f64() * 1e3,
        slow.as_secs_f64() * 1e3,
        before.as_secs_f64() * 1e3,
        load.ok_after(ended),
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    eprintln!(
        "longest during the hand-over by kind: plain keep-alive {:.1} ms, TLS keep-alive {:.1} ms, \
         plain new connections {:.1} ms, TLS new connections {:.1} ms",
        ms(load.longest(began, ended, |c| c < 4)),
        ms(load.longest(began, ended, |c| (4..6).contains(&c))),
        ms(load.longest(began, ended, |c| (6..8).contains(&c))),
        ms(load.longest(began, ended, |c| c == 8)),
    );
    eprintln!("duotone upgrade said:\n{out}");
    let errors = load.errors.lock().map(|e| e.clone()).unwrap_or_default();
    assert_eq!(failed, 0, "failed requests: {errors:#?}\nlog:\n{}", p.log());
    assert_eq!(refused, 0, "refused connections: {errors:#?}");
    assert!(told > 0, "keep-alive clients were told to reconnect");

    // The new process has the admin listener too, with the same state.
    assert!(
        e2e::proxy::wait_healthy(p.ports.admin, Duration::from_secs(5)).await,
        "admin /healthz"
    );
    let svc = admin("GET", &p.admin_url("/v1/services/api"), Some(TOKEN), None)
        .await
        .expect("admin API of the new process");
    assert_eq!(svc.status, 200, "{}", svc.text());
    assert_eq!(svc.json()["live"], "green", "{}", svc.text());
    assert!(
        !Path::new(&p.state_dir().join("upgrade.sock")).exists(),
        "the hand-over socket is cleaned up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_leaves_the_old_process_serving() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let good = config(&blue, &green, "");
    let mut p = Proxy::start(&good).await;
    let old = p.pid();
    let serves = |p: &Proxy| {
        let url = p.url("/");
        async move {
            e2e::client::Http::new()
                .get_with(&url, &[("host", "plain.test")])
                .await
                .map(|r| (r.status, r.text()))
                .ok()
        }
    };

    // A config the new binary's `check` refuses: nothing is started.
    std::fs::write(&p.config, "[server\nhttp = ").expect("write bad config");
    let (code, out) = upgrade(&p).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("refused the config"), "{out}");
    assert!(out.contains("nothing was changed"), "{out}");

    // A config that passes `check` (a missing static root is only a warning
    // there) but that `run` refuses: the new process exits before it asks
    // for the listeners, and the old one never hears of it.
    p.rewrite(&config(
        &blue,
        &green,
        "  [[sites.routes]]\n  path = \"/static/\"\n  static = { root = \"/nonexistent/duotone-upgrade-test\" }\n",
    ));
    let (code, out) = upgrade(&p).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("exited"), "{out}");
    assert!(out.contains(&format!("pid {old} keeps serving")), "{out}");
    assert!(
        p.log().contains("/nonexistent/duotone-upgrade-test"),
        "{}",
        p.log()
    );

    assert!(alive(old), "the old process runs");
    assert_eq!(pid_file(&p.state_dir()), Some(old));
    assert_eq!(serves(&p).await, Some((200, "blue".to_string())));
    assert!(e2e::proxy::wait_healthy(p.ports.admin, Duration::from_secs(2)).await);

    // With the config fixed, the upgrade goes through.
    p.rewrite(&good);
    let (code, out) = upgrade(&p).await;
    let new = pid_file(&p.state_dir()).unwrap_or(0);
    let _stray = (new != 0 && new != old).then(|| Stray(new));
    assert_eq!(code, 0, "{out}\nlog:\n{}", p.log());
    assert_eq!(p.wait_exit(Duration::from_secs(5)).await, Some(0));
    assert_eq!(serves(&p).await, Some((200, "blue".to_string())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_makes_the_process_start_its_successor_and_hand_over() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let mut p = Proxy::start(&config(&blue, &green, "")).await;
    let old = p.pid();
    let load = Load::new();
    let client = |keep_alive| Client {
        addr: p.ports.http,
        tls: false,
        host: "plain.test".into(),
        path: "/".into(),
        keep_alive,
    };
    let running = load.spawn(&[client(true), client(true), client(false)], "blue");
    e2e::eventually(Duration::from_secs(20), || async {
        (load.ok() >= 100).then_some(())
    })
    .await
    .expect("the load runs");

    p.signal(libc::SIGUSR2);
    let state = p.state_dir();
    let new = e2e::eventually(Duration::from_secs(30), || async {
        pid_file(&state).filter(|pid| *pid != old)
    })
    .await;
    let _stray = new.map(Stray);
    let new = new.unwrap_or_else(|| panic!("no new process took over; log:\n{}", p.log()));
    // The old process drains and exits by itself; its successor serves on.
    assert_eq!(
        p.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "log:\n{}",
        p.log()
    );
    assert!(alive(new));
    load.serve_then_stop(running, 100, "the new process serves the load")
        .await;
    let (failed, errors) = load.failures();
    assert_eq!(failed, 0, "failed requests: {errors:#?}");
    assert!(e2e::proxy::wait_healthy(p.ports.admin, Duration::from_secs(5)).await);
}

/// The host pid of the first child of `pid` (PID 1 of the namespace that
/// `unshare --fork` made).
fn first_child(pid: u32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_pid_1_the_old_process_stays_as_init_after_handing_over() {
    // A container's entrypoint: PID 1 of its own PID namespace.
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output();
    if !matches!(&probe, Ok(o) if o.status.success()) {
        eprintln!("skipped: no PID namespace (`unshare --pid --fork --mount-proc` needs root)");
        return;
    }
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = e2e::proxy::Ports {
        http: std::net::SocketAddr::from(([127, 0, 0, 1], e2e::free_port())),
        https: std::net::SocketAddr::from(([127, 0, 0, 1], e2e::free_port())),
        admin: std::net::SocketAddr::from(([127, 0, 0, 1], e2e::free_port())),
    };
    let cfg = dir.path().join("duotone.toml");
    let text = Proxy::render(&config(&blue, &green, ""), &ports, dir.path());
    std::fs::write(&cfg, text).expect("config");
    let log_path = dir.path().join("duotone.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(duotone_bin())
        .arg("run")
        .arg("-c")
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("unshare");
    struct Reap<'a>(&'a mut std::process::Child);
    impl Drop for Reap<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let outer = unshare.id();
    let guard = Reap(&mut unshare);
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        e2e::proxy::wait_healthy(ports.admin, Duration::from_secs(20)).await,
        "log:\n{}",
        read_log()
    );
    // The proxy's listeners come up after the admin API's.
    let http = ports.http;
    e2e::eventually(Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(http).await.ok().map(|_| ())
    })
    .await
    .expect("the http listener is up");
    let pid1 = first_child(outer).expect("PID 1's host pid");

    let load = Load::new();
    let client = |keep_alive| Client {
        addr: ports.http,
        tls: false,
        host: "plain.test".into(),
        path: "/".into(),
        keep_alive,
    };
    let running = load.spawn(&[client(true), client(true), client(false)], "blue");
    e2e::eventually(Duration::from_secs(20), || async {
        (load.ok() >= 100).then_some(())
    })
    .await
    .expect("the load runs");

    // `docker exec edge duotone upgrade`: the command runs in the namespace
    // and replaces PID 1, which drains and stays as init.
    let cfg_arg = cfg.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("nsenter")
            .arg("--target")
            .arg(pid1.to_string())
            .args(["--pid", "--mount"])
            .arg(duotone_bin())
            .arg("upgrade")
            .arg("-c")
            .arg(&cfg_arg)
            .arg("--log")
            .arg(cfg_arg.with_file_name("successor.log"))
            .env_remove("RUST_LOG")
            .output()
            .expect("nsenter duotone upgrade")
    })
    .await
    .expect("upgrade task");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}\nlog:\n{}", read_log());
    assert!(said.contains("stays as PID 1"), "{said}");
    assert!(read_log().contains("staying as PID 1"), "{}", read_log());
    assert!(alive(pid1), "PID 1 stays (the container lives on)");

    // `docker kill -s USR2 edge`: PID 1 forwards it to the serving process,
    // which starts a third one and hands over; PID 1 follows the pid file.
    let second = std::fs::read_to_string(dir.path().join("state/duotone.pid")).unwrap_or_default();
    // SAFETY: kill(2) on the PID 1 this test started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid1, libc::SIGUSR2);
    }
    let state = dir.path().join("state");
    e2e::eventually(Duration::from_secs(30), || async {
        let now = std::fs::read_to_string(state.join("duotone.pid")).ok()?;
        (now != second).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("no third process; log:\n{}", read_log()));
    assert!(alive(pid1), "PID 1 stays (the container lives on)");
    load.serve_then_stop(running, 100, "the new process serves")
        .await;
    let (failed, errors) = load.failures();
    assert_eq!(failed, 0, "failed requests: {errors:#?}");

    // `docker stop`: SIGTERM to PID 1 goes on to the serving process, which
    // drains and exits; then PID 1 exits with its status.
    // SAFETY: as above.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid1, libc::SIGTERM);
    }
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(s)) = guard.0.try_wait() {
            break Some(s);
        }
        if start.elapsed() > Duration::from_secs(30) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let status = status.unwrap_or_else(|| panic!("PID 1 did not exit; log:\n{}", read_log()));
    assert!(status.success(), "{status}; log:\n{}", read_log());
    assert!(read_log().contains("PID 1: forwarding a signal"));
    assert!(tokio::net::TcpStream::connect(ports.http).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_can_move_a_listener_that_a_reload_cannot() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let mut p = Proxy::start(&config(&blue, &green, "")).await;
    let old_http = p.ports.http;
    // The new config moves the plain listener to another port.
    let moved = std::net::SocketAddr::from(([127, 0, 0, 1], e2e::free_port()));
    let text = Proxy::render(&config(&blue, &green, ""), &p.ports, p.dir.path())
        .replace(&old_http.to_string(), &moved.to_string());
    std::fs::write(&p.config, text).expect("config");
    let (code, out) = upgrade(&p).await;
    let new = pid_file(&p.state_dir()).unwrap_or(0);
    let _stray = (new != 0 && new != p.pid()).then(|| Stray(new));
    assert_eq!(code, 0, "{out}\nlog:\n{}", p.log());
    assert_eq!(p.wait_exit(Duration::from_secs(5)).await, Some(0));
    let r = e2e::client::Http::new()
        .get_with(&format!("http://{moved}/"), &[("host", "plain.test")])
        .await
        .expect("the new address serves");
    assert_eq!((r.status, r.text()), (200, "blue".to_string()));
    assert!(
        tokio::net::TcpStream::connect(old_http).await.is_err(),
        "the old address is closed (the new process does not keep the unclaimed socket)"
    );
    // The unchanged listeners were taken over.
    assert!(e2e::proxy::wait_healthy(p.ports.admin, Duration::from_secs(5)).await);
}
