//! Duotone's accept loop, as a Pingora service of its own
//! ([`AcceptService`]): it binds (or inherits, on Pingora's listener
//! hand-over) the listening sockets, runs one accept loop per worker thread
//! on that worker, each on its own `dup` of the socket registered with that
//! worker's reactor, spreads accepted connections so the workers stay within
//! one open connection of each other ([`spread`]), runs the steps before
//! HTTP (PROXY header, TLS-ALPN-01 validations, the TLS handshake) and hands
//! each connection to Pingora's session handling (a [`ServerApp`]).
//!
//! Each worker is a thread with its own single-threaded Tokio runtime, so a
//! connection, and everything Pingora spawns for it (an HTTP/2 stream, the
//! idle watcher of a pooled upstream connection), stays on the thread that
//! serves it.
//!
//! [`ServerApp`]: pingora::apps::ServerApp

pub mod bind;
pub mod conn;
mod counted;
mod endpoint;
mod linger;
pub mod park;
pub mod proxy_protocol;
mod service;
mod socket;
pub mod spread;
mod worker;

pub use counted::Counted;
pub use endpoint::{Endpoint, Tls, HANDSHAKE_LOG_TARGET};
pub use service::AcceptService;
pub use socket::Socket;
