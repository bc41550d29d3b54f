//! Operations endpoints and records: the admin API, the access log, and
//! process logging, the pid file.

pub mod access_log;
pub mod admin;
pub mod admin_extras;
pub mod init;
pub mod json;
pub mod logging;
pub mod pidfile;
pub mod views;
