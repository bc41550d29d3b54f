//! Upstream connections for the lane: TCP or unix socket, kept alive in a
//! pool per worker thread (a connection is only ever used by the thread
//! that opened it, so the pool needs no lock and no hand-off), checked for
//! a close by the upstream before reuse without a system call.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Idle connections kept per upstream member and worker thread.
const IDLE_PER_MEMBER: usize = 256;

/// Where an upstream member listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    /// A TCP address.
    Inet(SocketAddr),
    /// A unix socket path.
    Unix(&'a Path),
}

/// A [`Key`] kept in the pool.
#[derive(Debug)]
enum OwnedKey {
    Inet(SocketAddr),
    Unix(PathBuf),
}

impl OwnedKey {
    fn is(&self, key: &Key<'_>) -> bool {
        match (self, key) {
            (OwnedKey::Inet(a), Key::Inet(b)) => a == b,
            (OwnedKey::Unix(a), Key::Unix(b)) => a == b,
            _ => false,
        }
    }
}

/// A connection to an upstream.
#[derive(Debug)]
pub enum Conn {
    /// TCP.
    Tcp(TcpStream),
    /// Unix socket.
    Unix(UnixStream),
}

impl Conn {
    /// Opens a connection to `key`.
    pub async fn connect(key: Key<'_>) -> io::Result<Conn> {
        match key {
            Key::Inet(addr) => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Ok(Conn::Tcp(s))
            }
            Key::Unix(path) => Ok(Conn::Unix(UnixStream::connect(path).await?)),
        }
    }

    /// False when the upstream has closed the connection or sent bytes
    /// nobody asked for while it sat idle. Uses the readiness the reactor
    /// already recorded; reads only when that says there is something.
    fn still_idle(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let ready = match self {
            Conn::Tcp(s) => s.poll_read_ready(&mut cx),
            Conn::Unix(s) => s.poll_read_ready(&mut cx),
        };
        match ready {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                // Maybe stale readiness: a read that would block clears it.
                let mut byte = [0u8; 1];
                let read = match self {
                    Conn::Tcp(s) => s.try_read(&mut byte),
                    Conn::Unix(s) => s.try_read(&mut byte),
                };
                matches!(read, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

thread_local! {
    /// Per member (a handful per process: a list beats a hash map).
    static IDLE: RefCell<Vec<(OwnedKey, Vec<Idle>)>> = const { RefCell::new(Vec::new()) };
}

/// An idle connection to `key` that is still open and has been idle less
/// than `max_idle`, most recently used first. Stale ones are closed.
pub fn take(key: Key<'_>, max_idle: Duration) -> Option<Conn> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let (_, list) = idle.iter_mut().find(|(k, _)| k.is(&key))?;
        while let Some(c) = list.pop() {
            if c.since.elapsed() < max_idle && c.conn.still_idle() {
                return Some(c.conn);
            }
        }
        None
    })
}

/// Returns a connection whose last exchange ended cleanly. Connections
/// idle longer than `max_idle` are closed on the way.
pub fn give(key: Key<'_>, conn: Conn, max_idle: Duration) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let at = match idle.iter().position(|(k, _)| k.is(&key)) {
            Some(i) => i,
            None => {
                let owned = match key {
                    Key::Inet(a) => OwnedKey::Inet(a),
                    Key::Unix(p) => OwnedKey::Unix(p.to_path_buf()),
                };
                idle.push((owned, Vec::new()));
                idle.len() - 1
            }
        };
        let list = &mut idle[at].1;
        let stale = list
            .iter()
            .take_while(|c| c.since.elapsed() >= max_idle)
            .count();
        list.drain(..stale);
        if list.len() >= IDLE_PER_MEMBER {
            list.remove(0);
        }
        list.push(Idle {
            conn,
            since: Instant::now(),
        });
    })
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn closed_idle_connections_are_not_reused() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let key = Key::Inet(l.local_addr().unwrap());
        let a = Conn::connect(key).await.unwrap();
        let (mut server_a, _) = l.accept().await.unwrap();
        let b = Conn::connect(key).await.unwrap();
        let (server_b, _) = l.accept().await.unwrap();
        let long = Duration::from_secs(60);
        assert!(a.still_idle() && b.still_idle());
        // b is closed by the upstream; wait until the reactor has seen it.
        drop(server_b);
        match &b {
            Conn::Tcp(s) => s.readable().await.unwrap(),
            Conn::Unix(_) => unreachable!(),
        }
        give(key, a, long);
        give(key, b, long);
        // b is the newest, but closed: take skips it and returns a.
        let mut c = take(key, long).expect("the open connection is reused");
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server_a.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert!(take(key, long).is_none());
        // Idle too long: closed, not reused.
        give(key, c, Duration::ZERO);
        assert!(take(key, Duration::ZERO).is_none());
    }
}
