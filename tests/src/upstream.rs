//! Real upstream servers (hyper) for tests: they name themselves, echo
//! headers, answer slowly on request, speak WebSocket, and report health.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Shared switches and counters of an upstream.
#[derive(Debug, Default)]
pub struct State {
    /// `/healthz` answers 503 when false.
    pub unhealthy: AtomicBool,
    /// Requests served.
    pub hits: AtomicU64,
    /// Connections accepted.
    pub conns: AtomicU64,
    /// Paths of the requests served, in arrival order.
    pub paths: std::sync::Mutex<Vec<String>>,
    /// Requests to `/hold` that arrived so far.
    pub held: AtomicU64,
    /// `/hold` answers once this is true ([`Upstream::release_held`]).
    pub released: AtomicBool,
    /// Wakes the `/hold` requests when `released` turns true.
    pub release: tokio::sync::Notify,
}

/// A running upstream server; stops when dropped.
pub struct Upstream {
    /// Name returned in bodies and `x-upstream`.
    pub name: String,
    /// TCP address (None for unix sockets).
    pub addr: Option<SocketAddr>,
    /// Unix socket path.
    pub path: Option<PathBuf>,
    /// Switches and counters.
    pub state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Starts on an ephemeral loopback TCP port.
    pub async fn start(name: &str) -> Upstream {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = l.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let (n, st) = (name.to_string(), state.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                serve_conn(s, n.clone(), st.clone());
            }
        });
        Upstream {
            name: name.into(),
            addr: Some(addr),
            path: None,
            state,
            task,
        }
    }

    /// Starts on a unix socket at `path`.
    pub async fn start_unix(name: &str, path: PathBuf) -> Upstream {
        let _ = std::fs::remove_file(&path);
        let l = tokio::net::UnixListener::bind(&path).expect("bind unix upstream");
        let state = Arc::new(State::default());
        let (n, st) = (name.to_string(), state.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                serve_conn(s, n.clone(), st.clone());
            }
        });
        Upstream {
            name: name.into(),
            addr: None,
            path: Some(path),
            state,
            task,
        }
    }

    /// The member string for a duotone config.
    pub fn member(&self) -> String {
        match (&self.addr, &self.path) {
            (Some(a), _) => a.to_string(),
            (None, Some(p)) => format!("unix:{}", p.display()),
            _ => String::new(),
        }
    }

    /// Requests served so far.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn conns(&self) -> u64 {
        self.state.conns.load(Ordering::Relaxed)
    }

    /// Requests served so far whose path starts with `prefix`.
    pub fn hits_on(&self, prefix: &str) -> usize {
        self.state
            .paths
            .lock()
            .map(|p| p.iter().filter(|x| x.starts_with(prefix)).count())
            .unwrap_or(0)
    }

    /// Requests to `/hold` that arrived so far.
    pub fn held(&self) -> u64 {
        self.state.held.load(Ordering::Relaxed)
    }

    /// Answers every `/hold` request waiting, and those after it at once.
    pub fn release_held(&self) {
        self.state.released.store(true, Ordering::Relaxed);
        self.state.release.notify_waiters();
    }

    /// Makes `/hold` requests wait again until [`Upstream::release_held`].
    pub fn hold(&self) {
        self.state.released.store(false, Ordering::Relaxed);
    }

    /// Makes `/healthz` fail or pass.
    pub fn set_healthy(&self, healthy: bool) {
        self.state.unhealthy.store(!healthy, Ordering::Relaxed);
    }
}

fn serve_conn<S>(s: S, name: String, state: Arc<State>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    state.conns.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req| {
            let (name, state) = (name.clone(), state.clone());
            async move { Ok::<_, std::convert::Infallible>(handle(req, &name, &state).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(s), svc)
            .with_upgrades()
            .await;
    });
}

fn query_ms(req: &Request<Incoming>) -> u64 {
    req.uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn handle(mut req: Request<Incoming>, name: &str, state: &State) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if matches!(req.method().as_str(), "POST" | "PUT" | "PATCH") {
        // Read the body first, as an app does: answering a large upload
        // unread would close the connection under the proxy's write.
        while let Some(Ok(_)) = http_body_util::BodyExt::frame(req.body_mut()).await {}
    }
    let reply = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .header("x-upstream", name)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if path == "/healthz" {
        return if state.unhealthy.load(Ordering::Relaxed) {
            reply(503, "sick\n".into())
        } else {
            reply(200, "ok\n".into())
        };
    }
    state.hits.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut p) = state.paths.lock() {
        p.push(path.clone());
    }
    match path.as_str() {
        "/ws" => websocket(req, name),
        "/hold" => {
            state.held.fetch_add(1, Ordering::Relaxed);
            loop {
                // Registered before the check, so a release in between
                // still wakes it.
                let released = state.release.notified();
                if state.released.load(Ordering::Relaxed) {
                    break;
                }
                released.await;
            }
            reply(200, name.to_string())
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query_ms(&req))).await;
            reply(200, name.to_string())
        }
        _ if path.starts_with("/headers") || path.contains("/echo") => {
            let mut h = serde_json::Map::new();
            for (k, v) in req.headers() {
                h.insert(k.to_string(), v.to_str().unwrap_or("").into());
            }
            let body = serde_json::json!({
                "upstream": name,
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "headers": h,
            });
            let mut r = reply(200, body.to_string());
            r.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        // The app's own error status: `/status/502` answers 502.
        _ if path.contains("/status/") => {
            let code = path.rsplit('/').next().and_then(|c| c.parse().ok());
            let code = code.unwrap_or(500);
            reply(code, format!("{name} says {code}\n"))
        }
        _ => reply(200, name.to_string()),
    }
}

fn websocket(req: Request<Incoming>, name: &str) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Response::builder()
            .status(400)
            .body(Full::new(Bytes::from_static(b"not a websocket request")))
            .unwrap_or_default();
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let name = name.to_string();
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                let text = format!(
                    "{name}: {}",
                    msg.into_text().map(|t| t.to_string()).unwrap_or_default()
                );
                if ws
                    .send(tokio_tungstenite::tungstenite::Message::text(text))
                    .await
                    .is_err()
                {
                    break;
                }
            } else if msg.is_close() {
                break;
            }
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

/// Sends `text` on a WebSocket open through the proxy to an [`Upstream`]
/// and returns the echo (`NAME: text`, from the upstream that answered);
/// panics unless it comes within 5 s.
pub async fn ws_echo<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(tokio_tungstenite::tungstenite::Message::text(text))
        .await
        .expect("send");
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo in time")
        .expect("echo")
        .expect("echo frame");
    msg.into_text().expect("a text echo").to_string()
}
