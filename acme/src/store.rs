//! The certificate store: specs, what each serves right now, SNI resolution.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::ClientConfig;

use crate::certs::{self, Loaded};
use crate::challenges::Challenges;
use crate::entry::Entry;
use crate::shared::{ChallengeId, SharedCerts};
use crate::shared_driver::{ClusterTotals, SharedCtx};
use crate::{AcmeSettings, CertError, CertSpec, Challenge, HostIndex};

/// What `certificates()` reports for one spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Spec name.
    pub name: String,
    /// Hosts of the spec.
    pub hosts: Vec<String>,
    /// SANs of the certificate served now.
    pub sans: Vec<String>,
    /// Issuer (CN, else O) of the certificate served now.
    pub issuer: String,
    /// Validity start, unix seconds.
    pub not_before: i64,
    /// Expiry, unix seconds.
    pub not_after: i64,
    /// Source of the certificate served now: `"acme"`, `"static"` or
    /// `"self-signed"` (an ACME spec waiting for its first certificate
    /// serves its self-signed fallback).
    pub source: &'static str,
    /// Source the spec asks for (`"acme"`, `"static"`, `"self-signed"`).
    pub configured: &'static str,
    /// Certificates issued by the CA for this spec since start.
    pub renewals: u64,
    /// Failed ACME attempts (orders, cache I/O) since start.
    pub failures: u64,
    /// The last ACME error, if any.
    pub last_error: Option<String>,
}

/// Immutable view swapped on `replace_specs`.
pub(crate) struct Snapshot {
    pub entries: Vec<Arc<Entry>>,
    pub index: HostIndex,
    pub default: Arc<CertifiedKey>,
}

/// Resolved ACME settings.
pub(crate) struct AcmeCtx {
    pub settings: AcmeSettings,
    pub directory_url: String,
    pub client: Arc<ClientConfig>,
    pub cache_dir: PathBuf,
    pub account_lock: Arc<Mutex<()>>,
    /// Outcomes over the process lifetime, across reloads (monotonic).
    pub totals: Arc<AcmeTotals>,
}

/// ACME outcomes counted since the process started, whatever certificates
/// later reloads remove.
#[derive(Debug, Default)]
pub(crate) struct AcmeTotals {
    /// Certificates issued or renewed.
    pub renewals: AtomicU64,
    /// Failed ACME attempts.
    pub failures: AtomicU64,
}

/// All certificates of the proxy; share it as `Arc<CertStore>`.
pub struct CertStore {
    pub(crate) acme: Option<AcmeCtx>,
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// Served for unknown SNI when there are no specs.
    generic_default: Arc<CertifiedKey>,
    /// Wakes `run` after `replace_specs`.
    pub(crate) changed: tokio::sync::Notify,
    pub(crate) poll_interval_ms: AtomicU64,
    replace_lock: Mutex<()>,
    /// Where self-signed fallback certificates are kept across restarts.
    fallback_dir: Option<PathBuf>,
    /// Cluster mode: certificates, orders and challenges shared with the
    /// other nodes ([`CertStore::set_shared`]).
    pub(crate) shared: OnceLock<SharedCtx>,
}

