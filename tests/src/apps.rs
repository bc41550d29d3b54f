//! Real WSGI app servers for tests: gunicorn (from a venv) and uWSGI
//! (Debian's `uwsgi` with `uwsgi-plugin-python3`), both serving
//! `tests/apps/edge_app.py` (its views are listed there), and a client for
//! the uwsgi protocol so a test can reach a uWSGI socket without Duotone.
//!
//! The tools are found through the environment, as `./dev test` sets it:
//! `DUOTONE_TEST_PYTHON` (a python with gunicorn) and `DUOTONE_TEST_UWSGI`
//! (the uwsgi binary). Without one, [`gunicorn_or_skip`] and
//! [`uwsgi_or_skip`] print a loud SKIPPED notice and return `None`, unless
//! `DUOTONE_REQUIRE_GUNICORN=1` or `DUOTONE_REQUIRE_UWSGI=1` makes that a
//! failure (`./dev test` sets both, so CI never skips them).

use crate::client::Resp;
use anyhow::Context;
use bytes::Bytes;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The WSGI app every app server here runs.
pub const APP_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/apps/edge_app.py");

fn skip_or_panic(test: &str, var: &str, require: &str, what: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let msg = format!("SKIPPED {test}: {var} is not set ({what})");
    if std::env::var(require).as_deref() == Ok("1") {
        panic!("{msg}, and {require}=1");
    }
    // Written to the real stderr so libtest's output capture cannot hide it.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n!!!!! {msg} !!!!!\n");
    None
}

/// The python of a venv with gunicorn (`DUOTONE_TEST_PYTHON`), or `None`
/// after a SKIPPED notice (a panic with `DUOTONE_REQUIRE_GUNICORN=1`).
pub fn gunicorn_or_skip(test: &str) -> Option<PathBuf> {
    skip_or_panic(
        test,
        "DUOTONE_TEST_PYTHON",
        "DUOTONE_REQUIRE_GUNICORN",
        "the python of a venv with gunicorn; `./dev test` makes one in target/py-venv",
    )
}

/// The uwsgi binary (`DUOTONE_TEST_UWSGI`), or `None` after a SKIPPED
/// notice (a panic with `DUOTONE_REQUIRE_UWSGI=1`).
pub fn uwsgi_or_skip(test: &str) -> Option<PathBuf> {
    skip_or_panic(
        test,
        "DUOTONE_TEST_UWSGI",
        "DUOTONE_REQUIRE_UWSGI",
        "the uwsgi binary with its python3 plugin: Debian's uwsgi and uwsgi-plugin-python3, \
         which `./dev test` installs",
    )
}

/// The app's working directory: its event log and the test's go-ahead
/// files for the streaming views (`DUOTONE_APP_DIR`).
pub struct AppDir(tempfile::TempDir);

impl Default for AppDir {
    fn default() -> Self {
        Self::new()
    }
}

