//! Duotone's routing model: the config file's shape, its validation, and the
//! compiled [`RouteTable`] that the request path reads through an `ArcSwap`.
//!
//! Everything here is pure: no sockets, no files. Data flows one way:
//! TOML text → [`load`] (env expansion, parse, validate) → [`Config`] →
//! [`RouteTable::compile`] → shared by the proxy.

// House rule: no `unwrap()`/`expect()` on input or I/O outside tests.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod canary;
pub mod client;
pub mod config;
pub mod diag;
pub mod duration;
pub mod env;
pub mod forwarded;
pub mod headers;
pub mod host;
pub mod load;
pub mod maintenance;
pub mod nofile;
pub mod path;
pub mod pause;
pub mod policy;
pub mod pool;
pub mod proxy_protocol;
pub mod raw;
pub mod replay;
pub mod request;
pub mod state;
pub mod table;
pub mod validate;
mod validate_cluster;
pub mod watch;

pub use config::Config;
pub use diag::KeyPath;
pub use diag::{Diagnostic, Diagnostics};
pub use load::{load, load_checked, load_with_stand_ins, load_with_warnings, stand_in};
pub use pool::{
    Closer, Color, ColorStats, HealthState, InFlight, Member, MemberAddr, MemberHealth, Pool,
    Protocol, Service,
};
pub use state::LiveState;
pub use table::{Action, Route, RouteTable, Site, Vitals};
pub use validate::Problem;
