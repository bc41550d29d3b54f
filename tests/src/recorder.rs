//! A recording upstream: a raw TCP server that keeps the exact bytes of
//! every request it receives (head and body, framed by Content-Length or
//! chunked) and answers each with `200 OK` and a three-byte body (none to
//! HEAD). For differential tests: what reached the upstream is compared
//! byte for byte.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The answer to every request.
pub const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";

/// How long the recorder waits for the rest of a request it has begun.
const READ_LIMIT: Duration = Duration::from_secs(5);

/// A running recording upstream; stops when dropped.
pub struct Recorder {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    busy: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    /// Listens on a free loopback port.
    pub async fn start() -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recorder");
        let addr = l.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let busy = Arc::new(AtomicUsize::new(0));
        let (s2, b2) = (seen.clone(), busy.clone());
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(serve(s, s2.clone(), b2.clone()));
            }
        });
        Recorder {
            addr,
            seen,
            busy,
            task,
        }
    }

    /// Takes the requests recorded so far, once none is half received
    /// (waits at most a few seconds for that).
    pub async fn take(&self) -> Vec<Vec<u8>> {
        for _ in 0..300 {
            if self.busy.load(Ordering::SeqCst) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Serves one connection: record, answer, repeat.
async fn serve(mut s: TcpStream, seen: Arc<Mutex<Vec<Vec<u8>>>>, busy: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    loop {
        if buf.is_empty() && !fill(&mut s, &mut buf, None).await {
            return;
        }
        busy.fetch_add(1, Ordering::SeqCst);
        let (request, keep) = read_request(&mut s, &mut buf).await;
        let answer = if request.starts_with(b"HEAD ") {
            &ANSWER[..ANSWER.len() - 3]
        } else {
            ANSWER
        };
        seen.lock().unwrap_or_else(|e| e.into_inner()).push(request);
        busy.fetch_sub(1, Ordering::SeqCst);
        if !keep || s.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// Reads more into `buf`; false on close, error or timeout.
async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, limit: Option<Duration>) -> bool {
    let mut chunk = [0u8; 8192];
    let read = s.read(&mut chunk);
    let n = match limit {
        Some(l) => match tokio::time::timeout(l, read).await {
            Ok(r) => r,
            Err(_) => return false,
        },
        None => read.await,
    };
    match n {
        Ok(n) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

/// Reads one request off `buf` (filling it from `s`): its exact bytes, and
/// whether it was complete (else the connection is given up).
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> (Vec<u8>, bool) {
    let end = loop {
        if let Some(e) = find(buf, b"\r\n\r\n") {
            break e + 4;
        }
        if !fill(s, buf, Some(READ_LIMIT)).await {
            return (std::mem::take(buf), false);
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let field = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let chunked = field("transfer-encoding").is_some_and(|v| {
        v.rsplit(',')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
    });
    // A list of equal values (`3, 3`) counts as one (RFC 9110 §8.6).
    let length = field("content-length").and_then(|v| {
        let mut values = v.split(',').map(|n| n.trim().parse::<usize>().ok());
        let first = values.next()??;
        values.all(|n| n == Some(first)).then_some(first)
    });
    // Always (not only when the body is late), so the answer does not
    // depend on how the proxy's writes were split.
    if field("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        let _ = s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
    }
    let mut at = end;
    if chunked {
        // Sizes, data and trailers up to the empty line after the last chunk.
        loop {
            let line = loop {
                if let Some(i) = find(&buf[at..], b"\r\n") {
                    break i;
                }
                if !fill(s, buf, Some(READ_LIMIT)).await {
                    return (std::mem::take(buf), false);
                }
            };
            let text = String::from_utf8_lossy(&buf[at..at + line]).into_owned();
            let size = text.split(';').next().unwrap_or("").trim();
            let Ok(size) = usize::from_str_radix(size, 16) else {
                return (std::mem::take(buf), false);
            };
            at += line + 2;
            if size == 0 {
                loop {
                    let line = loop {
                        if let Some(i) = find(&buf[at..], b"\r\n") {
                            break i;
                        }
                        if !fill(s, buf, Some(READ_LIMIT)).await {
                            return (std::mem::take(buf), false);
                        }
                    };
                    at += line + 2;
                    if line == 0 {
                        break;
                    }
                }
                break;
            }
            while buf.len() < at + size + 2 {
                if !fill(s, buf, Some(READ_LIMIT)).await {
                    return (std::mem::take(buf), false);
                }
            }
            at += size + 2;
        }
    } else if let Some(n) = length {
        while buf.len() < end + n {
            if !fill(s, buf, Some(READ_LIMIT)).await {
                return (std::mem::take(buf), false);
            }
        }
        at = end + n;
    }
    (buf.drain(..at).collect(), true)
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
