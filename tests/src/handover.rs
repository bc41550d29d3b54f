//! A continuous HTTP/1.1 load for hand-over tests (a binary upgrade): keep-alive
//! clients and clients opening a new connection per request, over plain TCP
//! or TLS, each request checked (status 200 and the expected body) and timed.
//! Refused connections, failed requests and keep-alive connections closed
//! under a request are counted apart; nothing is retried.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How a client connects and reuses its connection.
#[derive(Clone, Debug)]
pub struct Client {
    /// The listener.
    pub addr: SocketAddr,
    /// TLS (any certificate accepted, SNI = `host`) or plain TCP.
    pub tls: bool,
    /// The Host header (and SNI).
    pub host: String,
    /// The request path.
    pub path: String,
    /// Keep the connection for the next request (until the server says
    /// `connection: close`), or one connection per request.
    pub keep_alive: bool,
}

/// One finished request.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// When it started.
    pub at: Instant,
    /// From the start (connect included, for a new connection) to the last
    /// byte of the response.
    pub took: Duration,
    /// Its client's index in [`Load::spawn`]'s list.
    pub client: usize,
}

/// What the load saw.
#[derive(Debug, Default)]
pub struct Load {
    stop: AtomicBool,
    /// Complete responses with status 200 and the expected body.
    pub ok: AtomicU64,
    /// Requests without such a response (any reason, refused ones included).
    pub failed: AtomicU64,
    /// Connections refused (`ECONNREFUSED`) or reset during the handshake.
    pub refused: AtomicU64,
    /// Requests on a reused keep-alive connection that the server closed
    /// before any byte of the response (counted in `failed` too).
    pub closed_under_request: AtomicU64,
    /// Responses to keep-alive clients that said `connection: close` (the
    /// client then reconnects).
    pub told_to_close: AtomicU64,
    /// Every successful request's timing.
    pub samples: Mutex<Vec<Sample>>,
    /// The first failures, for assertion messages.
    pub errors: Mutex<Vec<String>>,
}

/// Why a request failed.
enum Failure {
    /// The connection could not be made (refused).
    Refused(String),
    /// A reused connection ended before any byte of the response.
    ClosedUnder(String),
    /// Anything else.
    Other(String),
}

impl Load {
    /// A load with nothing running yet.
    pub fn new() -> Arc<Load> {
        Arc::new(Load::default())
    }

    /// Starts `clients` (each expecting `expect` as the body); they run
    /// until [`Load::stop`].
    pub fn spawn(
        self: &Arc<Self>,
        clients: &[Client],
        expect: &str,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (me, c, expect) = (self.clone(), c.clone(), expect.to_string());
                tokio::spawn(async move { me.run(i, c, &expect).await })
            })
            .collect()
    }

    /// Stops the clients after their current request.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits until `more` requests have succeeded from now on (the process
    /// serving now serves the load), then stops the clients and waits for
    /// them. Panics, saying `what`, if that takes over 20 s.
    pub async fn serve_then_stop(
        &self,
        running: Vec<tokio::task::JoinHandle<()>>,
        more: u64,
        what: &str,
    ) {
        let after = self.ok();
        crate::eventually(Duration::from_secs(20), || async {
            (self.ok() >= after + more).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("{what}"));
        self.stop();
        for r in running {
            r.await.expect("client");
        }
    }

    /// Failed requests so far, and the first failures' messages.
    pub fn failures(&self) -> (u64, Vec<String>) {
        let failed = self.failed.load(Ordering::SeqCst);
        let errors = self.errors.lock().map(|e| e.clone()).unwrap_or_default();
        (failed, errors)
    }

    /// Successful requests so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// The longest request among those that started within `from..to`, of
    /// the clients `which` selects.
    pub fn longest(&self, from: Instant, to: Instant, which: impl Fn(usize) -> bool) -> Duration {
        self.samples
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|x| x.at >= from && x.at <= to && which(x.client))
                    .map(|x| x.took)
                    .max()
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    /// Successful requests that started after `t`.
    pub fn ok_after(&self, t: Instant) -> usize {
        self.samples
            .lock()
            .map(|s| s.iter().filter(|x| x.at > t).count())
            .unwrap_or(0)
    }

    fn error(&self, e: String) {
        if let Ok(mut v) = self.errors.lock() {
            if v.len() < 20 {
                v.push(e);
            }
        }
    }

    async fn run(&self, me: usize, c: Client, expect: &str) {
        let mut conn: Option<Box<dyn Io>> = None;
        while !self.stop.load(Ordering::SeqCst) {
            let at = Instant::now();
            let reused = conn.is_some();
            let r = tokio::time::timeout(Duration::from_secs(20), async {
                let io = match conn.take() {
                    Some(io) => io,
                    None => connect(&c).await.map_err(Failure::Refused)?,
                };
                exchange(io, &c, reused).await
            })
            .await
            .unwrap_or_else(|_| Err(Failure::Other("no response within 20 s".into())));
            match r {
                Ok((status, body, close, io)) if status == 200 && body == expect.as_bytes() => {
                    self.ok.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut s) = self.samples.lock() {
                        s.push(Sample {
                            at,
                            took: at.elapsed(),
                            client: me,
                        });
                    }
                    if close && c.keep_alive {
                        self.told_to_close.fetch_add(1, Ordering::SeqCst);
                    } else if c.keep_alive {
                        conn = Some(io);
                    }
                }
                Ok((status, body, _, _)) => {
                    self.failed.fetch_add(1, Ordering::SeqCst);
                    self.error(format!(
                        "client {me}: status {status}: {:?}",
                        String::from_utf8_lossy(&body)
                    ));
                }
                Err(f) => {
                    self.failed.fetch_add(1, Ordering::SeqCst);
                    let e = match f {
                        Failure::Refused(e) => {
                            self.refused.fetch_add(1, Ordering::SeqCst);
                            format!("client {me}: connect: {e}")
                        }
                        Failure::ClosedUnder(e) => {
                            self.closed_under_request.fetch_add(1, Ordering::SeqCst);
                            format!(
                                "client {me}: keep-alive connection closed under the request: {e}"
                            )
                        }
                        Failure::Other(e) => format!("client {me}: {e}"),
                    };
                    self.error(e);
                }
            }
        }
    }
}

