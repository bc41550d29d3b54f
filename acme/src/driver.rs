//! `CertStore::run`: drives one rustls-acme order loop per ACME spec, polls
//! static files, and warns about certificates close to expiry.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::{AbortHandle, Abortable, BoxFuture};
use futures::stream::{FuturesUnordered, StreamExt};
use rustls_acme::{AcmeConfig, EventOk, UseChallenge};

use crate::cache::{DiskCache, OnCert};
use crate::entry::Entry;
use crate::shared::{self, SharedEvent};
use crate::shared_driver::{self, OrderCtx, SharedCtx};
use crate::store::AcmeCtx;
use crate::{certs, CertStore, Challenge};

/// Warn when a served certificate expires within this time.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);
/// How often expiry is checked.
const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(3600);

type Drivers = FuturesUnordered<Abortable<BoxFuture<'static, ()>>>;

impl CertStore {
    /// Runs forever: ACME orders and renewals (one rustls-acme state per
    /// ACME spec, retried with rustls-acme's backoff, events logged via
    /// `tracing`), static file reloads every poll interval, expiry warnings.
    /// Picks up `replace_specs` changes. Dropping the future stops it all.
    pub async fn run(self: Arc<Self>) {
        let mut drivers: Drivers = FuturesUnordered::new();
        let mut running: HashMap<usize, (Arc<Entry>, AbortHandle)> = HashMap::new();
        let mut poll_ms = self.poll_interval_ms.load(Ordering::Relaxed);
        let mut ticker = interval(poll_ms);
        let mut last_expiry_check: Option<Instant> = None;
        let mut events = self.shared.get().map(|s| s.store.subscribe());
        loop {
            self.sync_drivers(&mut drivers, &mut running);
            let now_ms = self.poll_interval_ms.load(Ordering::Relaxed);
            if now_ms != poll_ms {
                poll_ms = now_ms;
                ticker = interval(poll_ms);
            }
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = ticker.tick() => {
                    self.reload_static();
                    if last_expiry_check.is_none_or(|t| t.elapsed() >= EXPIRY_CHECK_EVERY) {
                        last_expiry_check = Some(Instant::now());
                        self.warn_expiring();
                    }
                }
                Some(_) = drivers.next(), if !drivers.is_empty() => {}
                Some(event) = next_event(&mut events) => self.on_shared_event(event),
            }
        }
    }

    /// Starts order loops for new ACME entries and aborts those of removed ones.
    fn sync_drivers(
        &self,
        drivers: &mut Drivers,
        running: &mut HashMap<usize, (Arc<Entry>, AbortHandle)>,
    ) {
        let Some(ctx) = &self.acme else {
            return;
        };
        let snap = self.snapshot.load();
        let wanted: HashMap<usize, &Arc<Entry>> = snap
            .entries
            .iter()
            .filter(|e| !e.acme_domains.is_empty())
            .map(|e| (Arc::as_ptr(e) as usize, e))
            .collect();
        running.retain(|ptr, (entry, handle)| {
            let keep = wanted.contains_key(ptr);
            if !keep {
                tracing::info!(cert = %entry.spec.name, "stopping ACME for removed certificate");
                handle.abort();
            }
            keep
        });
        for (ptr, entry) in wanted {
            if running.contains_key(&ptr) {
                continue;
            }
            let (handle, registration) = AbortHandle::new_pair();
            let fut = match self.shared.get() {
                Some(shared) => shared_driver::drive(order_ctx(ctx, shared), entry.clone()),
                None => drive(ctx, entry.clone()),
            };
            drivers.push(Abortable::new(fut, registration));
            running.insert(ptr, (entry.clone(), handle));
        }
    }

    /// A watch event of the shared store: certificates stored by any node
    /// are served at once, challenges go to the view every node answers from.
    fn on_shared_event(&self, event: SharedEvent) {
        let (Some(shared), Some(acme)) = (self.shared.get(), &self.acme) else {
            return;
        };
        match &event {
            SharedEvent::Up => {
                if shared.totals.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("shared certificate store reachable again");
                    // Orders that waited for the store retry now, not at
                    // the end of their backoff.
                    shared.cert_arrived.notify_waiters();
                }
            }
            SharedEvent::Down => {
                if !shared.totals.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!("shared certificate store unreachable: serving the certificates this node has; orders and renewals wait");
                }
            }
            SharedEvent::Cert { id, pem } => {
                let snap = self.snapshot.load();
                let mut taken = false;
                for entry in snap.entries.iter().filter(|e| !e.acme_domains.is_empty()) {
                    if shared::cert_id(&entry.acme_domains, &acme.directory_url) != *id {
                        continue;
                    }
                    let file = crate::cache::cert_file(
                        &acme.cache_dir,
                        &entry.acme_domains,
                        &acme.directory_url,
                    );
                    match shared_driver::adopt(entry, pem, &file) {
                        Ok(t) => taken |= t,
                        Err(e) => {
                            tracing::warn!(cert = %entry.spec.name, error = %e, "ignoring an unusable shared certificate")
                        }
                    }
                }
                if taken {
                    shared.cert_arrived.notify_waiters();
                }
            }
            SharedEvent::Challenge { .. } | SharedEvent::ChallengeGone(_) => {}
        }
        shared.challenges.apply(&event);
    }

    fn warn_expiring(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        for info in self.certificates() {
            if info.source == "self-signed" && info.configured == "self-signed" {
                continue;
            }
            let left = info.not_after - now;
            if left <= 0 {
                tracing::warn!(cert = %info.name, not_after = info.not_after, source = info.source, "certificate has EXPIRED");
            } else if left < EXPIRY_WARNING.as_secs() as i64 {
                tracing::warn!(cert = %info.name, not_after = info.not_after, days_left = left / 86400, source = info.source, "certificate expires soon");
            }
        }
    }
}

