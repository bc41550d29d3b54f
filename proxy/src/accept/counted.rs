//! A client socket that holds its place in the workers' open-connection
//! counts ([`super::spread::Open`]) until its close begins, and lingers as
//! it closes after an answer ([`super::linger`]).

use super::socket::Socket;
use super::spread::Open;
use async_trait::async_trait;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Peek, Ssl};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// A client socket stream (Pingora's socket stream on HTTPS, where the TLS
/// handshake and the steps before it take one; a bare [`Socket`] on plain
/// HTTP), counted as open on its worker until a shutdown starts or it
/// drops, before the socket closes: a client that has seen its connection
/// close is never counted against a worker afterwards (the next spreading
/// choices would be skewed by a worker descheduled in between).
#[derive(Debug)]
pub struct Counted<S: AsRawFd = L4Stream> {
    /// Declared before `inner`, so it drops before the socket closes.
    counted: Option<Open>,
    inner: S,
    /// Whether the last thing that happened on the connection was a write
    /// (an answer), not input: only then does a close linger.
    answered: bool,
}

impl<S: AsRawFd> Counted<S> {
    /// `inner`, counted as `open` until its close begins.
    pub fn new(inner: S, open: Open) -> Self {
        Counted {
            counted: Some(open),
            inner,
            answered: false,
        }
    }

    /// `inner` as [`Counted::into_parts`] gave it: counted as `open` (if
    /// still), and whether its last event was an answer.
    pub fn from_parts(inner: S, open: Option<Open>, answered: bool) -> Self {
        Counted {
            counted: open,
            inner,
            answered,
        }
    }

    /// The socket stream, its count, and whether the last thing on it was
    /// a write (an answer): what [`Counted::from_parts`] takes back. No
    /// lingering close: the socket stays open.
    #[allow(unsafe_code)]
    pub fn into_parts(self) -> (S, Option<Open>, bool) {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again (ManuallyDrop), so
        // each field is moved out exactly once, and `Counted`'s `Drop` (the
        // lingering close) does not run on the moved-out socket.
        unsafe {
            (
                std::ptr::read(&this.inner),
                std::ptr::read(&this.counted),
                this.answered,
            )
        }
    }

    /// The socket stream (e.g. to read a PROXY header before TLS).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The socket stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsRawFd> Drop for Counted<S> {
    /// A socket closed after an answer, while the client may still be
    /// sending, lingers ([`super::linger`]). One closed while the client
    /// was sending and got no answer (a head that never completed, cut off
    /// by its deadline) closes at once.
    fn drop(&mut self) {
        if self.answered {
            super::linger::on_close(self.inner.as_raw_fd());
        }
    }
}

impl<S: AsRawFd + AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.answered = false;
        }
        res
    }
}

crate::net::wrap::counted_stream!(Counted<L4Stream>, wrote: answered);
crate::net::wrap::counted_stream!(Counted<Socket>, wrote: answered);

impl<S: AsRawFd> Ssl for Counted<S> {}

#[async_trait]
impl<S: AsRawFd + Peek + Send> Peek for Counted<S> {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accept::spread::Load;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn stops_counting_when_the_close_begins() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let load = Load::new(1);
        let (_, open) = load.assign(0);
        let mut counted = Counted::new(L4Stream::from(server), open);
        assert_eq!(load.counts(), [1]);
        AsyncWriteExt::shutdown(&mut counted)
            .await
            .expect("shutdown");
        assert_eq!(load.counts(), [0]);
        drop((counted, client));
    }

    /// A plain connection as the accept loop makes it: a bare socket.
    async fn pair() -> (tokio::net::TcpStream, Counted<Socket>, std::sync::Arc<Load>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, peer) = listener.accept().await.expect("accept");
        let load = Load::new(1);
        let (_, open) = load.assign(0);
        (client, Counted::new(Socket::new(server, peer), open), load)
    }

    /// Closed after an answer while the client still sends (an early 503 to
    /// an upload): the client's writes go on, and it reads the answer whole.
    #[tokio::test]
    async fn lingers_after_an_answer() {
        use tokio::io::AsyncReadExt;
        let (mut client, mut server, _load) = pair().await;
        client
            .write_all(b"POST / HTTP/1.1\r\n")
            .await
            .expect("write");
        let mut head = [0u8; 8];
        server.read_exact(&mut head).await.expect("read");
        server.write_all(b"answer").await.expect("write");
        server.flush().await.expect("flush");
        drop(server);
        for _ in 0..16 {
            client.write_all(&[b'x'; 64 * 1024]).await.expect("write");
        }
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("read");
        assert_eq!(answer, b"answer");
    }

    /// Cut off while the client sends, with no answer (a head past its
    /// deadline): closed at once, so the client's writes fail.
    #[tokio::test]
    async fn does_not_linger_without_an_answer() {
        use tokio::io::AsyncReadExt;
        let (mut client, mut server, _load) = pair().await;
        client
            .write_all(b"GET / HTTP/1.1\r\n")
            .await
            .expect("write");
        let mut head = [0u8; 8];
        server.read_exact(&mut head).await.expect("read");
        drop(server);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while client.write_all(b"X-1: y\r\n").await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "still open");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn stops_counting_when_dropped() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let load = Load::new(2);
        let (_, open) = load.assign(1);
        let counted = Counted::new(L4Stream::from(server), open);
        assert_eq!(load.counts(), [0, 1]);
        drop(counted);
        assert_eq!(load.counts(), [0, 0]);
    }
}