impl AppDir {
    /// A new empty directory.
    pub fn new() -> AppDir {
        AppDir(tempfile::tempdir().expect("app dir"))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// The app's events so far ("big start pid=…", "upload end pid=…").
    pub fn events(&self) -> Vec<String> {
        std::fs::read_to_string(self.path().join("events"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// How many events start with `what` ("big start", "upload end", …).
    pub fn count(&self, what: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| e.starts_with(&format!("{what} ")))
            .count()
    }

    /// Lets the streaming view of `key` send its event `i`.
    pub fn go_ahead(&self, key: &str, i: u32) {
        std::fs::write(self.path().join(format!("{key}-{i}")), b"go").expect("go-ahead file");
    }
}

/// Where an app server listens.
#[derive(Clone, Debug)]
pub enum Bind {
    /// A loopback TCP address.
    Tcp(SocketAddr),
    /// A unix socket.
    Unix(PathBuf),
}

impl Bind {
    /// A free loopback port.
    pub fn tcp() -> Bind {
        Bind::Tcp(SocketAddr::from(([127, 0, 0, 1], crate::free_port())))
    }

    /// A unix socket at `path`.
    pub fn unix(path: impl Into<PathBuf>) -> Bind {
        Bind::Unix(path.into())
    }

    async fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(match self {
            Bind::Tcp(a) => Box::new(tokio::net::TcpStream::connect(a).await?),
            Bind::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
        })
    }
}

/// A connected stream of either kind.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Which app server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// gunicorn, plain HTTP.
    Gunicorn,
    /// uWSGI, the uwsgi protocol.
    Uwsgi,
}

/// A running app server in its own process group, killed with the whole
/// group on drop.
pub struct AppServer {
    child: Option<Child>,
    /// gunicorn or uWSGI.
    pub kind: Kind,
    /// Where it listens.
    pub bind: Bind,
    /// Its COLOR (what `/color` answers).
    pub color: String,
    log: PathBuf,
}

impl AppServer {
    /// gunicorn with `workers` sync workers, started with `python -m
    /// gunicorn`; returns once `/healthz` answers.
    pub async fn gunicorn(
        python: &Path,
        bind: Bind,
        workers: u32,
        color: &str,
        app: &AppDir,
    ) -> AppServer {
        let dir = Path::new(APP_FILE).parent().expect("apps dir");
        let addr = match &bind {
            Bind::Tcp(a) => a.to_string(),
            Bind::Unix(p) => format!("unix:{}", p.display()),
        };
        let mut cmd = Command::new(python);
        cmd.args(["-m", "gunicorn", "--worker-class", "sync"])
            .args(["--workers", &workers.to_string(), "--bind", &addr])
            // A held request must not get its worker killed by gunicorn's
            // own 30 s timeout while a test still waits on it.
            .args(["--timeout", "300", "--graceful-timeout", "1"])
            .args([
                "--chdir",
                &dir.display().to_string(),
                "edge_app:application",
            ]);
        Self::spawn(cmd, Kind::Gunicorn, bind, color, app).await
    }

    /// uWSGI (`--plugin python3 --master`) with `processes` workers on a
    /// uwsgi-protocol socket; returns once `/healthz` answers.
    pub async fn uwsgi(
        uwsgi: &Path,
        bind: Bind,
        processes: u32,
        color: &str,
        app: &AppDir,
    ) -> AppServer {
        let socket = match &bind {
            Bind::Tcp(a) => a.to_string(),
            Bind::Unix(p) => p.display().to_string(),
        };
        let mut cmd = Command::new(uwsgi);
        cmd.args([
            "--plugin",
            "python3",
            "--master",
            "--need-app",
            "--die-on-term",
        ])
        .args(["--processes", &processes.to_string(), "--socket", &socket])
        .args(["--wsgi-file", APP_FILE])
        .arg("--env")
        .arg(format!("COLOR={color}"))
        .arg("--env")
        .arg(format!("DUOTONE_APP_DIR={}", app.path().display()));
        Self::spawn(cmd, Kind::Uwsgi, bind, color, app).await
    }

    async fn spawn(
        mut cmd: Command,
        kind: Kind,
        bind: Bind,
        color: &str,
        app: &AppDir,
    ) -> AppServer {
        if let Bind::Unix(p) = &bind {
            let _ = std::fs::remove_file(p);
        }
        let name = format!("{kind:?}-{color}-{}.log", crate::free_port()).to_lowercase();
        let log = app.path().join(name);
        let f = std::fs::File::create(&log).expect("app server log");
        cmd.env("COLOR", color)
            .env("DUOTONE_APP_DIR", app.path())
            .env("PYTHONUNBUFFERED", "1")
            // No __pycache__ beside the app in the source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(f.try_clone().expect("log")))
            .stderr(Stdio::from(f))
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {kind:?} ({cmd:?}): {e}"));
        let mut s = AppServer {
            child: Some(child),
            kind,
            bind,
            color: color.to_string(),
            log,
        };
        let up = crate::eventually(Duration::from_secs(30), || async {
            s.get("/healthz").await.ok().filter(|r| r.status == 200)
        })
        .await;
        if up.is_none() {
            let exited = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            panic!(
                "{kind:?} {color} on {:?} never answered /healthz (exited: {exited:?}); log:\n{}",
                s.bind,
                s.log()
            );
        }
        s
    }

