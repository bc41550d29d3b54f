//! Lingering close, as nginx's `lingering_close`: a client socket closed
//! while the client's input is still waiting unread, or arrives after the
//! close (an early answer to an upload the client is still sending, a
//! `connection: close` response with a pipelined request behind it), makes
//! the kernel reset the connection, and a reset can destroy the answer
//! before the client has read it. Instead, the write side is shut down (the
//! client sees the answer, then the end), and the input is read and thrown
//! away until the client closes, for at most [`IDLE`] without input and
//! [`TOTAL`] in all; then the socket closes.
//!
//! The close cannot know whether the client is still sending (its next
//! bytes may be on the way while none wait), so a close after an answer
//! lingers whenever the client has not closed first ([`super::Counted`]
//! tells an answer: the last thing on the connection was a write). A
//! client that closed first (the common case) closes at once, as before,
//! after one `recv` to find out; so does a connection that got no answer
//! (a head cut off by its deadline: as nginx, no lingering for it). A
//! lingering socket holds no buffer: its input is read into one scratch
//! buffer per worker thread.

use std::cell::RefCell;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// How long a lingering socket waits for more input before it closes.
pub const IDLE: Duration = Duration::from_secs(5);

/// How long a socket lingers at most.
pub const TOTAL: Duration = Duration::from_secs(30);

/// The scratch buffer's size.
const SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    /// What lingering sockets read is read here, and thrown away.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Called as the client socket `fd` is about to close (it is still open):
/// unless the client closed it first, keeps the connection open in a task of its
/// own on the current runtime that lingers as the module says. Outside a
/// runtime, or when the socket cannot be copied, nothing changes.
pub fn on_close(fd: RawFd) {
    if !client_open(fd) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Some(copy) = copy_fd(fd) else {
        return;
    };
    let std = std::net::TcpStream::from(copy);
    let Ok(tcp) = tokio::net::TcpStream::from_std(std) else {
        return;
    };
    drop(runtime.spawn(linger(tcp)));
}

/// Shuts the write side of `tcp` and reads its input away until the client
/// closes or the time limits pass.
pub async fn linger(mut tcp: tokio::net::TcpStream) {
    // Everything written before was flushed as the stream dropped; the
    // client now sees the end of the answer. (A socket already shut for
    // writing, or one the client reset, fails here, and lingers only until
    // the reads below end.)
    let _ = tcp.shutdown().await;
    let end = Instant::now() + TOTAL;
    loop {
        let wait = IDLE.min(end.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, tcp.readable()).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        let read = SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            if s.is_empty() {
                s.resize(SCRATCH_BYTES, 0);
            }
            tcp.try_read(&mut s)
        });
        match read {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Whether the client may still send on the socket `fd`: input is waiting,
/// or none yet (not the client's end of input, not an error).
fn client_open(fd: RawFd) -> bool {
    match peek(fd) {
        Ok(n) => n > 0,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    }
}

/// Peeks at the socket `fd` without blocking: how many bytes (0 or 1) of
/// input wait, 0 also at the end of input.
#[allow(unsafe_code)]
fn peek(fd: RawFd) -> std::io::Result<usize> {
    let mut byte = 0u8;
    // SAFETY: `fd` is an open socket owned by the caller's stream for this
    // call; `byte` is valid for the one byte `recv` may write. A peek reads
    // nothing away.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

/// A new descriptor of the socket `fd` (the socket stays open while it
/// does, after `fd` is closed).
#[allow(unsafe_code)]
fn copy_fd(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: `fd` is an open socket owned by the caller's stream, which
    // outlives this call; the borrow ends within it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use tokio::io::AsyncReadExt;

    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    /// An answer written just before a close with unread input reaches the
    /// client whole, followed by a clean end (no reset), however much the
    /// client still sends.
    #[tokio::test]
    async fn an_answer_before_a_close_with_unread_input_is_not_reset() {
        let (mut client, mut server) = pair().await;
        client.write_all(&[b'x'; 64 * 1024]).await.expect("write");
        // The input is in the server's socket buffer.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !has_input(&server) {
            assert!(Instant::now() < deadline, "no input arrived");
            tokio::task::yield_now().await;
        }
        server
            .write_all(b"HTTP/1.1 503 x\r\n\r\n")
            .await
            .expect("write");
        on_close(server.as_raw_fd());
        drop(server);
        // The client goes on sending, then reads the answer.
        for _ in 0..16 {
            client.write_all(&[b'y'; 64 * 1024]).await.expect("write");
        }
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("read");
        assert_eq!(answer, b"HTTP/1.1 503 x\r\n\r\n");
    }

    fn has_input(s: &tokio::net::TcpStream) -> bool {
        peek(s.as_raw_fd()).is_ok_and(|n| n > 0)
    }

    /// A client that closed first is closed at once.
    #[tokio::test]
    async fn a_socket_the_client_closed_is_not_kept() {
        let (client, server) = pair().await;
        drop(client);
        let deadline = Instant::now() + Duration::from_secs(5);
        while client_open(server.as_raw_fd()) {
            assert!(Instant::now() < deadline, "the end did not arrive");
            tokio::task::yield_now().await;
        }
    }

    /// A close with no input waiting still lingers: the client's next bytes
    /// may be on the way. It ends when the client closes.
    #[tokio::test]
    async fn a_close_before_the_client_sends_more_is_not_reset() {
        let (mut client, server) = pair().await;
        assert!(client_open(server.as_raw_fd()));
        on_close(server.as_raw_fd());
        drop(server);
        tokio::task::yield_now().await;
        for _ in 0..16 {
            client.write_all(&[b'y'; 64 * 1024]).await.expect("write");
        }
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("read");
        assert!(rest.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_let_go_after_the_idle_time() {
        let (mut client, server) = pair().await;
        client.write_all(b"unread").await.expect("write");
        let start = Instant::now();
        // Wait for the bytes with real time while the clock is paused.
        while !has_input(&server) {
            tokio::task::yield_now().await;
        }
        let server = server.into_std().expect("into std");
        let server = tokio::net::TcpStream::from_std(server).expect("from std");
        linger(server).await;
        let took = start.elapsed();
        assert!(
            took >= IDLE && took < IDLE + Duration::from_secs(1),
            "{took:?}"
        );
    }
}
