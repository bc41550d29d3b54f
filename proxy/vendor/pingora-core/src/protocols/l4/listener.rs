// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! Listeners

use std::io;
#[cfg(unix)]
use std::os::unix::io::AsRawFd;
#[cfg(windows)]
use std::os::windows::io::AsRawSocket;
use tokio::net::TcpListener;
#[cfg(unix)]
use tokio::net::UnixListener;

use crate::protocols::digest::{GetSocketDigest, SocketDigest};
use crate::protocols::l4::stream::Stream;

/// The type for generic listener for both TCP and Unix domain socket
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(UnixListener),
}

impl From<TcpListener> for Listener {
    fn from(s: TcpListener) -> Self {
        Self::Tcp(s)
    }
}

#[cfg(unix)]
impl From<UnixListener> for Listener {
    fn from(s: UnixListener) -> Self {
        Self::Unix(s)
    }
}

#[cfg(unix)]
impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> std::os::unix::io::RawFd {
        match &self {
            Self::Tcp(l) => l.as_raw_fd(),
            Self::Unix(l) => l.as_raw_fd(),
        }
    }
}

#[cfg(windows)]
impl AsRawSocket for Listener {
    fn as_raw_socket(&self) -> std::os::windows::io::RawSocket {
        match &self {
            Self::Tcp(l) => l.as_raw_socket(),
        }
    }
}

impl Listener {
    /// Return the local address this listener is bound to.
    ///
    /// For TCP listeners this is the resolved address (including the
    /// OS-assigned port when the listener was bound to port 0).
    /// Returns `None` for non-TCP listeners (e.g. Unix domain sockets).
    #[cfg(test)]
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Self::Tcp(l) => l.local_addr().ok(),
            #[cfg(unix)]
            Self::Unix(_) => None,
        }
    }

    /// Duotone patch: another handle on the same listening socket (a `dup`),
    /// registered with the reactor of the runtime this is called on, so the
    /// task accepting on it is woken by its own thread's reactor.
    #[cfg(unix)]
    pub fn dup_here(&self) -> io::Result<Listener> {
        use std::os::fd::AsFd;
        match self {
            Self::Tcp(l) => {
                let std = std::net::TcpListener::from(l.as_fd().try_clone_to_owned()?);
                Ok(Self::Tcp(TcpListener::from_std(std)?))
            }
            Self::Unix(l) => {
                let std = std::os::unix::net::UnixListener::from(l.as_fd().try_clone_to_owned()?);
                Ok(Self::Unix(UnixListener::from_std(std)?))
            }
        }
    }

    /// Accept a connection from the listening endpoint
    pub async fn accept(&self) -> io::Result<Stream> {
        self.accept_raw().await.map(Accepted::into_stream)
    }

    /// Duotone patch: accept a connection without wrapping it yet, so the
    /// caller can still move it to another worker ([`Accepted::into_portable`]).
    pub async fn accept_raw(&self) -> io::Result<Accepted> {
        match &self {
            Self::Tcp(l) => l.accept().await.map(|(s, a)| Accepted::Tcp(s, a)),
            #[cfg(unix)]
            Self::Unix(l) => l.accept().await.map(|(s, a)| Accepted::Unix(s, a)),
        }
    }
}

/// Duotone patch: an accepted connection, registered with the reactor of the
/// thread that accepted it, not yet wrapped in a [`Stream`].
#[derive(Debug)]
pub enum Accepted {
    /// A TCP connection and its peer.
    Tcp(tokio::net::TcpStream, std::net::SocketAddr),
    /// A unix-socket connection and its peer.
    #[cfg(unix)]
    Unix(tokio::net::UnixStream, tokio::net::unix::SocketAddr),
}

impl Accepted {
    /// The [`Stream`] with its socket digest (peer address) filled in.
    pub fn into_stream(self) -> Stream {
        match self {
            Self::Tcp(stream, peer_addr) => {
                let mut s: Stream = stream.into();
                #[cfg(unix)]
                let digest = SocketDigest::from_raw_fd(s.as_raw_fd());
                #[cfg(windows)]
                let digest = SocketDigest::from_raw_socket(s.as_raw_socket());
                digest
                    .peer_addr
                    .set(Some(peer_addr.into()))
                    .expect("newly created OnceCell must be empty");
                s.set_socket_digest(digest);
                // TODO: if listening on a specific bind address, we could save
                // an extra syscall looking up the local_addr later if we can pass
                // and init it in the socket digest here
                s
            }
            #[cfg(unix)]
            Self::Unix(stream, peer_addr) => {
                let mut s: Stream = stream.into();
                let digest = SocketDigest::from_raw_fd(s.as_raw_fd());
                // note: if unnamed/abstract UDS, it will be `None`
                // (see TryFrom<tokio::net::unix::SocketAddr>)
                let addr = peer_addr.try_into().ok();
                digest
                    .peer_addr
                    .set(addr)
                    .expect("newly created OnceCell must be empty");
                s.set_socket_digest(digest);
                s
            }
        }
    }

    /// Deregisters the connection from this thread's reactor so another
    /// worker can take it ([`Portable::register_here`]).
    pub fn into_portable(self) -> io::Result<Portable> {
        match self {
            Self::Tcp(s, a) => Ok(Portable::Tcp(s.into_std()?, a)),
            #[cfg(unix)]
            Self::Unix(s, a) => Ok(Portable::Unix(s.into_std()?, a)),
        }
    }
}

/// Duotone patch: an accepted connection registered with no reactor, on its
/// way to another worker.
#[derive(Debug)]
pub enum Portable {
    /// A TCP connection and its peer.
    Tcp(std::net::TcpStream, std::net::SocketAddr),
    /// A unix-socket connection and its peer.
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream, tokio::net::unix::SocketAddr),
}

impl Portable {
    /// Registers the connection with the reactor of the calling thread's
    /// runtime.
    pub fn register_here(self) -> io::Result<Accepted> {
        match self {
            Self::Tcp(s, a) => Ok(Accepted::Tcp(tokio::net::TcpStream::from_std(s)?, a)),
            #[cfg(unix)]
            Self::Unix(s, a) => Ok(Accepted::Unix(tokio::net::UnixStream::from_std(s)?, a)),
        }
    }
}