/// The next event of the shared store, or never without one.
async fn next_event(
    events: &mut Option<tokio::sync::mpsc::UnboundedReceiver<SharedEvent>>,
) -> Option<SharedEvent> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn contact(ctx: &AcmeCtx) -> Vec<String> {
    ctx.settings
        .email
        .iter()
        .filter(|e| !e.is_empty())
        .map(|e| format!("mailto:{e}"))
        .collect()
}

fn order_ctx(ctx: &AcmeCtx, shared: &SharedCtx) -> OrderCtx {
    OrderCtx {
        directory_url: ctx.directory_url.clone(),
        client: ctx.client.clone(),
        contact: contact(ctx),
        challenge: ctx.settings.challenge,
        cache_dir: ctx.cache_dir.clone(),
        store: shared.store.clone(),
        challenges: shared.challenges.clone(),
        totals: shared.totals.clone(),
        cert_arrived: shared.cert_arrived.clone(),
        acme_totals: ctx.totals.clone(),
    }
}

fn interval(ms: u64) -> tokio::time::Interval {
    let mut i = tokio::time::interval(Duration::from_millis(ms));
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

/// The order/renewal loop of one ACME entry; never returns on its own.
fn drive(ctx: &AcmeCtx, entry: Arc<Entry>) -> BoxFuture<'static, ()> {
    let name = entry.spec.name.clone();
    // An issuance counts once the certificate is served: rustls-acme reports
    // `DeployedNewCert` before its cache store, which is where it reaches us.
    let on_cert: OnCert = {
        let entry = entry.clone();
        let totals = ctx.totals.clone();
        Arc::new(
            move |pem: &[u8]| match certs::parse_acme_pem(pem, &entry.spec.name) {
                Ok(loaded) => {
                    tracing::info!(cert = %entry.spec.name, issuer = %loaded.meta.issuer, not_after = loaded.meta.not_after, "serving new ACME certificate");
                    entry.current.store(Some(Arc::new(loaded)));
                    totals.renewals.fetch_add(1, Ordering::Relaxed);
                    let n = entry.stats.renewals.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::info!(cert = %entry.spec.name, issued = n, "ACME certificate issued");
                }
                Err(e) => {
                    tracing::error!(cert = %entry.spec.name, error = %e, "CA returned an unusable certificate");
                }
            },
        )
    };
    let cache = DiskCache::new(ctx.cache_dir.clone(), on_cert, ctx.account_lock.clone());
    let contact = contact(ctx);
    let challenge = match ctx.settings.challenge {
        Challenge::Http01 => UseChallenge::Http01,
        Challenge::TlsAlpn01 => UseChallenge::TlsAlpn01,
    };
    let mut state = AcmeConfig::new_with_client_config(&entry.acme_domains, ctx.client.clone())
        .directory(&ctx.directory_url)
        .contact(contact)
        .cache(cache)
        .challenge_type(challenge)
        .state();
    entry.challenge.store(Some(state.resolver()));
    let totals = ctx.totals.clone();
    tracing::info!(cert = %name, domains = ?entry.acme_domains, directory = %ctx.directory_url, "starting ACME");
    Box::pin(async move {
        while let Some(event) = state.next().await {
            match event {
                Ok(EventOk::DeployedNewCert) => {
                    tracing::debug!(cert = %name, "ACME: new certificate obtained")
                }
                Ok(EventOk::DeployedCachedCert) => {
                    tracing::info!(cert = %name, "ACME: cached certificate deployed; renewal scheduled")
                }
                Ok(ok) => tracing::debug!(cert = %name, event = ?ok, "ACME event"),
                Err(err) => {
                    totals.failures.fetch_add(1, Ordering::Relaxed);
                    let n = entry.stats.failures.fetch_add(1, Ordering::Relaxed) + 1;
                    let msg = err.to_string();
                    tracing::warn!(cert = %name, failures = n, error = %msg, "ACME attempt failed; retrying with backoff");
                    if let Ok(mut last) = entry.stats.last_error.lock() {
                        *last = Some(msg);
                    }
                }
            }
        }
    })
}
