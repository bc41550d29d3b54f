//! Helpers for blue/green tests: a bounded keep-alive load that checks which
//! color answered each request across flips, and an upstream whose health
//! follows a marker file (so a deploy's start command can make it healthy).

use crate::client::Http;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the load saw. Flips alternate between `colors[0]` (live at start)
/// and `colors[1]`; `seq` is odd while a flip call is in flight, so an even
/// `seq` read before a request and again after its response means no flip
/// overlapped it and the answer must come from color `(seq / 2) % 2`.
#[derive(Debug)]
pub struct FlipLoad {
    colors: [String; 2],
    seq: AtomicU64,
    stop: AtomicBool,
    /// Responses with status 200.
    pub ok: AtomicU64,
    /// Errors and non-200 responses.
    pub failed: AtomicU64,
    /// Responses checked against the color live for their whole life.
    pub checked: AtomicU64,
    /// Responses that overlapped a flip (either color is right).
    pub ambiguous: AtomicU64,
    /// Checked responses from the wrong color.
    pub wrong: AtomicU64,
    /// First few failures and wrong answers, for the assertion message.
    pub samples: Mutex<Vec<String>>,
    /// Flip number → when the first new-color response arrived for a request
    /// sent after that flip's API call started.
    first_new: Mutex<HashMap<u64, Instant>>,
}

impl FlipLoad {
    /// A load that starts on `live` and flips to and from `other`.
    pub fn new(live: &str, other: &str) -> Arc<Self> {
        Arc::new(FlipLoad {
            colors: [live.to_string(), other.to_string()],
            seq: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            checked: AtomicU64::new(0),
            ambiguous: AtomicU64::new(0),
            wrong: AtomicU64::new(0),
            samples: Mutex::new(Vec::new()),
            first_new: Mutex::new(HashMap::new()),
        })
    }

    /// The color flip number `k` goes to (flip 0 is the starting state).
    pub fn target(&self, k: u64) -> &str {
        &self.colors[(k % 2) as usize]
    }

    /// Call right before sending flip `k` (1-based); returns the start time.
    pub fn begin_flip(&self, k: u64) -> Instant {
        self.seq.store(2 * k - 1, Ordering::SeqCst);
        Instant::now()
    }

    /// Call right after flip `k`'s 200 response arrived.
    pub fn end_flip(&self, k: u64) {
        self.seq.store(2 * k, Ordering::SeqCst);
    }

    /// When the first response from flip `k`'s color arrived.
    pub fn first_new(&self, k: u64) -> Option<Instant> {
        self.first_new.lock().ok()?.get(&k).copied()
    }

    /// Stops the clients after their current request.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn sample(&self, s: String) {
        if let Ok(mut v) = self.samples.lock() {
            if v.len() < 10 {
                v.push(s);
            }
        }
    }

    /// Runs `clients` keep-alive clients (one connection each) against
    /// `url` until [`FlipLoad::stop`]; returns their join handles.
    pub fn spawn(self: &Arc<Self>, clients: usize, url: &str) -> Vec<tokio::task::JoinHandle<()>> {
        (0..clients)
            .map(|_| {
                let (me, url) = (self.clone(), url.to_string());
                tokio::spawn(async move { me.client(&url).await })
            })
            .collect()
    }

    async fn client(&self, url: &str) {
        let http = Http::new();
        while !self.stop.load(Ordering::SeqCst) {
            let s0 = self.seq.load(Ordering::SeqCst);
            let r = http.get(url).await;
            let s1 = self.seq.load(Ordering::SeqCst);
            let now = Instant::now();
            let r = match r {
                Ok(r) if r.status == 200 => r,
                Ok(r) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    self.sample(format!("status {}: {}", r.status, r.text()));
                    continue;
                }
                Err(e) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    self.sample(format!("error: {e:#}"));
                    continue;
                }
            };
            self.ok.fetch_add(1, Ordering::Relaxed);
            let color = r.text();
            if color != r.header("x-upstream") {
                self.wrong.fetch_add(1, Ordering::Relaxed);
                self.sample(format!(
                    "body {color:?} but x-upstream {:?}",
                    r.header("x-upstream")
                ));
            }
            // Flip k is the latest one whose call started before this request.
            let k = s0.div_ceil(2);
            if k > 0 && color == self.target(k) {
                if let Ok(mut m) = self.first_new.lock() {
                    m.entry(k).or_insert(now);
                }
            }
            if s0 & 1 == 0 && s1 == s0 {
                self.checked.fetch_add(1, Ordering::Relaxed);
                if color != self.target(k) {
                    self.wrong.fetch_add(1, Ordering::Relaxed);
                    self.sample(format!(
                        "request sent after flip {k} to {} was answered by {color}",
                        self.target(k)
                    ));
                }
            } else {
                self.ambiguous.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Min, median and max of durations in milliseconds.
pub fn summary_ms(samples: &[Duration]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => (0.0, 0.0, 0.0),
        n => (v[0], v[n / 2], v[n - 1]),
    }
}