/// A client connection, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn connect(c: &Client) -> Result<Box<dyn Io>, String> {
    if c.tls {
        crate::tls::connect_any_cert(c.addr, &c.host)
            .await
            .map(|s| Box::new(s) as Box<dyn Io>)
            .map_err(|e| format!("{e:#}"))
    } else {
        tokio::net::TcpStream::connect(c.addr)
            .await
            .map(|s| Box::new(s) as Box<dyn Io>)
            .map_err(|e| e.to_string())
    }
}

/// Sends one GET and reads its response: (status, body, the server said
/// `connection: close`, the connection).
async fn exchange(
    mut io: Box<dyn Io>,
    c: &Client,
    reused: bool,
) -> Result<(u16, Vec<u8>, bool, Box<dyn Io>), Failure> {
    let close = if c.keep_alive {
        ""
    } else {
        "connection: close\r\n"
    };
    let req = format!("GET {} HTTP/1.1\r\nhost: {}\r\n{close}\r\n", c.path, c.host);
    let fail = |e: String, got: usize| {
        if reused && got == 0 {
            Failure::ClosedUnder(e)
        } else {
            Failure::Other(e)
        }
    };
    io.write_all(req.as_bytes())
        .await
        .map_err(|e| fail(format!("write: {e}"), 0))?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let parsed = resp
            .parse(&buf)
            .map_err(|e| Failure::Other(format!("bad response head: {e}")))?;
        if let httparse::Status::Complete(head) = parsed {
            let status = resp.code.unwrap_or(0);
            let field = |name: &str| {
                resp.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
            };
            let len: usize = field("content-length")
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| Failure::Other("no content-length".into()))?;
            let close = field("connection").is_some_and(|v| v.contains("close"));
            while buf.len() < head + len {
                let got = buf.len();
                let n = read_more(&mut io, &mut buf)
                    .await
                    .map_err(|e| fail(e, got))?;
                if n == 0 {
                    return Err(Failure::Other("closed in the body".into()));
                }
            }
            return Ok((status, buf[head..head + len].to_vec(), close, io));
        }
        let got = buf.len();
        let n = read_more(&mut io, &mut buf)
            .await
            .map_err(|e| fail(e, got))?;
        if n == 0 {
            return Err(fail("closed before a complete response".into(), got));
        }
    }
}

async fn read_more(io: &mut Box<dyn Io>, buf: &mut Vec<u8>) -> Result<usize, String> {
    let mut chunk = [0u8; 4096];
    let n = io
        .read(&mut chunk)
        .await
        .map_err(|e| format!("read: {e}"))?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}
