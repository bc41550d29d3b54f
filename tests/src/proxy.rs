//! The `duotone` binary as a child process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Path of the built `duotone` binary (next to the test executable's parent).
pub fn duotone_bin() -> PathBuf {
    if let Ok(p) = std::env::var("DUOTONE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("duotone");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p duotone` before the e2e tests",
        bin.display()
    );
    bin
}

/// Ports and paths a config template can use: `{http}`, `{https}`, `{admin}`, `{state}`, `{dir}`.
#[derive(Clone, Debug)]
pub struct Ports {
    /// Plain HTTP listener.
    pub http: SocketAddr,
    /// HTTPS listener.
    pub https: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
}

/// A running `duotone run -c FILE`.
pub struct Proxy {
    child: Option<Child>,
    /// Listener addresses.
    pub ports: Ports,
    /// Temp dir holding the config, state and logs.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// Extra environment for the child.
    pub env: Vec<(String, String)>,
    /// The child's file limit (soft, hard), set before it runs; none:
    /// inherited from the test.
    pub nofile: Option<(u64, u64)>,
}

impl Proxy {
    /// Fills a config template's placeholders.
    pub fn render(template: &str, ports: &Ports, dir: &Path) -> String {
        template
            .replace("{http}", &ports.http.to_string())
            .replace("{https}", &ports.https.to_string())
            .replace("{admin}", &ports.admin.to_string())
            .replace("{state}", &dir.join("state").display().to_string())
            .replace("{dir}", &dir.display().to_string())
    }

    /// Writes the config and starts the proxy; waits until the admin API answers.
    pub async fn start(template: &str) -> Proxy {
        Self::start_with_env(template, &[]).await
    }

    /// Like [`Proxy::start`], with requests served on `transport` (the
    /// lane, or Pingora's path alone).
    pub async fn start_on(transport: crate::transport::Transport, template: &str) -> Proxy {
        Self::start_with_env(template, transport.env()).await
    }

    /// Like [`Proxy::start`] with extra environment variables.
    pub async fn start_with_env(template: &str, env: &[(&str, &str)]) -> Proxy {
        Self::start_at(std::net::Ipv4Addr::LOCALHOST, template, env).await
    }

    /// Like [`Proxy::start_with_env`], with every listener on the loopback
    /// address `ip` (e.g. 127.0.0.2: one "host" of several edge nodes).
    pub async fn start_at(ip: std::net::Ipv4Addr, template: &str, env: &[(&str, &str)]) -> Proxy {
        Self::start_at_ports(ip, None, template, env).await
    }

    /// Like [`Proxy::start_at`], with the plain and TLS listeners on the
    /// given ports when `fixed` is set (several nodes on one port each, on
    /// their own addresses: a CA dials a single port).
    pub async fn start_at_ports(
        ip: std::net::Ipv4Addr,
        fixed: Option<(u16, u16)>,
        template: &str,
        env: &[(&str, &str)],
    ) -> Proxy {
        let mut p = Self::prepare(ip, fixed, template, env);
        p.spawn().await;
        p
    }

    /// Like [`Proxy::start`], with the child's soft and hard file limits
    /// (`RLIMIT_NOFILE`) set to `nofile` before it runs.
    pub async fn start_with_nofile(template: &str, nofile: (u64, u64)) -> Proxy {
        let mut p = Self::prepare(std::net::Ipv4Addr::LOCALHOST, None, template, &[]);
        p.nofile = Some(nofile);
        p.spawn().await;
        p
    }

    /// Picks the ports and writes the config; the child is not started.
    fn prepare(
        ip: std::net::Ipv4Addr,
        fixed: Option<(u16, u16)>,
        template: &str,
        env: &[(&str, &str)],
    ) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = || crate::free_port_at(ip);
        let (http, https) = fixed.unwrap_or_else(|| (port(), port()));
        let ports = Ports {
            http: SocketAddr::from((ip, http)),
            https: SocketAddr::from((ip, https)),
            admin: SocketAddr::from((ip, port())),
        };
        let config = dir.path().join("duotone.toml");
        std::fs::write(&config, Self::render(template, &ports, dir.path())).expect("write config");
        Proxy {
            child: None,
            ports,
            dir,
            config,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            nofile: None,
        }
    }

    /// Rewrites the config file from a template (same ports and dirs).
    pub fn rewrite(&self, template: &str) {
        std::fs::write(
            &self.config,
            Self::render(template, &self.ports, self.dir.path()),
        )
        .expect("rewrite config");
    }

    /// Starts (or restarts) the child and waits until it serves.
    pub async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("duotone.log"))
            .expect("log file");
        let mut cmd = Command::new(duotone_bin());
        cmd.arg("run")
            .arg("-c")
            .arg(&self.config)
            // The product's default levels, whatever the caller's RUST_LOG.
            .env_remove("RUST_LOG")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some((soft, hard)) = self.nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: between fork and exec the closure only calls
            // setrlimit(2), which is async-signal-safe, on a copied value.
            #[allow(unsafe_code)]
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = cmd.spawn().expect("spawn duotone");
        self.child = Some(child);
        if !wait_healthy(self.ports.admin, Duration::from_secs(20)).await {
            panic!("duotone did not start; log:\n{}", self.log());
        }
        // The proxy listener comes up with the admin one; wait for it too,
        // with a probe the proxy has accepted, seen end and closed, so that
        // no probe is still being served once `start` returns (tests that
        // count connections would see it).
        let http = self.ports.http;
        crate::eventually(Duration::from_secs(10), || async move {
            let mut probe = tokio::net::TcpStream::connect(http).await.ok()?;
            probe.shutdown().await.ok()?;
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), probe.read_to_end(&mut rest))
                .await
                .ok()?
                .ok()
                .map(|_| ())
        })
        .await;
    }

    /// The child's combined output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("duotone.log")).unwrap_or_default()
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Sends a signal.
    #[allow(unsafe_code)]
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the child to exit (up to `limit`); returns its exit code.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let start = std::time::Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            if start.elapsed() > limit {
                self.child = Some(child);
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the child with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Base URL of the plain listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.ports.http, path)
    }

    /// Base URL of the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.ports.admin, path)
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `GET /healthz` on the admin address answers 200; false if
/// it does not within `limit`.
pub async fn wait_healthy(admin: SocketAddr, limit: Duration) -> bool {
    crate::eventually(limit, || async move {
        crate::client::get_status(&format!("http://{admin}/healthz"))
            .await
            .ok()
            .filter(|s| *s == 200)
    })
    .await
    .is_some()
}

/// Runs `duotone ARGS…` to completion; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(duotone_bin());
    cmd.args(args)
        .env_remove("DUOTONE_ADMIN")
        .env_remove("DUOTONE_ADMIN_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run duotone");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `[server]` table of a config template: plain HTTP and admin
/// listeners, the state directory, and the admin token `token`, then the
/// `extra` lines (more `[server]` keys). Placeholders as in [`Proxy::render`].
pub fn server_config(token: &str, extra: &str) -> String {
    format!(
        r#"
[server]
http = "{{http}}"
admin = "{{admin}}"
state_dir = "{{state}}"
admin_token = "{token}"
{extra}
"#
    )
}

/// A config template with the admin token `token`, one default site that
/// routes everything to the service `api`, and `service` as the body of
/// `[services.api]` (colors, health, …). Placeholders as in [`Proxy::render`].
pub fn api_config(token: &str, service: &str) -> String {
    format!(
        r#"{server}
[[sites]]
hosts = ["*"]
  [[sites.routes]]
  path = "/"
  service = "api"

[services.api]
{service}
"#,
        server = server_config(token, "")
    )
}
