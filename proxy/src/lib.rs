//! Duotone: an edge proxy on Pingora with automatic TLS, static files and
//! blue/green deploys. The binary (`main.rs`) is a thin CLI over this library.
//!
//! Layout, from the wire inwards:
//! - [`server`]: start-up wiring (Pingora server, listeners, services).
//! - [`accept`]: the listeners' accept loop (a Pingora service of Duotone's own): worker threads,
//!   balanced hand-off, PROXY protocol and TLS handshakes, then each connection's dispatch
//!   between the lane and Pingora's path ([`accept::conn`]).
//! - [`lane`]: the fast path for common HTTP/1.1 and HTTP/2 requests.
//! - [`edge`]: Pingora's full request path (`ProxyHttp`), static files, tunnels.
//! - [`net`]: pieces both transports share (head scanning, hop-by-hop and forwarded fields).
//! - [`record`]: what a finished request reports (health, metrics, access log), for both.
//! - [`control`]: the control plane: routing snapshot, live colors, health, persistence,
//!   certificates.
//! - [`ops`]: admin API, access log, logging; [`metrics`]: Prometheus metrics.
//! - [`cli`]: the admin API client behind the CLI, and the demo.

// House rule: no `unwrap()`/`expect()` on input or I/O outside tests.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod accept;
pub mod cli;
pub mod clock;
pub mod control;
pub mod edge;
pub mod lane;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod record;
pub mod server;

#[cfg(test)]
mod layout;
/// How the CLI reaches the admin API.
#[derive(clap::Args, Clone, Debug)]
pub struct AdminArgs {
    /// Admin API base URL.
    #[arg(long, env = "DUOTONE_ADMIN", default_value = "http://127.0.0.1:9090")]
    pub admin: String,
    /// Admin bearer token.
    #[arg(long, env = "DUOTONE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}
