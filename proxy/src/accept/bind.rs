//! Listening sockets: bound at start, or inherited through Pingora's
//! listener hand-over ([`ListenFds`], filled on a graceful upgrade), and
//! registered in that table so a later hand-over passes them on. Each worker
//! then accepts on its own `dup` of a socket ([`per_worker`]).
//!
//! Binding matches Pingora's own listeners: `SO_REUSEADDR`, a backlog of
//! 65535, and up to 30 retries one second apart while the address is in use
//! (e.g. by the process being replaced).

use pingora::server::ListenFds;
use std::io::{Error, ErrorKind, Result};
use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};

/// The listen backlog (Pingora's).
const BACKLOG: u32 = 65535;
/// How often binding an address in use is tried (Pingora's).
const BIND_TRIES: usize = 30;
/// The wait between two tries.
const BIND_STEP: Duration = Duration::from_secs(1);

/// The listening socket for `addr` (`host:port`): the one in `fds` under
/// that name if there is one, else a new one, which is then added to `fds`.
/// The returned socket is in non-blocking mode and registered with no
/// reactor; keep it open for as long as `fds` may be handed over.
pub async fn listen(addr: &str, fds: Option<&ListenFds>) -> Result<StdListener> {
    let inherited = fds.and_then(|fds| fds.lock().get(addr).copied());
    let listener = match inherited {
        Some(fd) => {
            // SAFETY: the hand-over table owns `fd`, a listening socket the
            // old process passed on; it is claimed here (once, under its
            // address) as Pingora's own listeners claim it.
            #[allow(unsafe_code)]
            let socket = unsafe { std::net::TcpStream::from_raw_fd(fd) };
            TcpSocket::from_std_stream(socket)
                .listen(BACKLOG)?
                .into_std()?
        }
        None => {
            let listener = bind(addr).await?;
            if let Some(fds) = fds {
                fds.lock().add(addr.to_string(), listener.as_raw_fd());
            }
            listener
        }
    };
    Ok(listener)
}

/// Binds a new listening socket on `addr`.
async fn bind(addr: &str) -> Result<StdListener> {
    let mut tries = 0;
    loop {
        let sock_addr = resolve(addr)?;
        let socket = match sock_addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(sock_addr) {
            Ok(()) => return socket.listen(BACKLOG)?.into_std(),
            Err(e) if e.kind() == ErrorKind::AddrInUse && tries + 1 < BIND_TRIES => {
                tries += 1;
                tracing::warn!("{addr} is in use, will try again");
                tokio::time::sleep(BIND_STEP).await;
            }
            Err(e) => {
                return Err(Error::new(
                    e.kind(),
                    format!("bind() failed on {addr}: {e}"),
                ));
            }
        }
    }
}

/// The first address `addr` resolves to.
fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()?.next().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("invalid listen address {addr}"),
        )
    })
}

/// A `dup` of `listener` registered with the reactor of the calling
/// thread's runtime: a new connection wakes this worker directly, instead of
/// through the reactor of the thread that bound the socket (a cross-thread
/// wake-up per connection, and no accepts at all while that thread is busy).
pub fn per_worker(listener: &StdListener) -> Result<TcpListener> {
    TcpListener::from_std(listener.try_clone()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::server::Fds;
    use std::sync::Arc;

    /// Pingora's lock around the table (its `Mutex` is not re-exported).
    type Table = <ListenFds as std::ops::Deref>::Target;

    fn table() -> ListenFds {
        Arc::new(Table::new(Fds::new()))
    }

    #[tokio::test]
    async fn a_new_socket_is_registered_for_the_hand_over() {
        let fds = table();
        let listener = listen("127.0.0.1:0", Some(&fds)).await.expect("listen");
        assert_eq!(
            fds.lock().get("127.0.0.1:0").copied(),
            Some(listener.as_raw_fd())
        );
        let mine = per_worker(&listener).expect("dup");
        assert_ne!(mine.as_raw_fd(), listener.as_raw_fd());
        let addr = listener.local_addr().expect("local addr");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (_, peer) = mine.accept().await.expect("accept on the dup");
        assert!(peer.ip().is_loopback());
    }

    #[tokio::test]
    async fn an_inherited_socket_is_used_as_it_is() {
        let old = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = old.local_addr().expect("local addr");
        let fds = table();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(old);
        fds.lock().add("inherited".to_string(), fd);
        let listener = listen("inherited", Some(&fds)).await.expect("listen");
        assert_eq!(listener.as_raw_fd(), fd);
        assert_eq!(listener.local_addr().expect("local addr"), addr);
    }
}
