//! The command line's side: the admin API client behind `duotone status`,
//! `flip`, `weights`, `reload` and `deploy`, and the demo.

pub mod client;
pub mod demo;
pub mod healthcheck;
