//! Certificates shared by several edge nodes: the [`SharedCerts`] store
//! (implemented over etcd by the `cluster` crate, so this crate does not
//! depend on etcd), the lock one node holds while it orders, and the
//! challenges every node answers.

use std::fmt;

use async_trait::async_trait;
use base64::prelude::*;

/// A pending ACME challenge, as every node looks it up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChallengeId {
    /// HTTP-01: the token of `/.well-known/acme-challenge/{token}`.
    Http01(String),
    /// TLS-ALPN-01: the domain the CA dials with ALPN `acme-tls/1`.
    TlsAlpn01(String),
}

impl ChallengeId {
    /// The name under the store's challenge prefix: the token, or
    /// `tls-alpn-01/{domain}`.
    pub fn key(&self) -> String {
        match self {
            ChallengeId::Http01(token) => token.clone(),
            ChallengeId::TlsAlpn01(domain) => format!("tls-alpn-01/{domain}"),
        }
    }

    /// The inverse of [`ChallengeId::key`].
    pub fn from_key(key: &str) -> Option<ChallengeId> {
        match key.strip_prefix("tls-alpn-01/") {
            Some(domain) if !domain.is_empty() => Some(ChallengeId::TlsAlpn01(domain.to_string())),
            Some(_) => None,
            None if !key.is_empty() && !key.contains('/') => {
                Some(ChallengeId::Http01(key.to_string()))
            }
            None => None,
        }
    }
}

/// Why the shared store failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SharedError {
    /// The store cannot be reached or has no quorum: nodes keep serving
    /// what they have, and orders wait.
    #[error("shared store unavailable: {0}")]
    Unavailable(String),
    /// A stored value cannot be used (another `secret_key`, altered data).
    #[error("shared store value {key}: {reason}")]
    Corrupt {
        /// The value's name.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A private key cannot be stored because no key seals it.
    #[error("no secret_key: private keys are never stored in clear")]
    NoSecretKey,
}

/// What a subscriber hears from the store, from its one watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedEvent {
    /// The store is reachable again, and every stored certificate and
    /// challenge is about to be sent again (a resync).
    Up,
    /// The store is unreachable (the watch broke).
    Down,
    /// A certificate was stored (key PEM followed by the chain, opened).
    Cert {
        /// Its id ([`cert_id`]).
        id: String,
        /// Key and chain PEM.
        pem: Vec<u8>,
    },
    /// A challenge was published.
    Challenge {
        /// Which one.
        id: ChallengeId,
        /// Its key authorization.
        key_auth: String,
    },
    /// A challenge was withdrawn (or its lease expired).
    ChallengeGone(ChallengeId),
}

/// A held order lock; the store releases it when this is dropped, and a
/// dead holder's lease lets it go after the lease's time to live.
pub struct HeldLock {
    /// The lease the lock (and the challenges published under it) live on.
    pub lease: i64,
    /// Released on drop (e.g. stops keep-alives and revokes the lease).
    pub guard: Box<dyn Send + Sync>,
}

impl fmt::Debug for HeldLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldLock")
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// Where the nodes of a cluster share ACME accounts, certificates, order
/// locks and challenges. Private keys are sealed by the implementation.
#[async_trait]
pub trait SharedCerts: Send + Sync + 'static {
    /// The ACME account key (PKCS#8) stored under `id`.
    async fn get_account(&self, id: &str) -> Result<Option<Vec<u8>>, SharedError>;
    /// Stores `pkcs8` under `id` unless a key is there already; returns the
    /// key stored in the end (the first writer's).
    async fn put_account(&self, id: &str, pkcs8: &[u8]) -> Result<Vec<u8>, SharedError>;
    /// The certificate `id` (key PEM then chain).
    async fn get_cert(&self, id: &str) -> Result<Option<Vec<u8>>, SharedError>;
    /// Stores certificate `id` (key PEM then chain).
    async fn put_cert(&self, id: &str, pem: &[u8]) -> Result<(), SharedError>;
    /// Waits until this node holds the order lock of `id`.
    async fn lock(&self, id: &str) -> Result<HeldLock, SharedError>;
    /// Publishes a challenge under `lock`'s lease.
    async fn put_challenge(
        &self,
        lock: &HeldLock,
        id: &ChallengeId,
        key_auth: &str,
    ) -> Result<(), SharedError>;
    /// Reads a challenge from the store itself (a view miss).
    async fn get_challenge(&self, id: &ChallengeId) -> Result<Option<String>, SharedError>;
    /// Withdraws a challenge.
    async fn delete_challenge(&self, id: &ChallengeId) -> Result<(), SharedError>;
    /// Events of the store's watch, starting with a resync ([`SharedEvent::Up`]
    /// and everything stored) once the store is reachable.
    fn subscribe(&self) -> tokio::sync::mpsc::UnboundedReceiver<SharedEvent>;
}

/// The store id of the certificate for `domains` from `directory_url`.
pub fn cert_id(domains: &[String], directory_url: &str) -> String {
    let first = domains.first().map(String::as_str).unwrap_or("none");
    format!("{first}-{}", short_hash(domains, directory_url))
}

/// The store id of the ACME account for `contact` at `directory_url`.
pub fn account_id(contact: &[String], directory_url: &str) -> String {
    short_hash(contact, directory_url)
}

fn short_hash(parts: &[String], directory_url: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    ctx.update(directory_url.as_bytes());
    let digest = ctx.finish();
    BASE64_URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_keys_round_trip() {
        for id in [
            ChallengeId::Http01("abc_-1".into()),
            ChallengeId::TlsAlpn01("a.test".into()),
        ] {
            assert_eq!(ChallengeId::from_key(&id.key()), Some(id));
        }
        assert_eq!(ChallengeId::from_key("x/y"), None);
        assert_eq!(ChallengeId::from_key("tls-alpn-01/"), None);
    }

    #[test]
    fn ids_are_stable_and_name_the_domain() {
        let d = vec!["a.test".to_string(), "www.a.test".to_string()];
        let id = cert_id(&d, "https://x/dir");
        assert!(id.starts_with("a.test-"), "{id}");
        assert_eq!(id, cert_id(&d, "https://x/dir"));
        assert_ne!(id, cert_id(&d, "https://y/dir"));
        assert_eq!(account_id(&[], "https://x/dir").len(), 16);
    }
}
