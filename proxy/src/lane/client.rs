//! Where a proxied response goes ([`Client`]): an HTTP/1.1 connection
//! ([`H1`]), an HTTP/2 stream (`super::h2`) or a Pingora session
//! (`crate::edge::exchange`); and the short answers for failures.

use super::response::{self, HeadOut};
use super::timer::Timer;
use crate::net::stream::HeadDeadline;
use tokio::io::AsyncWriteExt;

/// A short answer written instead of a response: its status, the site's
/// page for it (else a line of text) and, for a 503 that will pass (a
/// pause, maintenance), when to retry.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    /// The status.
    pub status: u16,
    /// Seconds for a `Retry-After` field.
    pub retry_after: Option<u64>,
    /// The site's page for this status, written instead of the text.
    pub page: Option<&'a Page>,
}

impl Failure<'_> {
    /// A failure with `status`, its text, and no `Retry-After`.
    pub const fn status(status: u16) -> Failure<'static> {
        Failure {
            status,
            retry_after: None,
            page: None,
        }
    }

    /// The body and its content type: the page, or the status's text.
    pub fn body(&self) -> (&[u8], &str) {
        match self.page {
            Some(p) => (&p.body, &p.content_type),
            None => (failure(self.status).1.as_bytes(), TEXT),
        }
    }
}

/// The content type of the edge's own short answers.
pub const TEXT: &str = "text/plain; charset=utf-8";

/// A page the edge serves for one of its own answers (a site's error
/// page, a maintenance page), read from a file when the snapshot is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The page's bytes.
    pub body: bytes::Bytes,
    /// Its content type.
    pub content_type: String,
}

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
    /// Answers with a short 502, 503 or 504 (or the client's 400, 408,
    /// 413) before anything else was sent: the site's page for it when
    /// there is one, else a line of text.
    async fn fail(&mut self, failure: &Failure<'_>, head_method: bool);
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

    async fn fail(&mut self, failure: &Failure<'_>, head_method: bool) {
        fail(self.io, head_method, failure, self.timeout).await;
    }

    fn upstream_timer(&mut self) -> &mut Timer {
        self.upstream_timer
    }
}

/// The reason phrase and body text of a 502, 503, 504 or 408 answer.
pub fn failure(status: u16) -> (&'static str, &'static str) {
    match status {
        503 => (
            "Service Unavailable",
            "service unavailable: try again shortly\n",
        ),
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
    f: &Failure<'_>,
    timeout: std::time::Duration,
) {
    let status = f.status;
    let (reason, _) = failure(status);
    let (body, content_type) = f.body();
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
    super::request::header(&mut out, b"content-type", content_type.as_bytes());
    super::request::header(
        &mut out,
        b"content-length",
        body.len().to_string().as_bytes(),
    );
    super::request::header(&mut out, b"cache-control", b"no-store");
    if let Some(secs) = f.retry_after {
        super::request::header(&mut out, b"retry-after", secs.to_string().as_bytes());
    }
    response::date(&mut out);
    super::request::header(&mut out, b"connection", b"close");
    out.extend_from_slice(b"\r\n");
    if !head_method {
        out.extend_from_slice(body);
    }
    let _ = tokio::time::timeout(timeout, async {
        io.write_all(&out).await?;
        io.flush().await
    })
    .await;
}
