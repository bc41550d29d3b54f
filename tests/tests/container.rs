//! The runtime image and the compose setup, end to end (issue #22), with a
//! real Docker engine: the image made by `deploy/image.sh` (a debootstrapped
//! base, the binary built on this host), and `deploy/docker-compose.yml` as
//! shipped, with the test app (tests/apps/container) as both colors.
//!
//! Skipped, with one line saying so, when `docker info` fails, unless
//! `DUOTONE_REQUIRE_DOCKER=1`. The base image is made once and kept by tag
//! (`duotone-base:bookworm`); later runs only rebuild the small top layers.
//!
//! Run: `cargo build -p duotone && cargo test -p duotone-e2e --test container`.

use e2e::client::{admin, Http};
use e2e::docker::{
    docker, engine_or_skip, image_sh, inspect, ok, published, repo, run, shared_dir, text, unique,
    write_readable, Container, Engine,
};
use e2e::eventually;
use e2e::proxy::duotone_bin;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "container-test-token-0123456789abcdef";
const HOST: &str = "app.test";
const IMAGE: &str = "duotone-e2e:test";
const APP_IMAGE: &str = "duotone-e2e-app";
const APP_TAG: &str = "test";

/// Builds the runtime image from the host's binary and the test app image,
/// once per test process (the base image is cached by tag across runs).
fn images() {
    static BUILT: OnceLock<()> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let _serial = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    BUILT.get_or_init(|| {
        let bin = duotone_bin();
        let t = Instant::now();
        image_sh(&["build", bin.to_str().expect("utf-8 path"), IMAGE]);
        image_sh(&["app", &format!("{APP_IMAGE}:{APP_TAG}")]);
        eprintln!("images built in {:.1}s", t.elapsed().as_secs_f64());
    });
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn image_checks_binds_80_with_its_capability_and_reports_health() {
    if engine_or_skip("image_checks_binds_80_with_its_capability_and_reports_health").is_none() {
        return;
    }
    images();

    // `duotone check` passes on the image's own config without any env:
    // the unset token is a warning there.
    let out = run(&mut docker(&["run", "--rm", IMAGE, "check"]));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "check failed:\n{stdout}{stderr}");
    assert!(
        stdout.contains("/etc/duotone/duotone.toml: ok ("),
        "{stdout}"
    );
    assert!(
        stderr.contains("DUOTONE_ADMIN_TOKEN is not set here"),
        "{stderr}"
    );
    assert_eq!(inspect(IMAGE, "{{.Config.User}}"), "10001:10001");

    // A config with the admin API off: the health check must use the http
    // listener. Port 80 inside the container, as the non-root user, with
    // Docker's unprivileged-port sysctl turned back to 1024: only the file
    // capability lets it bind.
    let dir = shared_dir();
    let config = dir.path().join("duotone.toml");
    write_readable(
        &config,
        r#"
[server]
http = "0.0.0.0:80"
admin = "off"
state_dir = "/var/lib/duotone"

[[sites]]
hosts = ["*"]
tls = "off"

  [[sites.routes]]
  path = "/"
  static = { root = "/srv/static" }
"#,
    );
    let static_dir = dir.path().join("static");
    std::fs::create_dir(&static_dir).expect("mkdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&static_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    write_readable(&static_dir.join("hello.txt"), "hello from the image\n");
    let name = unique("img");
    let mount_config = format!("{}:/etc/duotone/duotone.toml:ro", config.display());
    let mount_static = format!("{}:/srv/static:ro", static_dir.display());
    let common = [
        "--cap-drop",
        "ALL",
        "--sysctl",
        "net.ipv4.ip_unprivileged_port_start=1024",
        "-v",
        mount_config.as_str(),
        "-v",
        mount_static.as_str(),
    ];

    // Without CAP_NET_BIND_SERVICE in the bounding set the binary, which
    // carries the capability, cannot even be executed.
    let mut no_cap = docker(&["run", "--rm"]);
    no_cap.args(common).arg(IMAGE);
    let out = run(&mut no_cap);
    assert!(!out.status.success(), "ran without NET_BIND_SERVICE?");
    assert!(
        text(&out.stderr).contains("operation not permitted"),
        "{}",
        text(&out.stderr)
    );

    let started = Instant::now();
    let _guard = Container(name.clone());
    let mut cmd = docker(&["run", "-d", "--name", &name]);
    cmd.args(common).args([
        "--cap-add",
        "NET_BIND_SERVICE",
        "--health-interval",
        "1s",
        "--health-start-period",
        "30s",
        "-p",
        "127.0.0.1::80",
        IMAGE,
    ]);
    ok(&mut cmd);
    let addr = published(&name, 80).expect("port 80 published");
    let url = format!("http://{addr}/hello.txt");
    let served = eventually(Duration::from_secs(30), || {
        let url = url.clone();
        async move { Http::new().get(&url).await.ok().filter(|r| r.status == 200) }
    })
    .await;
    let first = started.elapsed();
    let Some(resp) = served else {
        panic!(
            "the image never served {url}; logs:\n{}",
            text(&run(&mut docker(&["logs", &name])).stderr)
        );
    };
    assert_eq!(resp.text(), "hello from the image\n");
    eprintln!(
        "start-up: `docker run -d` to the first served request: {:.0} ms",
        first.as_secs_f64() * 1e3
    );
    assert_eq!(inspect(&name, "{{.Config.User}}"), "10001:10001");

    // The image's HEALTHCHECK (`duotone healthcheck`) turns healthy with
    // admin = "off".
    let healthy = eventually(Duration::from_secs(30), || {
        let name = name.clone();
        async move {
            let s = inspect(&name, "{{.State.Health.Status}}");
            (s == "healthy").then_some(())
        }
    })
    .await;
    assert!(
        healthy.is_some(),
        "not healthy: {}",
        inspect(&name, "{{json .State.Health}}")
    );
    let out = ok(&mut docker(&["exec", &name, "duotone", "healthcheck"]));
    assert!(out.contains("http listener"), "{out}");
}

// ---------------------------------------------------------------------------

/// The three compose projects of deploy/docker-compose.yml (edge, blue,
/// green) with unique names, ports and volumes; everything is removed on
/// drop, also when the test fails.
struct Stack {
    engine: Engine,
    prefix: String,
    file: PathBuf,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
    http: u16,
    https: u16,
    admin: u16,
}

const VOLUMES: [&str; 4] = ["state", "sockets", "static", "media"];

impl Stack {
    fn new(engine: Engine, config: &str) -> Stack {
        let prefix = unique("c");
        let dir = shared_dir();
        let config_file = dir.path().join("duotone.toml");
        let (http, https, admin) = (e2e::free_port(), e2e::free_port(), e2e::free_port());
        write_readable(
            &config_file,
            &config.replace("{admin_port}", &admin.to_string()),
        );
        // Docker inside a container may not raise the open-file limit above
        // its own: stay at or below what this process has.
        let nofile = run(Command::new("sh").args(["-c", "ulimit -Hn"]));
        let nofile = text(&nofile.stdout)
            .trim()
            .parse::<u64>()
            .unwrap_or(65536)
            .min(65536);
        let env = vec![
            ("DUOTONE_IMAGE", IMAGE.to_string()),
            ("DUOTONE_EDGE_NAME", format!("{prefix}-edge")),
            ("DUOTONE_HTTP_PORT", http.to_string()),
            ("DUOTONE_HTTPS_PORT", https.to_string()),
            ("DUOTONE_ADMIN_PORT", admin.to_string()),
            ("DUOTONE_CONFIG_FILE", config_file.display().to_string()),
            ("DUOTONE_VOLUMES", prefix.clone()),
            ("DUOTONE_NOFILE", nofile.to_string()),
            ("DUOTONE_ADMIN_TOKEN", TOKEN.to_string()),
            ("APP_IMAGE", APP_IMAGE.to_string()),
            ("APP_TAG", APP_TAG.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let stack = Stack {
            engine,
            prefix,
            file: repo().join("deploy/docker-compose.yml"),
            env,
            _dir: dir,
            http,
            https,
            admin,
        };
        // The one-time setup of deploy/README.md.
        for v in ["state", "static", "media"] {
            ok(&mut docker(&["volume", "create", &stack.volume(v)]));
        }
        ok(&mut docker(&[
            "volume",
            "create",
            "--driver",
            "local",
            "--opt",
            "type=tmpfs",
            "--opt",
            "device=tmpfs",
            "--opt",
            "o=mode=1777",
            &stack.volume("sockets"),
        ]));
        stack
    }

    fn volume(&self, v: &str) -> String {
        format!("{}-{v}", self.prefix)
    }

    fn edge(&self) -> String {
        format!("{}-edge", self.prefix)
    }

    fn project(&self, which: &str) -> String {
        format!("{}{which}", self.prefix)
    }

    /// The compose command line as a shell string (for `duotone deploy`).
    fn compose_sh(&self, project: &str) -> String {
        format!(
            "{} -f {} -p {project}",
            self.engine.compose.join(" "),
            self.file.display()
        )
    }

    /// `compose -f FILE -p PROJECT ARGS…` with the stack's environment.
    fn compose(&self, project: &str, color: Option<&str>, args: &[&str]) -> Command {
        let mut c = Command::new(&self.engine.compose[0]);
        c.args(&self.engine.compose[1..])
            .arg("-f")
            .arg(&self.file)
            .args(["-p", project])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(color) = color {
            c.env("COLOR", color);
        }
        c
    }

    fn app_container(&self, color: &str) -> String {
        let out = ok(&mut self.compose(&self.project(color), Some(color), &["ps", "-q", "api"]));
        out.trim().to_string()
    }

    fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    fn https_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.https))
    }

    /// `duotone deploy` on the host against the published admin port; the
    /// start and stop commands run compose for the color's project.
    fn deploy(&self) -> Output {
        let color_project = self.compose_sh(&format!("{}{{color}}", self.prefix));
        let mut c = Command::new(duotone_bin());
        c.args(["deploy", "-s", "api", "--health-timeout", "120s"])
            .arg("--start")
            .arg(format!("COLOR={{color}} {color_project} up -d api"))
            .arg("--stop")
            .arg(format!("COLOR={{color}} {color_project} stop api"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("DUOTONE_ADMIN", self.admin_url(""));
        run(&mut c)
    }

    async fn live(&self) -> Option<String> {
        let r = admin(
            "GET",
            &self.admin_url("/v1/services/api"),
            Some(TOKEN),
            None,
        )
        .await
        .ok()?;
        (r.status == 200).then(|| r.json()["live"].as_str().unwrap_or("").to_string())
    }

    /// Waits until the edge answers on the published admin port and serves
    /// `color` through the published http port.
    async fn wait_serving(&self, color: &str, limit: Duration) -> bool {
        eventually(limit, || async move {
            let r = Http::new()
                .get_with(&self.http_url("/color"), &[("host", HOST)])
                .await
                .ok()?;
            (r.status == 200 && r.text() == color).then_some(())
        })
        .await
        .is_some()
    }

    fn logs(&self) -> String {
        let out = run(&mut docker(&["logs", "--tail", "60", &self.edge()]));
        format!("{}{}", text(&out.stdout), text(&out.stderr))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (p, color) in [
            ("edge", None),
            ("blue", Some("blue")),
            ("green", Some("green")),
        ] {
            let _ = self
                .compose(
                    &self.project(p),
                    color,
                    &["down", "-v", "--remove-orphans", "-t", "5"],
                )
                .output();
        }
        let _ = docker(&["rm", "-f", &self.edge()]).output();
        for v in VOLUMES {
            let _ = docker(&["volume", "rm", "-f", &self.volume(v)]).output();
        }
    }
}

/// Keep-alive and new-connection clients on `/color` until stopped, counting
/// answers per color and every failure.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    blue: AtomicU64,
    green: AtomicU64,
    failed: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl Load {
    fn spawn(
        self: &Arc<Self>,
        url: &str,
        keepalive: usize,
        fresh: usize,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..keepalive + fresh)
            .map(|i| {
                let (me, url) = (self.clone(), url.to_string());
                tokio::spawn(async move {
                    let mut http = Http::new();
                    while !me.stop.load(Ordering::SeqCst) {
                        if i >= keepalive {
                            http = Http::new();
                        }
                        match http.get_with(&url, &[("host", HOST)]).await {
                            Ok(r) if r.status == 200 && r.text() == "blue" => {
                                me.blue.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) if r.status == 200 && r.text() == "green" => {
                                me.green.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                me.failed.fetch_add(1, Ordering::Relaxed);
                                if let Ok(mut s) = me.samples.lock() {
                                    if s.len() < 10 {
                                        s.push(match other {
                                            Ok(r) => format!("status {}: {}", r.status, r.text()),
                                            Err(e) => format!("error: {e:#}"),
                                        });
                                    }
                                }
                            }
                        }
                    }
                })
            })
            .collect()
    }

    fn counts(&self) -> (u64, u64, u64) {
        (
            self.blue.load(Ordering::SeqCst),
            self.green.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

/// One `duotone deploy` under load; returns (blue, green, failed) answers.
async fn deploy_under_load(stack: &Arc<Stack>, to: &str) -> (u64, u64, u64) {
    let load = Arc::new(Load::default());
    let clients = load.spawn(&stack.http_url("/color"), 4, 2);
    // Load before, during and after the flip.
    let warm = eventually(Duration::from_secs(10), || {
        let load = load.clone();
        async move { (load.counts().0 + load.counts().1 > 20).then_some(()) }
    })
    .await;
    assert!(
        warm.is_some(),
        "the load got no answers: {:?}",
        load.samples.lock().map(|s| s.clone())
    );
    let t = Instant::now();
    let s = stack.clone();
    let out = tokio::task::spawn_blocking(move || s.deploy())
        .await
        .expect("deploy task");
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "deploy to {to} failed:\n{}{}\nedge:\n{}",
        text(&out.stdout),
        text(&out.stderr),
        stack.logs()
    );
    let before = load.counts();
    let after_flip = eventually(Duration::from_secs(10), || {
        let load = load.clone();
        async move {
            let now = load.counts();
            let new = if to == "green" {
                now.1 - before.1
            } else {
                now.0 - before.0
            };
            (new > 20).then_some(())
        }
    })
    .await;
    load.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("load client");
    }
    let counts = load.counts();
    let samples = load.samples.lock().map(|s| s.clone()).unwrap_or_default();
    eprintln!(
        "deploy to {to} under load: {:.1}s, answers blue {} green {}, failed {} {samples:?}",
        took.as_secs_f64(),
        counts.0,
        counts.1,
        counts.2
    );
    assert!(after_flip.is_some(), "no {to} answers after the deploy");
    assert_eq!(
        counts.2, 0,
        "failed requests during the deploy to {to}: {samples:?}"
    );
    assert_eq!(stack.live().await.as_deref(), Some(to));
    counts
}

/// A request to the app's streaming view through the edge that stays in
/// flight until the test creates the go-ahead file in the app container;
/// returns the whole response once the edge closes the connection.
async fn stream_request(
    addr: SocketAddr,
    key: &str,
    started: tokio::sync::oneshot::Sender<()>,
) -> String {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the edge");
    let req =
        format!("GET /sse?key={key}&n=2 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut started = Some(started);
    loop {
        match tokio::time::timeout(Duration::from_secs(90), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if text(&got).contains("data: event 1") {
                    if let Some(tx) = started.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
    }
    text(&got)
}

const STACK_CONFIG: &str = r#"
# tests/tests/container.rs: deploy/duotone.toml's shape with a self-signed
# certificate (no ACME in a test) and quick health checks.
[server]
http = "0.0.0.0:80"
https = "0.0.0.0:443"
admin = "${DUOTONE_ADMIN_LISTEN:-127.0.0.1:9090}"
state_dir = "/var/lib/duotone"
admin_token = "${DUOTONE_ADMIN_TOKEN}"
# The host port the admin API is published on is not 9090 here.
admin_hosts = ["127.0.0.1:{admin_port}"]
grace_period = "30s"

[[sites]]
hosts = ["app.test"]
tls = "self-signed"

  [[sites.routes]]
  path = "/static/"
  static = { root = "/srv/static", immutable_hashed = true }
  allow_http = true

  [[sites.routes]]
  path = "/"
  service = "api"
  allow_http = true

[services.api]
live = "blue"
health = { path = "/healthz", interval = "500ms", timeout = "1s", rise = 1, fall = 2 }
colors.blue = ["unix:/run/app/blue.sock"]
colors.green = ["unix:/run/app/green.sock"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compose_deploys_stops_gracefully_keeps_state_and_guards_admin() {
    let test = "compose_deploys_stops_gracefully_keeps_state_and_guards_admin";
    let Some(engine) = engine_or_skip(test) else {
        return;
    };
    images();
    let stack = Arc::new(Stack::new(engine, STACK_CONFIG));
    let t0 = Instant::now();

    // First start, as deploy/README.md describes it.
    ok(&mut stack.compose(&stack.project("blue"), Some("blue"), &["up", "-d", "api"]));
    let edge_up = Instant::now();
    ok(&mut stack.compose(&stack.project("edge"), None, &["up", "-d", "edge"]));
    assert!(
        stack.wait_serving("blue", Duration::from_secs(60)).await,
        "edge never served blue; logs:\n{}",
        stack.logs()
    );
    eprintln!(
        "compose: `up -d edge` to the first request served by blue: {:.0} ms",
        edge_up.elapsed().as_secs_f64() * 1e3
    );
    // Static files from the app's collectstatic, through the shared volume.
    let r = Http::new()
        .get_with(
            &stack.http_url("/static/app.3f2a1b9c.css"),
            &[("host", HOST)],
        )
        .await
        .expect("static file");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("#123456"), "{}", r.text());
    let (cert_before, resp) = e2e::tls::get_any_cert(stack.https_addr(), HOST, "/color")
        .await
        .expect("https through the published port");
    assert_eq!(resp.text(), "blue");
    assert!(!cert_before.is_empty());

    // blue → green under load, the CLI on the host.
    let (b, g, _) = deploy_under_load(&stack, "green").await;
    assert!(b > 0 && g > 0, "both colors answered: blue {b} green {g}");

    // docker stop of the edge lets a request in flight finish.
    let green_app = stack.app_container("green");
    assert!(!green_app.is_empty(), "green's container");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let addr = SocketAddr::from(([127, 0, 0, 1], stack.http));
    let slow = tokio::spawn(stream_request(addr, "stop1", tx));
    tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .expect("the streaming request reached the app")
        .expect("stream started");
    let edge = stack.edge();
    let stopping = {
        let edge = edge.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let out = run(&mut docker(&["stop", "-t", "60", &edge]));
            (out, t.elapsed())
        })
    };
    // The edge got SIGTERM and is draining...
    let draining = eventually(Duration::from_secs(20), || async {
        stack
            .logs()
            .contains("shutting down: waiting for in-flight requests")
            .then_some(())
    })
    .await;
    assert!(
        draining.is_some(),
        "no drain in the logs:\n{}",
        stack.logs()
    );
    // ...and still running, with our request in flight.
    assert_eq!(inspect(&edge, "{{.State.Running}}"), "true");
    ok(&mut docker(&["exec", &green_app, "touch", "/app/stop1-2"]));
    let body = tokio::time::timeout(Duration::from_secs(60), slow)
        .await
        .expect("the in-flight request ended")
        .expect("stream task");
    assert!(
        body.contains("data: event 2"),
        "the in-flight request was cut: {body:?}"
    );
    let (out, stop_took) = stopping.join().expect("docker stop thread");
    assert!(out.status.success(), "docker stop: {}", text(&out.stderr));
    assert_eq!(
        inspect(&edge, "{{.State.ExitCode}}"),
        "0",
        "the edge exited by itself after draining, not killed"
    );
    eprintln!(
        "docker stop with a request in flight: {:.1}s (the request completed)",
        stop_took.as_secs_f64()
    );

    // down / up: the certificate and the live color (green, where the
    // config says blue) come back from the state volume.
    ok(&mut stack.compose(&stack.project("edge"), None, &["down"]));
    ok(&mut stack.compose(&stack.project("edge"), None, &["up", "-d", "edge"]));
    assert!(
        stack.wait_serving("green", Duration::from_secs(60)).await,
        "after down/up the edge does not serve green; logs:\n{}",
        stack.logs()
    );
    assert_eq!(stack.live().await.as_deref(), Some("green"));
    let (cert_after, _) = e2e::tls::get_any_cert(stack.https_addr(), HOST, "/color")
        .await
        .expect("https after down/up");
    assert_eq!(
        cert_before, cert_after,
        "the certificate changed across compose down/up"
    );

    // green → blue under load.
    let (b, g, _) = deploy_under_load(&stack, "blue").await;
    assert!(b > 0 && g > 0, "both colors answered: blue {b} green {g}");

    // The admin API: published on 127.0.0.1 only.
    let r = admin("GET", &stack.admin_url("/v1/services"), Some(TOKEN), None)
        .await
        .expect("admin on 127.0.0.1");
    assert_eq!(r.status, 200);
    // The host's address on the edge's network (its gateway) is one of the
    // host's non-loopback addresses.
    let edge_net = inspect(
        &edge,
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}",
    );
    let edge_ip = inspect(
        &edge,
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
    );
    assert!(!edge_ip.is_empty() && !edge_net.is_empty());
    let gateway = ok(&mut docker(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
        &edge_net,
    ]));
    let gateway: std::net::IpAddr = gateway
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("gateway of {edge_net} {gateway:?}: {e}"));
    let limit = Duration::from_secs(3);
    assert!(
        TcpStream::connect_timeout(&SocketAddr::new(gateway, stack.http), limit).is_ok(),
        "the http port is published on the host's {gateway}"
    );
    assert!(
        TcpStream::connect_timeout(&SocketAddr::new(gateway, stack.admin), limit).is_err(),
        "the admin port must not be reachable on the host's {gateway}"
    );
    // From an app container (its own project network, as the compose file
    // sets it up): the edge's admin port is not reachable at all.
    let probe = "import socket, sys\n\
                 try:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n    print('connected')\n\
                 except OSError as e:\n    print('refused', e)\n";
    let blue_app = stack.app_container("blue");
    let out = ok(&mut docker(&[
        "exec", &blue_app, "python3", "-c", probe, &edge_ip, "9090",
    ]));
    assert!(
        out.starts_with("refused"),
        "an app container reached the admin API: {out}"
    );
    // A container put on the edge's own network reaches the listener, and
    // only the token opens it.
    let get = "import sys, urllib.request, urllib.error\n\
               try:\n    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)\n\
               except urllib.error.HTTPError as e:\n    print(e.code)\n";
    let admin_in_net = format!("http://{edge_ip}:9090/v1/services");
    let out = ok(&mut docker(&[
        "run",
        "--rm",
        "--network",
        &edge_net,
        &format!("{APP_IMAGE}:{APP_TAG}"),
        "python3",
        "-c",
        get,
        &admin_in_net,
    ]));
    assert_eq!(
        out.trim(),
        "401",
        "admin API on the edge's network without a token"
    );

    // The image's HEALTHCHECK (every 10 s) finds the admin API where this
    // compose file puts it (0.0.0.0:9090 inside the container).
    let healthy = eventually(Duration::from_secs(40), || async {
        (inspect(&edge, "{{.State.Health.Status}}") == "healthy").then_some(())
    })
    .await;
    assert!(
        healthy.is_some(),
        "edge not healthy: {}",
        inspect(&edge, "{{json .State.Health}}")
    );

    eprintln!("compose test took {:.0}s", t0.elapsed().as_secs_f64());
}
