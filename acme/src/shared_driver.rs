//! The order loop of one ACME certificate in cluster mode: one order per
//! certificate for the whole cluster, placed by whichever node holds the
//! certificate's lock in the [`SharedCerts`] store.
//!
//! A node that needs the certificate (none yet, or two thirds of its
//! validity gone) waits for the lock, then reads the store again (the node
//! before it in line has usually stored a fresh certificate meanwhile, which
//! ends the matter), and only then orders, with rustls-acme's low-level
//! [`rustls_acme::acme`] API so that every challenge's key authorization is
//! published in the store, where every node answers it. The certificate and
//! the account key go to the store (sealed there), every node picks the
//! certificate up from its watch, and each keeps it in `state_dir/acme` for
//! a start while the store is down. Failures retry after 1 s, doubling up to
//! an hour; while the store is down nothing is ordered and the certificates
//! in hand keep being served.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::ClientConfig;
use rustls_acme::acme::{
    Account, AcmeError, AuthStatus, Challenge as AcmeChallenge, ChallengeType, Directory,
    Identifier, OrderStatus,
};

use crate::challenges::Challenges;
use crate::entry::Entry;
use crate::shared::{self, ChallengeId, HeldLock, SharedCerts, SharedError};
use crate::{certs, CertError, Challenge};

/// First retry delay after a failed attempt; doubles on each failure.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// Cluster-wide ACME counters of this node.
#[derive(Debug, Default)]
pub(crate) struct ClusterTotals {
    /// Orders this node placed with the CA.
    pub orders: AtomicU64,
    /// Time spent waiting for order locks, in milliseconds.
    pub lock_wait_ms: AtomicU64,
    /// Whether the shared store is unreachable now.
    pub down: AtomicBool,
}

/// What this node's cluster-mode ACME shares between its certificates.
pub(crate) struct SharedCtx {
    pub store: Arc<dyn SharedCerts>,
    pub challenges: Arc<Challenges>,
    pub totals: Arc<ClusterTotals>,
    /// Woken when a certificate arrives from the store.
    pub cert_arrived: Arc<tokio::sync::Notify>,
}

/// What one order loop needs of the ACME settings.
#[derive(Clone)]
pub(crate) struct OrderCtx {
    pub directory_url: String,
    pub client: Arc<ClientConfig>,
    pub contact: Vec<String>,
    pub challenge: Challenge,
    pub cache_dir: std::path::PathBuf,
    pub store: Arc<dyn SharedCerts>,
    pub challenges: Arc<Challenges>,
    pub totals: Arc<ClusterTotals>,
    pub cert_arrived: Arc<tokio::sync::Notify>,
    /// Issuance and failure counts of the whole store.
    pub acme_totals: Arc<crate::store::AcmeTotals>,
}

