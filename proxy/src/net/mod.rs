//! Request facts both transports (the lane and Pingora's path) share:
//! the client stream with its head deadline, finding a complete head,
//! hop-by-hop fields, forwarded fields and ids; the uwsgi request packet.

pub mod forwarded;
pub mod head_scan;
pub mod hop;
pub mod spool;
pub mod stream;
pub mod uwsgi;
pub mod wrap;
