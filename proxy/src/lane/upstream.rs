//! Upstream connections for the lane: TCP or unix socket, kept alive in a
//! pool per worker thread (a connection is only ever used by the thread
//! that opened it, so the pool needs no lock and no hand-off), checked for
//! a close by the upstream before reuse without a system call.
//!
//! A worker keeps as many idle connections as it has needed at once, up to
//! its share of `[limits] max_connections` (an HTTP/1.1 client has at most
//! one request in flight, so that many cover every client), each for the
//! service's `idle_timeout`. A fixed small pool (it was 256 per member)
//! closed most connections after one request whenever more requests were in
//! flight than it held: at 10 000 clients (`benches/load/c10k.py`) about 60 %
//! of requests opened a new connection, which cost a third of the proxy's
//! CPU. HAProxy likewise keeps idle server connections without a fixed cap;
//! nginx keeps what `keepalive N` says. Each worker calls [`sweep`] once a
//! second, which closes the idle connections past their time or closed by the
//! upstream, so a burst's connections do not stay open after it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Idle connections a worker may keep over all members, whatever its share
/// of `max_connections`.
const IDLE_FLOOR: usize = 256;

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
    /// Closed instead of reused from then on (`idle_timeout` after it came
    /// back).
    until: Instant,
}

impl Idle {
    fn reusable(&self, now: Instant) -> bool {
        now < self.until && self.conn.still_idle()
    }
}

thread_local! {
    /// Per member (a handful per process: a list beats a hash map), oldest
    /// first.
    static IDLE: RefCell<Vec<(OwnedKey, VecDeque<Idle>)>> = const { RefCell::new(Vec::new()) };
    /// Worker threads sharing `max_connections` ([`set_workers`]).
    static WORKERS: Cell<usize> = const { Cell::new(1) };
}

/// Tells this thread's pool that `n` workers share the process's
/// connections: call once on each worker thread before it serves.
pub fn set_workers(n: usize) {
    WORKERS.with(|w| w.set(n.max(1)));
}

/// The most idle connections this worker keeps over all members: its share
/// of `max_connections`, at least [`IDLE_FLOOR`].
pub fn idle_cap(max_connections: usize) -> usize {
    (max_connections / WORKERS.with(Cell::get)).max(IDLE_FLOOR)
}

/// An idle connection to `key` that is still open and within its
/// `idle_timeout`, most recently used first. Stale ones are closed.
pub fn take(key: Key<'_>) -> Option<Conn> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let (_, list) = idle.iter_mut().find(|(k, _)| k.is(&key))?;
        let now = Instant::now();
        while let Some(c) = list.pop_back() {
            if c.reusable(now) {
                return Some(c.conn);
            }
        }
        None
    })
}

/// Returns a connection whose last exchange ended cleanly, to be reused
/// within `max_idle`. This worker keeps at most `cap` idle connections
/// ([`idle_cap`]): past it the oldest of the member goes (or this one, when
/// the member has none). Connections past their time are closed on the way.
pub fn give(key: Key<'_>, conn: Conn, max_idle: Duration, cap: usize) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let at = match idle.iter().position(|(k, _)| k.is(&key)) {
            Some(i) => i,
            None => {
                let owned = match key {
                    Key::Inet(a) => OwnedKey::Inet(a),
                    Key::Unix(p) => OwnedKey::Unix(p.to_path_buf()),
                };
                idle.push((owned, VecDeque::new()));
                idle.len() - 1
            }
        };
        let now = Instant::now();
        let total: usize = idle.iter().map(|(_, l)| l.len()).sum();
        let list = &mut idle[at].1;
        let stale = list.iter().take_while(|c| c.until <= now).count();
        list.drain(..stale);
        if total - stale >= cap && list.pop_front().is_none() {
            return;
        }
        list.push_back(Idle {
            conn,
            until: now + max_idle,
        });
    })
}

