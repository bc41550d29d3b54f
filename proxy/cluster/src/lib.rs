//! Several Duotone edge nodes in one cluster, through etcd (never a
//! home-made store): the deploy state every node applies, the ACME account,
//! certificates (private keys sealed with [`seal`]) and challenges, and a
//! lease-held lock so that one node orders a domain's certificate for all.
//!
//! Every key lives under the configured prefix; [`keys::Keys`] names them.
//! [`Cluster`] is the one etcd connection a node shares between its parts.

// House rule: no `unwrap()`/`expect()` on input or I/O outside tests.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod certs;
mod conn;
pub mod keys;
pub mod seal;
pub mod sync;

pub use certs::{EtcdCerts, LOCK_TTL_SECS};
pub use conn::{brief, Cluster, ClusterError};
pub use keys::Keys;
