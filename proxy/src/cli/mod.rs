//! The command line's side: the admin API client behind `duotone status`,
//! `flip`, `weights`, `reload` and `deploy`, the demo, and `upgrade`.

pub mod client;
pub mod demo;
pub mod healthcheck;
pub mod upgrade;
