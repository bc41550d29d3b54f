//! Clients a test holds in the middle of an exchange: an upload whose body
//! it sends piece by piece ([`HeldUpload`]), a request whose response it
//! does not read ([`HeldDownload`]), and a streamed response it reads as
//! it arrives ([`Streamed`]). They are what slow clients look like to a
//! proxy, without any timing: the test decides when each one moves on.

use crate::client::Resp;
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// An HTTP/1.1 POST whose body the test sends when it likes: with a
/// Content-Length when given one, chunked otherwise.
pub struct HeldUpload {
    tx: Option<mpsc::Sender<Bytes>>,
    task: tokio::task::JoinHandle<anyhow::Result<Resp>>,
    /// Body bytes handed to the connection so far.
    pub sent: usize,
}

impl HeldUpload {
    /// Connects to `addr` and sends the request head (`POST path`,
    /// `Host: host`, and `Content-Length: length` or chunked coding).
    pub async fn start(
        addr: SocketAddr,
        host: &str,
        path: &str,
        length: Option<usize>,
    ) -> anyhow::Result<HeldUpload> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let (tx, mut rx) = mpsc::channel::<Bytes>(1);
        let frames = futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
                .map(|o| o.map(|b| Ok::<_, Infallible>(Frame::data(b))))
        });
        let mut b = http::Request::builder()
            .method("POST")
            .uri(path)
            .header("host", host)
            .header("content-type", "application/octet-stream");
        if let Some(n) = length {
            b = b.header("content-length", n);
        }
        let req = b.body(StreamBody::new(frames))?;
        let task = tokio::spawn(async move {
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok(Resp {
                status,
                headers,
                body,
            })
        });
        Ok(HeldUpload {
            tx: Some(tx),
            task,
            sent: 0,
        })
    }

    /// Sends `data` in pieces of `piece` bytes, pausing `pace` between
    /// them (the shape of a slow client; not a timing anything depends on).
    pub async fn send(&mut self, data: &[u8], piece: usize, pace: Duration) -> anyhow::Result<()> {
        let tx = self.tx.as_ref().context("upload already finished")?;
        for (i, part) in data.chunks(piece.max(1)).enumerate() {
            if i > 0 && !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
            tx.send(Bytes::copy_from_slice(part))
                .await
                .map_err(|_| anyhow::anyhow!("the connection stopped taking the body"))?;
            self.sent += part.len();
        }
        Ok(())
    }

    /// Whether the response has arrived (the exchange is over) already.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Ends the body (the last chunk, when chunked) and waits up to `limit`
    /// for the response.
    pub async fn finish(mut self, limit: Duration) -> anyhow::Result<Resp> {
        self.tx = None;
        tokio::time::timeout(limit, &mut self.task)
            .await
            .context("no response in time")??
    }
}

/// Sends `body` to `path` chunked (no Content-Length), in pieces of
/// `piece` bytes, and returns the response (each step within `limit`).
pub async fn chunked_upload(
    addr: SocketAddr,
    host: &str,
    path: &str,
    body: &[u8],
    piece: usize,
    limit: Duration,
) -> anyhow::Result<Resp> {
    let mut u = HeldUpload::start(addr, host, path, None).await?;
    tokio::time::timeout(limit, u.send(body, piece, Duration::ZERO))
        .await
        .context("body not taken in time")??;
    u.finish(limit).await
}

/// A GET whose response the test does not read until it says so.
pub struct HeldDownload {
    stream: tokio::net::TcpStream,
}

impl HeldDownload {
    /// Connects and sends `GET path` (Connection: close); reads nothing.
    /// The socket's receive buffer is set small (32 KiB: no autotuning,
    /// which on loopback grows to tens of MiB), so an unread response
    /// stays with the proxy beyond what its own send buffer holds.
    pub async fn start(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<HeldDownload> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_recv_buffer_size(32 * 1024)?;
        let mut stream = socket.connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        Ok(HeldDownload { stream })
    }

    /// Reads the whole response now, within `limit`.
    pub async fn read(mut self, limit: Duration) -> anyhow::Result<Resp> {
        tokio::time::timeout(limit, crate::apps::read_response(&mut self.stream))
            .await
            .context("response not read in time")?
    }
}

/// A GET whose response body the test reads as it arrives.
pub struct Streamed {
    /// Status code.
    pub status: u16,
    /// Response header fields.
    pub headers: http::HeaderMap,
    body: Incoming,
    /// Body bytes received so far.
    pub got: Vec<u8>,
    /// Whether the body has ended.
    pub ended: bool,
}

impl Streamed {
    /// Sends `GET path` on a new HTTP/1.1 connection and returns once the
    /// response head is in (within `limit`).
    pub async fn get(
        addr: SocketAddr,
        host: &str,
        path: &str,
        limit: Duration,
    ) -> anyhow::Result<Streamed> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .uri(path)
            .header("host", host)
            .body(http_body_util::Empty::<Bytes>::new())?;
        let resp = tokio::time::timeout(limit, sender.send_request(req))
            .await
            .context("no response head in time")??;
        Ok(Streamed {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.into_body(),
            got: Vec::new(),
            ended: false,
        })
    }

    /// Reads until the body received so far contains `needle` (or ends),
    /// within `limit`; true if it does.
    pub async fn read_until(&mut self, needle: &str, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.text().contains(needle) && !self.ended {
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) => self.ended = true,
                Ok(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        self.got.extend_from_slice(&d);
                    }
                }
            }
        }
        self.text().contains(needle)
    }

    /// Reads to the end of the body within `limit`; true if it ended.
    pub async fn read_to_end(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.ended {
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) => self.ended = true,
                Ok(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        self.got.extend_from_slice(&d);
                    }
                }
            }
        }
        true
    }

    /// The body so far as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.got).into_owned()
    }

    /// A header as a string ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}