/// Closes this worker's idle connections that are past their time or that
/// the upstream closed. Returns how many stay.
pub fn sweep() -> usize {
    IDLE.with(|idle| {
        let now = Instant::now();
        let mut idle = idle.borrow_mut();
        idle.iter_mut()
            .map(|(_, list)| {
                list.retain(|c| c.reusable(now));
                list.len()
            })
            .sum()
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
    use tokio::net::TcpListener;

    const LONG: Duration = Duration::from_secs(60);

    /// A connection to `l` and the upstream's end of it.
    async fn pair(l: &TcpListener) -> (Conn, TcpStream) {
        let key = Key::Inet(l.local_addr().unwrap());
        let c = Conn::connect(key).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (c, server)
    }

    /// Waits until the reactor has seen the upstream close `c`.
    async fn seen_closed(c: &Conn) {
        match c {
            Conn::Tcp(s) => s.readable().await.unwrap(),
            Conn::Unix(_) => unreachable!(),
        }
    }

    /// The local port of a pooled or taken connection.
    fn port(c: &Conn) -> u16 {
        match c {
            Conn::Tcp(s) => s.local_addr().unwrap().port(),
            Conn::Unix(_) => unreachable!(),
        }
    }

    #[tokio::test]
    async fn closed_idle_connections_are_not_reused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let key = Key::Inet(l.local_addr().unwrap());
        let (a, mut server_a) = pair(&l).await;
        let (b, server_b) = pair(&l).await;
        assert!(a.still_idle() && b.still_idle());
        // b is closed by the upstream; wait until the reactor has seen it.
        drop(server_b);
        seen_closed(&b).await;
        give(key, a, LONG, 10);
        give(key, b, LONG, 10);
        // b is the newest, but closed: take skips it and returns a.
        let mut c = take(key).expect("the open connection is reused");
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server_a.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert!(take(key).is_none());
        // Idle too long: closed, not reused.
        give(key, c, Duration::ZERO, 10);
        assert!(take(key).is_none());
    }

    #[tokio::test]
    async fn a_worker_keeps_up_to_its_cap_and_drops_the_oldest() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let key = Key::Inet(l.local_addr().unwrap());
        let other_key = Key::Inet(other.local_addr().unwrap());
        let mut servers = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..3 {
            let (c, s) = pair(&l).await;
            ports.push(port(&c));
            servers.push(s);
            give(key, c, LONG, 3);
        }
        assert_eq!(sweep(), 3);
        // A fourth: the oldest (ports[0]) makes room.
        let (d, _sd) = pair(&l).await;
        let d_port = port(&d);
        give(key, d, LONG, 3);
        assert_eq!(sweep(), 3);
        // The cap is over all members: one with none pooled keeps none more.
        let (e, _se) = pair(&other).await;
        give(other_key, e, LONG, 3);
        assert!(take(other_key).is_none());
        // Most recently used first, and the oldest is gone.
        let taken: Vec<u16> = std::iter::from_fn(|| take(key)).map(|c| port(&c)).collect();
        assert_eq!(taken, vec![d_port, ports[2], ports[1]]);
    }

    #[tokio::test]
    async fn the_sweep_closes_what_the_upstream_closed_or_outlived_its_time() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let key = Key::Inet(l.local_addr().unwrap());
        let (open, _keep) = pair(&l).await;
        let (closed, server_closed) = pair(&l).await;
        let (expired, mut server_expired) = pair(&l).await;
        drop(server_closed);
        seen_closed(&closed).await;
        give(key, open, LONG, 10);
        give(key, closed, LONG, 10);
        give(key, expired, Duration::ZERO, 10);
        assert_eq!(sweep(), 1);
        // The expired one was closed by the proxy: its upstream reads EOF.
        let mut rest = Vec::new();
        server_expired.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert!(take(key).is_some());
        assert_eq!(sweep(), 0);
    }

    #[test]
    fn the_cap_is_a_share_of_max_connections_and_never_below_the_floor() {
        set_workers(2);
        assert_eq!(idle_cap(10_000), 5_000);
        assert_eq!(idle_cap(100), IDLE_FLOOR);
        set_workers(0);
        assert_eq!(idle_cap(10_000), 10_000);
    }
}
