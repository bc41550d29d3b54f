//! Where a proxied response goes ([`Client`]): an HTTP/1.1 connection
//! ([`H1`]), an HTTP/2 stream (`super::h2`) or a Pingora session
//! (`crate::edge::exchange`); and the short answers for failures.

use super::response::{self, HeadOut};
use super::timer::Timer;
use crate::net::stream::HeadDeadline;
use tokio::io::AsyncWriteExt;

/// Where a proxied response goes: an HTTP/1.1 connection or an HTTP/2
/// stream. Each applies its own client write timeout.
pub trait Client {
    /// The response head as this client's protocol writes it.
    type Head: HeadOut + Default;
    /// Chunked upstream bodies are passed on decoded (HTTP/2 has its own
    /// framing) rather than verbatim.
    const DECHUNK: bool;
    /// Sends `head` followed by the first `body` bytes; `end`: the response
    /// is complete. False when the client is gone.
    async fn send_head(&mut self, head: &mut Self::Head, body: &[u8], end: bool) -> bool;
    /// Relays an interim (1xx) response head, as the upstream sent it
    /// (RFC 9110 §15.2); false when the client is gone.
    async fn interim(&mut self, head: &[u8]) -> bool;
    /// Sends more of the body; `end`: the response is complete.
    async fn send_body(&mut self, body: &[u8], end: bool) -> bool;
    /// Answers with a short 502 or 504 (or the client's 400, 408, 413)
    /// before anything else was sent.
    async fn fail(&mut self, status: u16, head_method: bool);
    /// The next piece of a request body still coming from the client (an
    /// upload streamed to the upstream as it arrives), None at its end.
    /// Err: the status to answer (408: it stalled; 400: malformed). The
    /// lane's clients have every body whole before the exchange.
    async fn read_body(&mut self) -> Result<Option<bytes::Bytes>, u16> {
        Ok(None)
    }
    /// The timer for waits on the upstream during this exchange.
    fn upstream_timer(&mut self) -> &mut Timer;
}

/// An HTTP/1.1 client connection.
pub struct H1<'a> {
    /// The connection.
    pub io: &'a mut HeadDeadline,
    /// Client write timeout.
    pub timeout: std::time::Duration,
    /// The connection's timer for client waits.
    pub timer: &'a mut Timer,
    /// The connection's timer for upstream waits.
    pub upstream_timer: &'a mut Timer,
}

impl Client for H1<'_> {
    type Head = Vec<u8>;
    const DECHUNK: bool = false;

    async fn send_head(&mut self, head: &mut Vec<u8>, body: &[u8], end: bool) -> bool {
        head.extend_from_slice(body);
        self.send_body(head, end).await
    }

    async fn interim(&mut self, head: &[u8]) -> bool {
        self.send_body(head, false).await
    }

    async fn send_body(&mut self, body: &[u8], _end: bool) -> bool {
        let timer = &mut *self.timer;
        if !matches!(
            timer.within(self.timeout, self.io.write_all(body)).await,
            Ok(Ok(()))
        ) {
            return false;
        }
        // TLS (and buffered) streams may hold the tail until flushed, and
        // what the upstream sent goes on now (event streams: each event).
        matches!(
            timer.within(self.timeout, self.io.flush()).await,
            Ok(Ok(()))
        )
    }

    async fn fail(&mut self, status: u16, head_method: bool) {
        fail(self.io, head_method, status, self.timeout).await;
    }

    fn upstream_timer(&mut self) -> &mut Timer {
        self.upstream_timer
    }
}

/// The reason phrase and body text of a 502, 504 or 408 answer.
pub fn failure(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("Bad Request", "bad request body\n"),
        408 => (
            "Request Timeout",
            "request timeout: the request body did not arrive in time\n",
        ),
        413 => ("Content Too Large", "request body too large\n"),
        504 => (
            "Gateway Timeout",
            "gateway timeout: the upstream did not answer in time\n",
        ),
        _ => ("Bad Gateway", "bad gateway: the upstream failed\n"),
    }
}

/// Answers the client with a short error (the connection then closes, as
/// on Pingora's path); returns the status.
pub async fn fail(
    io: &mut HeadDeadline,
    head_method: bool,
    status: u16,
    timeout: std::time::Duration,
) {
    let (reason, body) = failure(status);
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
    super::request::header(&mut out, b"content-type", b"text/plain; charset=utf-8");
    super::request::header(
        &mut out,
        b"content-length",
        body.len().to_string().as_bytes(),
    );
    super::request::header(&mut out, b"cache-control", b"no-store");
    response::date(&mut out);
    super::request::header(&mut out, b"connection", b"close");
    out.extend_from_slice(b"\r\n");
    if !head_method {
        out.extend_from_slice(body.as_bytes());
    }
    let _ = tokio::time::timeout(timeout, async {
        io.write_all(&out).await?;
        io.flush().await
    })
    .await;
}
