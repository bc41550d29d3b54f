//! Duotone: an edge proxy on Pingora with automatic TLS, static files and
//! blue/green deploys. The binary (`main.rs`) is a thin CLI over this library.

pub mod accept;
pub mod access_log;
pub mod admin;
pub mod admin_extras;
pub mod auth;
pub mod client;
pub mod clock;
pub mod conn;
pub mod control;
pub mod demo;
pub mod edge;
pub mod forwarded;
pub mod head_scan;
pub mod health;
pub mod hop;
pub mod lane;
pub mod logging;
pub mod metrics;
pub mod persist;
pub mod proxy_protocol;
pub mod respond;
pub mod server;
pub mod slots;
pub mod static_files;
pub mod tls;
pub mod tunnel;
pub mod views;

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