#[derive(Debug, thiserror::Error)]
enum DriveError {
    #[error(transparent)]
    Shared(#[from] SharedError),
    #[error("acme: {0}")]
    Acme(#[from] AcmeError),
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("{0}")]
    Order(String),
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Milliseconds since the epoch (log lines that compare nodes).
pub(crate) fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

/// When a certificate valid from `not_before` to `not_after` is renewed:
/// at two thirds of its validity.
pub(crate) fn renew_at(not_before: i64, not_after: i64) -> i64 {
    not_before + (not_after - not_before) * 2 / 3
}

/// Seconds until the served ACME certificate of `entry` is due for
/// renewal; `None` when there is none or it is due.
fn time_left(entry: &Entry) -> Option<i64> {
    let current = entry.current.load_full()?;
    if current.source != "acme" {
        return None;
    }
    let left = renew_at(current.meta.not_before, current.meta.not_after) - now_secs();
    (left > 0).then_some(left)
}

/// Serves `pem` for `entry` if it is newer than what it serves, and keeps it
/// in the local cache. Returns whether it was taken.
pub(crate) fn adopt(
    entry: &Entry,
    pem: &[u8],
    cache_file: &std::path::Path,
) -> Result<bool, CertError> {
    let loaded = certs::parse_acme_pem(pem, &entry.spec.name)?;
    let newer = match entry.current.load().as_deref() {
        None => true,
        Some(cur) if cur.source != "acme" => true,
        Some(cur) => {
            cur.leaf_der() != loaded.leaf_der()
                && (loaded.meta.not_after, loaded.meta.not_before)
                    > (cur.meta.not_after, cur.meta.not_before)
        }
    };
    if !newer {
        return Ok(false);
    }
    tracing::info!(cert = %entry.spec.name, issuer = %loaded.meta.issuer, not_after = loaded.meta.not_after, at_ms = now_ms() as u64, "serving shared ACME certificate");
    entry.current.store(Some(Arc::new(loaded)));
    if let Err(e) = crate::cache::write_private(cache_file, pem) {
        tracing::warn!(cert = %entry.spec.name, file = %cache_file.display(), error = %e, "cannot cache the shared certificate locally; a restart while the store is down will not have it");
    }
    Ok(true)
}

impl OrderCtx {
    fn cache_file(&self, entry: &Entry) -> std::path::PathBuf {
        crate::cache::cert_file(&self.cache_dir, &entry.acme_domains, &self.directory_url)
    }

    fn note(&self, result: &Result<(), DriveError>) {
        let down = matches!(result, Err(DriveError::Shared(SharedError::Unavailable(_))));
        self.totals.down.store(down, Ordering::Relaxed);
    }
}

/// The loop of one entry; never returns on its own.
pub(crate) fn drive(ctx: OrderCtx, entry: Arc<Entry>) -> BoxFuture<'static, ()> {
    let id = shared::cert_id(&entry.acme_domains, &ctx.directory_url);
    tracing::info!(cert = %entry.spec.name, id = %id, domains = ?entry.acme_domains, directory = %ctx.directory_url, "starting shared ACME (cluster)");
    Box::pin(async move {
        let mut backoff = BACKOFF_MIN;
        loop {
            if let Some(left) = time_left(&entry) {
                let wait = Duration::from_secs(left.max(1) as u64);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = ctx.cert_arrived.notified() => {}
                }
                continue;
            }
            let result = once(&ctx, &entry, &id).await;
            ctx.note(&result);
            match result {
                Ok(()) => backoff = BACKOFF_MIN,
                Err(e) => {
                    ctx.acme_totals.failures.fetch_add(1, Ordering::Relaxed);
                    let n = entry.stats.failures.fetch_add(1, Ordering::Relaxed) + 1;
                    let msg = e.to_string();
                    tracing::warn!(cert = %entry.spec.name, failures = n, retry_in = ?backoff, error = %msg, "shared ACME attempt failed; serving what this node has and retrying");
                    if let Ok(mut last) = entry.stats.last_error.lock() {
                        *last = Some(msg);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = ctx.cert_arrived.notified() => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    })
}

/// One attempt: lock, read again, order if still needed, store.
async fn once(ctx: &OrderCtx, entry: &Entry, id: &str) -> Result<(), DriveError> {
    let name = &entry.spec.name;
    let waited = Instant::now();
    tracing::info!(cert = %name, id = %id, "certificate needed: waiting for the cluster's order lock");
    let lock = ctx.store.lock(id).await?;
    let waited = waited.elapsed();
    ctx.totals
        .lock_wait_ms
        .fetch_add(waited.as_millis() as u64, Ordering::Relaxed);
    tracing::info!(cert = %name, id = %id, waited_ms = waited.as_millis() as u64, lease = lock.lease, at_ms = now_ms() as u64, "holding the order lock");
    // Another node may have stored a certificate while this one waited.
    if let Some(pem) = ctx.store.get_cert(id).await? {
        match adopt(entry, &pem, &ctx.cache_file(entry)) {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(cert = %name, error = %e, "ignoring an unusable shared certificate")
            }
        }
    }
    if time_left(entry).is_some() {
        tracing::info!(cert = %name, "the shared certificate is fresh: nothing to order");
        return Ok(());
    }
    let pem = order(ctx, entry, &lock).await?;
    let storing = now_ms() as u64;
    ctx.store.put_cert(id, &pem).await?;
    tracing::info!(cert = %name, id = %id, at_ms = storing, "stored the new certificate in the cluster");
    adopt(entry, &pem, &ctx.cache_file(entry))?;
    ctx.acme_totals.renewals.fetch_add(1, Ordering::Relaxed);
    let n = entry.stats.renewals.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::info!(cert = %name, issued = n, "ACME certificate issued");
    drop(lock);
    Ok(())
}

/// Orders the certificate of `entry` (the lock is held); returns key PEM
/// and chain.
async fn order(ctx: &OrderCtx, entry: &Entry, lock: &HeldLock) -> Result<Vec<u8>, DriveError> {
    let client = &ctx.client;
    let name = &entry.spec.name;
    let directory = Directory::discover(client, &ctx.directory_url).await?;
    let account_id = shared::account_id(&ctx.contact, &ctx.directory_url);
    let key = match ctx.store.get_account(&account_id).await? {
        Some(k) => k,
        None => {
            ctx.store
                .put_account(&account_id, &Account::generate_key_pair())
                .await?
        }
    };
    let account = Account::create_with_keypair(client, directory, &ctx.contact, &key).await?;

    let domains = entry.acme_domains.clone();
    let mut params = CertificateParams::new(domains.clone())
        .map_err(|e| DriveError::Order(format!("csr: {e}")))?;
    params.distinguished_name = DistinguishedName::new();
    let cert_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| DriveError::Order(format!("key: {e}")))?;
    let csr = params
        .serialize_request(&cert_key)
        .map_err(|e| DriveError::Order(format!("csr: {e}")))?;

    let (order_url, mut order) = account.new_order(client, domains.clone()).await?;
    ctx.totals.orders.fetch_add(1, Ordering::Relaxed);
    tracing::info!(cert = %name, domains = ?domains, order = %order_url, "placed an ACME order for the cluster");
    for _ in 0..50 {
        match order.status {
            OrderStatus::Pending => {
                for url in &order.authorizations {
                    authorize(ctx, &account, lock, url).await?;
                }
                order = account.order(client, &order_url).await?;
            }
            OrderStatus::Processing => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                order = account.order(client, &order_url).await?;
            }
            OrderStatus::Ready => {
                order = account.finalize(client, &order.finalize, csr.der()).await?;
            }
            OrderStatus::Valid { certificate } => {
                let chain = account.certificate(client, certificate).await?;
                return Ok([cert_key.serialize_pem().as_str(), "\n", &chain]
                    .concat()
                    .into_bytes());
            }
            OrderStatus::Invalid => {
                return Err(DriveError::Order(format!(
                    "order invalid: {:?}",
                    order.error
                )))
            }
        }
    }
    Err(DriveError::Order("order did not complete".into()))
}

/// Solves one authorization: publishes the key authorization in the store
/// (any node answers it), asks the CA to validate, waits for the result.
async fn authorize(
    ctx: &OrderCtx,
    account: &Account,
    lock: &HeldLock,
    url: &str,
) -> Result<(), DriveError> {
    let client = &ctx.client;
    let auth = account.auth(client, url).await?;
    match auth.status {
        AuthStatus::Valid => return Ok(()),
        AuthStatus::Pending => {}
        other => return Err(DriveError::Order(format!("authorization {other:?}"))),
    }
    let Identifier::Dns(domain) = auth.identifier;
    let (challenge_url, id, key_auth) = match ctx.challenge {
        Challenge::Http01 => {
            let (c, key_auth) = account.http_01(&auth.challenges)?;
            (
                c.url.clone(),
                ChallengeId::Http01(c.token.clone()),
                key_auth,
            )
        }
        Challenge::TlsAlpn01 => {
            let c = auth
                .challenges
                .iter()
                .find(|c| c.typ == ChallengeType::TlsAlpn01)
                .ok_or(AcmeError::NoTlsAlpn01Challenge)?;
            // The key authorization is the same `token.thumbprint` for every
            // challenge type; rustls-acme computes it for HTTP-01 ones.
            let as_http = [AcmeChallenge {
                typ: ChallengeType::Http01,
                url: c.url.clone(),
                token: c.token.clone(),
                error: None,
            }];
            let (_, key_auth) = account.http_01(&as_http)?;
            (
                c.url.clone(),
                ChallengeId::TlsAlpn01(domain.clone()),
                key_auth,
            )
        }
    };
    ctx.challenges.insert(id.clone(), key_auth.clone());
    ctx.store.put_challenge(lock, &id, &key_auth).await?;
    tracing::info!(domain = %domain, challenge = %id.key(), "published the challenge for every node; asking the CA to validate");
    account.challenge(client, &challenge_url).await?;
    let mut wait = Duration::from_millis(100);
    let deadline = Instant::now() + Duration::from_secs(60);
    let outcome = loop {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(3));
        let auth = account.auth(client, url).await?;
        match auth.status {
            AuthStatus::Pending if Instant::now() < deadline => {}
            AuthStatus::Pending => {
                break Err(DriveError::Order(format!("{domain}: validation timed out")))
            }
            AuthStatus::Valid => break Ok(()),
            other => {
                let detail: Vec<String> = auth
                    .challenges
                    .iter()
                    .filter_map(|c| c.error.as_ref())
                    .map(|p| p.detail.clone().unwrap_or_default())
                    .collect();
                break Err(DriveError::Order(format!(
                    "{domain}: authorization {other:?} {detail:?}"
                )));
            }
        }
    };
    if let Err(e) = ctx.store.delete_challenge(&id).await {
        tracing::debug!(error = %e, "challenge not withdrawn (its lease will end it)");
    }
    outcome
}