/// An upstream whose `/healthz` answers 200 only while `marker` exists, as a
/// freshly started app would once it is ready. Other paths answer with the
/// name in the body and the `x-upstream` header (with status 500 while
/// [`GatedUpstream::set_failing`], after [`GatedUpstream::set_delay`]).
pub struct GatedUpstream {
    /// Name returned in bodies.
    pub name: String,
    /// Listening address.
    pub addr: SocketAddr,
    /// The file that makes it healthy.
    pub marker: PathBuf,
    hits: Arc<AtomicU64>,
    failing: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GatedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GatedUpstream {
    /// Starts on an ephemeral loopback port.
    pub async fn start(name: &str, marker: PathBuf) -> GatedUpstream {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gated upstream");
        let addr = l.local_addr().expect("addr");
        let hits = Arc::new(AtomicU64::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (n, m, h) = (name.to_string(), marker.clone(), hits.clone());
        let (f, d) = (failing.clone(), delay_ms.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let (n, m, h) = (n.clone(), m.clone(), h.clone());
                let (f, d) = (f.clone(), d.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let healthz = req.uri().path() == "/healthz";
                        let delay = Duration::from_millis(if healthz {
                            0
                        } else {
                            d.load(Ordering::Relaxed)
                        });
                        let (status, body) = if !healthz {
                            h.fetch_add(1, Ordering::Relaxed);
                            let failing = f.load(Ordering::Relaxed);
                            (if failing { 500 } else { 200 }, n.clone())
                        } else if m.exists() {
                            (200, "ok\n".to_string())
                        } else {
                            (503, "not started\n".to_string())
                        };
                        let resp = Response::builder()
                            .status(status)
                            .header("x-upstream", n.as_str())
                            .body(Full::new(Bytes::from(body)))
                            .unwrap_or_default();
                        async move {
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        GatedUpstream {
            name: name.to_string(),
            addr,
            marker,
            hits,
            failing,
            delay_ms,
            task,
        }
    }

    /// Makes requests other than `/healthz` answer 500 (still with the name
    /// in the body and `x-upstream`), or 200 again: an app that passes its
    /// health check and fails real requests.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }

    /// Makes requests other than `/healthz` wait `delay` before answering.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// The member string for a duotone config.
    pub fn member(&self) -> String {
        self.addr.to_string()
    }

    /// Requests served (health checks excluded).
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Waits until it has served `more` requests from now on (health
    /// checks excluded); panics, saying `what`, after 10 s.
    pub async fn serves(&self, more: u64, what: &str) {
        let after = self.hits();
        crate::eventually(std::time::Duration::from_secs(10), || async {
            (self.hits() >= after + more).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("{what}"));
    }
}

/// A fast health check on `/healthz`, as a `[services.*]` line.
pub const FAST_HEALTH: &str = r#"health = { path = "/healthz", interval = "100ms" }"#;

/// The body of a `[services.NAME]` table with blue live: members `blue`
/// and `green`, then the `extra` lines.
pub fn two_colors(blue: &str, green: &str, extra: &str) -> String {
    format!("live = \"blue\"\ncolors.blue = [\"{blue}\"]\ncolors.green = [\"{green}\"]\n{extra}\n")
}

impl GatedUpstream {
    /// Blue and green with their markers in `dir`: blue's app started
    /// (healthy), green's not.
    pub async fn pair(dir: &std::path::Path) -> (GatedUpstream, GatedUpstream) {
        let blue = GatedUpstream::start("blue", dir.join("blue.ready")).await;
        let green = GatedUpstream::start("green", dir.join("green.ready")).await;
        std::fs::write(&blue.marker, "").expect("blue's marker");
        (blue, green)
    }
}

/// A proxy in front of a blue/green pair of [`GatedUpstream`]s whose
/// markers live in `dir`, as the deploy tests use it: service `api`,
/// blue live with its app started, a 100 ms health check, the admin token
/// given. Nothing is waited for but the proxy serving.
pub struct GatedColors {
    /// Holds the markers and the logs that deploy commands write.
    pub dir: tempfile::TempDir,
    /// Live at start, app started.
    pub blue: GatedUpstream,
    /// App started only if asked.
    pub green: GatedUpstream,
    /// The proxy.
    pub p: crate::proxy::Proxy,
    /// Its admin token.
    pub token: String,
}

impl GatedColors {
    /// Starts both upstreams and the proxy with the environment `env`
    /// (a [`crate::transport::Transport`]'s, say); green's app is started
    /// too if `green_ready`.
    pub async fn start(env: &[(&str, &str)], token: &str, green_ready: bool) -> GatedColors {
        let dir = tempfile::tempdir().expect("tempdir");
        let (blue, green) = GatedUpstream::pair(dir.path()).await;
        if green_ready {
            std::fs::write(&green.marker, "").expect("green's marker");
        }
        let p = crate::proxy::Proxy::start_with_env(
            &crate::proxy::api_config(
                token,
                &two_colors(&blue.member(), &green.member(), FAST_HEALTH),
            ),
            env,
        )
        .await;
        GatedColors {
            dir,
            blue,
            green,
            p,
            token: token.to_string(),
        }
    }

    /// A file in [`GatedColors::dir`].
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The text of the file `name` in the directory (empty if none).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// The view of service `api`.
    pub async fn service(&self) -> serde_json::Value {
        crate::admin::service(&self.p, &self.token, "api").await
    }

    /// Polls the view of service `api` until `f` holds (up to `limit`).
    pub async fn wait(
        &self,
        limit: Duration,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        crate::admin::wait_service(&self.p, &self.token, "api", "the service", limit, f).await
    }

    /// Runs `duotone deploy --service api ARGS` off the async runtime.
    pub async fn deploy(&self, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["deploy", "--service", "api"];
        all.extend(args);
        crate::admin::cli(&self.p, &self.token, &all).await
    }

    /// Runs `duotone deploy --service api --start START --stop STOP
    /// --health-timeout 10s MORE…`, STOP being [`GatedColors::stop_cmd`].
    pub async fn deploy_started(&self, start: &str, more: &[&str]) -> (i32, String, String) {
        let stop = self.stop_cmd();
        let mut args = vec!["--start", start, "--stop", &stop, "--health-timeout", "10s"];
        args.extend(more);
        self.deploy(&args).await
    }

    /// A `--start` command: the color's app starts (its marker appears).
    pub fn start_cmd(&self) -> String {
        format!("touch {}/{{color}}.ready", self.dir.path().display())
    }

    /// A `--stop` command: the color's app stops (its marker goes) and the
    /// color is appended to the file `stopped`.
    pub fn stop_cmd(&self) -> String {
        let d = self.dir.path().display();
        format!("rm -f {d}/{{color}}.ready && echo $DUOTONE_COLOR >> {d}/stopped")
    }
}
