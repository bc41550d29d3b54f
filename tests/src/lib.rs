//! Test harness for end-to-end tests: starts the real `duotone` binary and
//! real upstream servers on loopback, and talks to them over real sockets.

pub mod admin;
pub mod apps;
pub mod client;
pub mod h2c;
pub mod handover;
pub mod held;
pub mod load;
pub mod proxy;
pub mod recorder;
pub mod scripted;
pub mod transport;
pub mod upstream;

use std::time::{Duration, Instant};

/// Polls `f` until it returns `Some` or `limit` passes.
pub async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    free_port_at(std::net::Ipv4Addr::LOCALHOST)
}

/// A port free on the loopback address `ip` at the time of the call.
pub fn free_port_at(ip: std::net::Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}
/// A loopback address that accepts no connection: a listener whose accept
/// queue is full, so further SYNs are dropped and connects hang. Keep the
/// returned guard alive while it is used.
pub fn blackhole() -> (
    std::net::SocketAddr,
    Vec<std::net::TcpStream>,
    tokio::net::TcpListener,
) {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = sock.local_addr().expect("local addr");
    let listener = sock.listen(1).expect("listen");
    let mut fill = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)) {
            Ok(s) => fill.push(s),
            Err(_) => break,
        }
    }
    (addr, fill, listener)
}
pub mod bluegreen;
pub mod cluster;
pub mod docker;
pub mod etcd;
pub mod pebble;
pub mod tls;
