//! Operations endpoints and records: the admin API, the access log, and
//! process logging, the pid file, the file limit.

pub mod access_log;
pub mod admin;
pub mod admin_extras;
pub mod heap;
pub mod init;
pub mod json;
pub mod logging;
pub mod nofile;
pub mod pidfile;
pub mod views;
