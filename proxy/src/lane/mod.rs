//! The lane: Duotone's own HTTP/1.1 loop for the common requests, one routed
//! to a service and proxied over a pooled upstream connection, with no task,
//! channel or header map per request: the head is parsed in place, the
//! upstream head written straight from it, and the response relayed.
//!
//! Static files are answered on the lane too. Everything else (redirects,
//! auth, compression, upgrades, chunked or large uploads,
//! HTTP/1.0, bad or oversized heads, ACME challenges) is handed to
//! Pingora's full path together with the bytes already read; Pingora then
//! serves the rest of the connection, exactly as without the lane. HTTP/2
//! streams are served per stream ([`h2`]).

pub(crate) mod client;
mod field;
mod h1;
pub mod h2;
mod local;
mod pump;
pub(crate) mod relay;
pub mod request;
pub mod response;
mod state;
pub(crate) mod timer;
mod upstream;

pub use state::{End, Lane, Outcome};
