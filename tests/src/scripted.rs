//! A scripted raw HTTP/1.1 upstream: answers by path with every framing
//! (length, chunked, close-delimited, interim 1xx, garbage, cut short) and
//! records exactly what it received.

use crate::proxy::Proxy;
use crate::transport::Transport;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Raw upstream: answers by path, records every request it received.
pub struct Scripted {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every request received, head and body, in order.
    pub seen: Arc<Mutex<Vec<String>>>,
    /// Connections accepted.
    pub conns: Arc<Mutex<u32>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The canned answer for `path` and whether the connection stays open
/// (unknown paths echo the request).
fn answer(path: &str, request: &str) -> (Vec<u8>, bool) {
    let ok =
        |b: &str| format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{b}", b.len()).into_bytes();
    match path {
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
                .to_vec(),
            true,
        ),
        "/close" => (b"HTTP/1.0 200 OK\r\n\r\nuntil the end".to_vec(), false),
        "/interim" => (
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                .to_vec(),
            true,
        ),
        // Answers, then closes the kept-alive connection behind the proxy's back.
        "/bye" => (ok("bye"), false),
        "/garbage" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokTRAILING GARBAGE".to_vec(),
            true,
        ),
        "/bad" => (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), false),
        // A head promising a body, then the connection closes.
        "/cut" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec(), false),
        "/big" => (ok(&big_body()), true),
        _ => (ok(request), true),
    }
}

impl Scripted {
    /// Listens on a free loopback port.
    pub async fn start() -> Scripted {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(Mutex::new(0));
        let (s2, c2) = (seen.clone(), conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                *c2.lock().unwrap() += 1;
                let seen = s2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(end) = head_end(&buf) else {
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        let len = header(&head, "content-length")
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        while buf.len() < end + len {
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let request = String::from_utf8_lossy(&buf[..end + len]).into_owned();
                        buf.drain(..end + len);
                        seen.lock().unwrap().push(request.clone());
                        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                        if path == "/split" {
                            // Head and body in two writes with a pause between
                            // (the proxy sees the head alone first).
                            let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
                            if s.write_all(head).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(30)).await;
                            if s.write_all(b"later").await.is_err() {
                                return;
                            }
                            continue;
                        }
                        let (mut bytes, keep) = answer(&path, &request);
                        if head.starts_with("HEAD ") {
                            let end = head_end(&bytes).unwrap_or(bytes.len());
                            bytes.truncate(end);
                        }
                        if s.write_all(&bytes).await.is_err() || !keep {
                            return;
                        }
                    }
                });
            }
        });
        Scripted {
            addr,
            seen,
            conns,
            task,
        }
    }

    /// The last request received.
    pub fn last(&self) -> String {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

/// 200 000 bytes of text, more than the proxy reads at once.
pub fn big_body() -> String {
    (0..20_000).map(|i| format!("{:09}\n", i)).collect()
}

/// Where the first `\r\n\r\n` ends, if any.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// A header's value in an HTTP/1 head, any case.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A site `app.test`: `/static/` files, a `/old/` redirect, and the
/// service `app` (the scripted upstream) for everything else.
pub fn config(upstream: SocketAddr, www: &std::path::Path) -> String {
    format!(
        r#"
[server]
http = "{{http}}"
admin = "{{admin}}"
state_dir = "{{state}}"

[[sites]]
hosts = ["app.test"]
  [[sites.routes]]
  path = "/static/"
  static = {{ root = "{www}" }}
  [[sites.routes]]
  path = "/old/"
  redirect = {{ to = "https://new.test$path", status = 301 }}
  [[sites.routes]]
  path = "/"
  service = "app"

[services.app]
colors.blue = ["{upstream}"]
read_timeout = "2s"
"#,
        www = www.display()
    )
}

/// A scripted upstream and Duotone in front of it ([`config`]), serving
/// on `transport`, with `a.txt` in the static root.
pub async fn setup(transport: Transport) -> (Scripted, Proxy, tempfile::TempDir) {
    let up = Scripted::start().await;
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("a.txt"), "static file\n").unwrap();
    let p = Proxy::start_on(transport, &config(up.addr, www.path())).await;
    (up, p, www)
}
