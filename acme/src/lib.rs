//! Duotone's certificate layer: ACME (via `rustls-acme`), static certificate
//! files, self-signed fallbacks, SNI resolution and the Pingora listener glue.
//!
//! The proxy builds one [`CertStore`] from its config, hands
//! [`CertStore::resolver`] (or [`listener::add_https`]) to its HTTPS listener,
//! answers `/.well-known/acme-challenge/{token}` on the plain listener with
//! [`CertStore::http01_key_auth`], and spawns [`CertStore::run`].
//!
//! In cluster mode ([`CertStore::set_shared`]) certificates, the ACME
//! account, order locks and challenges live in a [`SharedCerts`] store
//! (etcd, implemented by the `cluster` crate): one node orders for all, and
//! any node answers challenges ([`CertStore::http01_answer`], the
//! TLS-ALPN-01 hook).
//!
//! All rustls objects built here use [`tls::provider`] (aws-lc-rs) explicitly.

// House rule: no `unwrap()`/`expect()` on input or I/O outside tests.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod cache;
mod certs;
mod challenges;
mod driver;
mod entry;
mod error;
pub mod listener;
mod resolver;
pub mod shared;
mod shared_driver;
mod sni;
mod spec;
mod store;
pub mod tls;

pub use certs::CertMeta;
pub use error::CertError;
pub use shared::{ChallengeId, HeldLock, SharedCerts, SharedError, SharedEvent};
pub use sni::{normalize_host, HostIndex};
pub use spec::{AcmeSettings, CertSource, CertSpec, Challenge};
pub use store::{CertInfo, CertStore, ClusterAcme};
pub use tls::{default_tls_versions, server_config};