    /// The member string for a Duotone config: `127.0.0.1:P` or
    /// `unix:/p` for gunicorn, `uwsgi://127.0.0.1:P` or `uwsgi+unix:/p`
    /// for uWSGI.
    pub fn member(&self) -> String {
        match (self.kind, &self.bind) {
            (Kind::Gunicorn, Bind::Tcp(a)) => a.to_string(),
            (Kind::Gunicorn, Bind::Unix(p)) => format!("unix:{}", p.display()),
            (Kind::Uwsgi, Bind::Tcp(a)) => format!("uwsgi://{a}"),
            (Kind::Uwsgi, Bind::Unix(p)) => format!("uwsgi+unix:{}", p.display()),
        }
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A GET straight to the app server (HTTP for gunicorn, the uwsgi
    /// protocol for uWSGI), on a new connection; 10 s limit.
    pub async fn get(&self, path_and_query: &str) -> anyhow::Result<Resp> {
        self.request("GET", path_and_query, &[("host", "app.test")], Bytes::new())
            .await
    }

    /// A request straight to the app server; 10 s limit.
    pub async fn request(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Resp> {
        let mut s = self.bind.connect().await?;
        let out = match self.kind {
            Kind::Gunicorn => {
                let mut head = format!("{method} {path_and_query} HTTP/1.1\r\n");
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str(&format!(
                    "content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                ));
                let mut req = head.into_bytes();
                req.extend_from_slice(&body);
                req
            }
            Kind::Uwsgi => {
                let host = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("host"))
                    .map(|(_, v)| *v)
                    .unwrap_or("app.test");
                let (path, query) = path_and_query
                    .split_once('?')
                    .unwrap_or((path_and_query, ""));
                let len = body.len().to_string();
                let mut vars: Vec<(String, String)> = [
                    ("REQUEST_METHOD", method),
                    ("REQUEST_URI", path_and_query),
                    ("PATH_INFO", path),
                    ("QUERY_STRING", query),
                    ("SERVER_PROTOCOL", "HTTP/1.1"),
                    ("SERVER_NAME", host),
                    ("SERVER_PORT", "80"),
                    ("REMOTE_ADDR", "127.0.0.1"),
                    ("CONTENT_LENGTH", len.as_str()),
                ]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
                for (k, v) in headers {
                    let name = format!("HTTP_{}", k.to_ascii_uppercase().replace('-', "_"));
                    vars.push((name, v.to_string()));
                }
                let mut req = uwsgi_packet(&vars)?;
                req.extend_from_slice(&body);
                req
            }
        };
        tokio::time::timeout(Duration::from_secs(10), async move {
            s.write_all(&out).await?;
            read_response(&mut s).await
        })
        .await
        .context("app server did not answer within 10 s")?
    }

    /// Kills the whole process group (SIGKILL) and reaps the master.
    #[allow(unsafe_code)]
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the process group of our own child.
            unsafe {
                libc::kill(-(c.id() as i32), libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A uwsgi packet header and vars (modifier1 0, u16 little-endian sizes,
/// modifier2 0), as nginx's `uwsgi_pass` sends them; the body follows it.
pub fn uwsgi_packet(vars: &[(String, String)]) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    for (k, v) in vars {
        for s in [k.as_bytes(), v.as_bytes()] {
            let n = u16::try_from(s.len()).context("uwsgi var longer than 65535 bytes")?;
            data.extend_from_slice(&n.to_le_bytes());
            data.extend_from_slice(s);
        }
    }
    let n = u16::try_from(data.len()).context("uwsgi vars longer than 65535 bytes")?;
    let mut out = vec![0u8];
    out.extend_from_slice(&n.to_le_bytes());
    out.push(0);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Reads one HTTP/1.x response from `s`: the head, then the body by
/// Content-Length, chunked coding, or up to the end of the stream.
pub async fn read_response<S: AsyncRead + Unpin + ?Sized>(s: &mut S) -> anyhow::Result<Resp> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let (status, headers, head_len) = loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut slots);
        if let httparse::Status::Complete(n) = r.parse(&buf)? {
            let mut map = http::HeaderMap::new();
            for h in r.headers.iter() {
                map.append(
                    http::HeaderName::from_bytes(h.name.as_bytes())?,
                    http::HeaderValue::from_bytes(h.value)?,
                );
            }
            break (r.code.unwrap_or(0), map, n);
        }
        let n = s.read(&mut chunk).await?;
        anyhow::ensure!(
            n > 0,
            "connection closed before a complete response head ({} bytes: {:?})",
            buf.len(),
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut body = buf.split_off(head_len);
    let chunked = headers
        .get("transfer-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let length = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if status == 204 || status == 304 || (100..200).contains(&status) {
        body.clear();
    } else if chunked {
        body = read_chunked(s, body).await?;
    } else if let Some(len) = length {
        while body.len() < len {
            let n = s.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "body ended at {} of {len} bytes", body.len());
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
    } else {
        s.read_to_end(&mut body).await?;
    }
    Ok(Resp {
        status,
        headers,
        body: Bytes::from(body),
    })
}

async fn read_chunked<S: AsyncRead + Unpin + ?Sized>(
    s: &mut S,
    mut raw: Vec<u8>,
) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Wants the next size line, then that many bytes and CRLF.
        let line_end = loop {
            if let Some(i) = raw[pos..].windows(2).position(|w| w == b"\r\n") {
                break pos + i;
            }
            let n = s.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "chunked body ended without its last chunk");
            raw.extend_from_slice(&chunk[..n]);
        };
        let line = std::str::from_utf8(&raw[pos..line_end])?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size line {line:?}"))?;
        let start = line_end + 2;
        if size == 0 {
            return Ok(out);
        }
        while raw.len() < start + size + 2 {
            let n = s.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "chunked body ended inside a chunk");
            raw.extend_from_slice(&chunk[..n]);
        }
        out.extend_from_slice(&raw[start..start + size]);
        pos = start + size + 2;
    }
}

/// The bytes `/big` sends: `len` bytes of 0..=255 repeated.
pub fn big_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 256) as u8).collect()
}

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `len` bytes of a fixed, non-repeating-looking pattern for uploads.
pub fn upload_body(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            // xorshift32: cheap, deterministic, not all one byte.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// nginx as a reverse proxy with its default buffering in front of an
/// HTTP app server, for checking the harness itself: the slow-client
/// scenarios must pass behind it (`nginx` from `DUOTONE_TEST_NGINX` or
/// the PATH; `None` when there is none).
pub struct Nginx {
    child: Child,
    /// Its listener.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx proxying every path to `upstream` (`host:port`) with
    /// nginx's defaults for buffering; returns once it answers `/healthz`.
    pub async fn start(upstream: &str) -> Option<Nginx> {
        Self::start_with(upstream, "client_max_body_size 100m;").await
    }

    /// Like [`Nginx::start`], with `server` as extra lines of its `server`
    /// block.
    pub async fn start_with(upstream: &str, server: &str) -> Option<Nginx> {
        let bin = std::env::var_os("DUOTONE_TEST_NGINX")
            .map(PathBuf::from)
            .or_else(|| {
                ["/usr/sbin/nginx", "/usr/bin/nginx"]
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| p.exists())
            })?;
        let dir = tempfile::tempdir().expect("nginx dir");
        let addr = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
        let d = dir.path().display();
        let conf = format!(
            "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             upstream app {{ server {upstream}; }}\n\
             server {{\n    listen {addr};\n    {server}\n\
             location / {{ proxy_pass http://app; proxy_http_version 1.1; \
             proxy_set_header Connection \"\"; proxy_set_header Host $host; }}\n  }}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("nginx.conf");
        let log = std::fs::File::create(dir.path().join("nginx.out")).expect("nginx log");
        let child = Command::new(bin)
            .args(["-p", &d.to_string(), "-e", &format!("{d}/error.log"), "-c"])
            .arg(&path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .process_group(0)
            .spawn()
            .expect("start nginx");
        let n = Nginx { child, addr, dir };
        let url = format!("http://{addr}/healthz");
        let up = crate::eventually(Duration::from_secs(20), || async {
            crate::client::get_status(&url)
                .await
                .ok()
                .filter(|s| *s == 200)
        })
        .await;
        assert!(up.is_some(), "nginx did not start:\n{}", n.log());
        Some(n)
    }

    /// Its error log and output.
    pub fn log(&self) -> String {
        ["error.log", "nginx.out"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Nginx {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of our own child.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