/// This node's cluster-wide ACME figures (`/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterAcme {
    /// Orders this node placed for the cluster.
    pub orders: u64,
    /// Time spent waiting for order locks, in milliseconds.
    pub lock_wait_ms: u64,
    /// Whether the shared store is unreachable now.
    pub store_down: bool,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snap = self.snapshot.load();
        f.debug_struct("CertStore")
            .field("specs", &snap.entries.len())
            .field("acme", &self.acme.as_ref().map(|a| &a.directory_url))
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Builds the store: loads static certificates and cached ACME
    /// certificates, makes self-signed fallbacks. Never contacts the CA.
    ///
    /// Fails on unusable static files, duplicate names, ACME specs without
    /// ACME settings, or a bad directory / `ca_roots`.
    pub fn new(acme: Option<AcmeSettings>, specs: Vec<CertSpec>) -> Result<Arc<Self>, CertError> {
        Self::with_fallback_dir(acme, specs, None)
    }

    /// Like [`CertStore::new`], keeping the self-signed fallback
    /// certificates (and `tls = "self-signed"` ones) in `fallback_dir`
    /// (0700, files 0600) and reusing them while they have more than 30 days
    /// left, so that a restart serves the same certificate.
    pub fn with_fallback_dir(
        acme: Option<AcmeSettings>,
        specs: Vec<CertSpec>,
        fallback_dir: Option<PathBuf>,
    ) -> Result<Arc<Self>, CertError> {
        let acme = acme.map(Self::acme_ctx).transpose()?;
        let generic_default = certs::self_signed_kept(&[], "default", fallback_dir.as_deref())?.key;
        let store = CertStore {
            acme,
            snapshot: ArcSwap::from_pointee(Snapshot {
                entries: Vec::new(),
                index: HostIndex::default(),
                default: generic_default.clone(),
            }),
            generic_default,
            changed: tokio::sync::Notify::new(),
            poll_interval_ms: AtomicU64::new(5_000),
            replace_lock: Mutex::new(()),
            fallback_dir,
            shared: OnceLock::new(),
        };
        store.replace_specs(specs)?;
        Ok(Arc::new(store))
    }

    fn acme_ctx(settings: AcmeSettings) -> Result<AcmeCtx, CertError> {
        let directory_url = settings.directory_url()?;
        let client = Arc::new(crate::tls::acme_client_config(
            settings.ca_roots.as_deref(),
        )?);
        let cache_dir = settings.cache_dir();
        if let Err(e) = crate::cache::ensure_dir(&cache_dir)
            .and_then(|()| crate::cache::fix_permissions(&cache_dir))
        {
            tracing::warn!(dir = %cache_dir.display(), error = %e, "ACME cache directory is not usable; certificates will not survive a restart");
        }
        Ok(AcmeCtx {
            settings,
            directory_url,
            client,
            cache_dir,
            account_lock: Arc::new(Mutex::new(())),
            totals: Arc::new(AcmeTotals::default()),
        })
    }

    /// ACME issuances and failures since the process started: `(renewals,
    /// failures)`, never decreasing (unlike the per-certificate counts, which
    /// go with their certificate on reload).
    pub fn acme_totals(&self) -> (u64, u64) {
        self.acme.as_ref().map_or((0, 0), |a| {
            (
                a.totals.renewals.load(Ordering::Relaxed),
                a.totals.failures.load(Ordering::Relaxed),
            )
        })
    }

    /// The challenge type of the ACME settings, if ACME is configured.
    pub fn challenge(&self) -> Option<Challenge> {
        self.acme.as_ref().map(|a| a.settings.challenge)
    }

    /// Replaces the specs (config reload). Unchanged specs keep their
    /// certificates and running ACME orders; new ones start from disk (and
    /// `run` starts their orders); removed ones stop. On error nothing
    /// changes.
    pub fn replace_specs(&self, specs: Vec<CertSpec>) -> Result<(), CertError> {
        let _guard = self
            .replace_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut names = HashSet::new();
        for spec in &specs {
            if !names.insert(spec.name.as_str()) {
                return Err(CertError::DuplicateName(spec.name.clone()));
            }
        }
        let old = self.snapshot.load_full();
        let mut entries = Vec::with_capacity(specs.len());
        for spec in specs {
            match old.entries.iter().find(|e| e.spec == spec) {
                Some(e) => entries.push(e.clone()),
                None => entries.push(Arc::new(Entry::build(
                    spec,
                    self.acme.as_ref(),
                    self.fallback_dir.as_deref(),
                )?)),
            }
        }
        let index = HostIndex::new(entries.iter().map(|e| &e.spec.hosts));
        let default = entries
            .first()
            .map(|e| e.fallback.key.clone())
            .unwrap_or_else(|| self.generic_default.clone());
        self.snapshot.store(Arc::new(Snapshot {
            entries,
            index,
            default,
        }));
        self.changed.notify_one();
        drop(_guard);
        self.reload_static();
        Ok(())
    }

    /// The certificate a handshake with this SNI gets: the matching spec's
    /// certificate (or its self-signed fallback while it has none), else the
    /// default (the first spec's self-signed fallback).
    pub fn cert_for(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let snap = self.snapshot.load();
        match snap.index.lookup(sni) {
            Some(i) => snap.entries[i].served(),
            None => snap.default.clone(),
        }
    }

    /// The SNI resolver to put in a rustls `ServerConfig` or Pingora's
    /// `TlsSettings::set_cert_resolver`. Never fails a handshake for lack of
    /// a certificate.
    pub fn resolver(self: &Arc<Self>) -> Arc<dyn ResolvesServerCert> {
        Arc::new(crate::resolver::StoreResolver(self.clone()))
    }

    /// Resolver for TLS-ALPN-01 validation handshakes (challenge
    /// certificates of running orders only).
    pub fn challenge_resolver(self: &Arc<Self>) -> Arc<dyn ResolvesServerCert> {
        Arc::new(crate::resolver::ChallengeResolver(self.clone()))
    }

    /// Cluster mode: certificates come from and go to `shared`, one node
    /// orders for all, challenges are answered from it. Call before
    /// [`CertStore::run`]; a second call is ignored (returns `false`).
    pub fn set_shared(&self, shared: Arc<dyn SharedCerts>) -> bool {
        self.shared
            .set(SharedCtx {
                store: shared,
                challenges: Arc::new(Challenges::default()),
                totals: Arc::new(ClusterTotals::default()),
                cert_arrived: Arc::new(tokio::sync::Notify::new()),
            })
            .is_ok()
    }

    /// Cluster-mode figures, when [`CertStore::set_shared`] was called.
    pub fn cluster_acme(&self) -> Option<ClusterAcme> {
        let s = self.shared.get()?;
        Some(ClusterAcme {
            orders: s.totals.orders.load(Ordering::Relaxed),
            lock_wait_ms: s.totals.lock_wait_ms.load(Ordering::Relaxed),
            store_down: s.totals.down.load(Ordering::Relaxed),
        })
    }

    /// The answer to `GET /.well-known/acme-challenge/{token}`: this node's
    /// own orders, else (cluster mode) the challenges seen by the watch,
    /// else one read of the shared store (the watch may lag the CA by a few
    /// milliseconds).
    pub async fn http01_answer(&self, token: &str) -> Option<String> {
        if let Some(answer) = self.http01_key_auth(token) {
            return Some(answer);
        }
        let shared = self.shared.get()?;
        let id = ChallengeId::Http01(token.to_string());
        if let Some(answer) = shared.challenges.get(&id) {
            tracing::info!(token, from = "watch", "answered HTTP-01 validation");
            return Some(answer);
        }
        match shared.store.get_challenge(&id).await {
            Ok(answer) => {
                if answer.is_some() {
                    tracing::info!(token, from = "store", "answered HTTP-01 validation");
                }
                answer
            }
            Err(e) => {
                tracing::warn!(error = %e, "HTTP-01 challenge not found: the shared store is unreachable");
                None
            }
        }
    }

    /// Cluster mode: the TLS-ALPN-01 challenge certificate for `domain`,
    /// built from the key authorization published by whichever node
    /// ordered (watch view, else one read of the shared store). `None`
    /// outside cluster mode or without a pending challenge.
    pub async fn shared_tls_alpn_cert(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        let shared = self.shared.get()?;
        let domain = crate::normalize_host(domain);
        let id = ChallengeId::TlsAlpn01(domain.clone());
        let key_auth = match shared.challenges.get(&id) {
            Some(k) => k,
            None => match shared.store.get_challenge(&id).await {
                Ok(k) => k?,
                Err(e) => {
                    tracing::warn!(error = %e, domain = %domain, "TLS-ALPN-01 challenge not found: the shared store is unreachable");
                    return None;
                }
            },
        };
        match shared.challenges.alpn_cert(&domain, &key_auth) {
            Ok(cert) => Some(cert),
            Err(e) => {
                tracing::warn!(error = %e, domain = %domain, "cannot build the TLS-ALPN-01 certificate");
                None
            }
        }
    }

    /// Whether certificates are shared with other nodes.
    pub fn is_shared(&self) -> bool {
        self.shared.get().is_some()
    }

    /// Key authorization for `GET /.well-known/acme-challenge/{token}`.
    pub fn http01_key_auth(&self, token: &str) -> Option<String> {
        let snap = self.snapshot.load();
        snap.entries.iter().find_map(|e| {
            e.challenge
                .load()
                .as_ref()
                .and_then(|r| r.get_http_01_key_auth(token))
        })
    }

    /// Per spec: what is served now, its expiry and the ACME counters.
    pub fn certificates(&self) -> Vec<CertInfo> {
        let snap = self.snapshot.load();
        snap.entries
            .iter()
            .map(|e| {
                let current = e.current.load_full();
                let loaded: &Loaded = current.as_deref().unwrap_or(&e.fallback);
                CertInfo {
                    name: e.spec.name.clone(),
                    hosts: e.spec.hosts.clone(),
                    sans: loaded.meta.sans.clone(),
                    issuer: loaded.meta.issuer.clone(),
                    not_before: loaded.meta.not_before,
                    not_after: loaded.meta.not_after,
                    source: loaded.source,
                    configured: e.spec.source.kind(),
                    renewals: e.stats.renewals.load(Ordering::Relaxed),
                    failures: e.stats.failures.load(Ordering::Relaxed),
                    last_error: e
                        .stats
                        .last_error
                        .lock()
                        .map(|g| g.clone())
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    /// How often `run` checks static certificate files (default 5 s).
    pub fn set_static_poll_interval(&self, every: Duration) {
        let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(10);
        self.poll_interval_ms.store(ms, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// Re-reads static certificate files whose size, mtime or inode changed
    /// and swaps them in (existing connections keep their certificate).
    /// Returns how many certificates were replaced. `run` calls this
    /// periodically.
    pub fn reload_static(&self) -> usize {
        let snap = self.snapshot.load();
        snap.entries.iter().filter(|e| e.reload_static()).count()
    }
}
