//! The control plane: owns the `ArcSwap`ped [`Snapshot`] that requests read,
//! and changes it (flip, weights, reload) by compiling a new table.

pub mod auth;
pub mod cluster;
pub mod health;
pub mod pages;
pub mod pause;
pub mod persist;
pub mod slots;
pub mod tls;
pub mod watch;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use routes::state::ServiceState;
use routes::{Config, Diagnostics, LiveState, RouteTable, Vitals};
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

/// After a failed connect of `attempts` to `svc`: the member is ejected
/// ([`routes::policy::Attempts::connect_failed`]) and the error counted;
/// true when another member may be tried (both request paths use this).
pub fn connect_failed(
    control: &Control,
    svc: &routes::Service,
    attempts: &routes::policy::Attempts,
) -> bool {
    let retry = attempts.connect_failed(svc, crate::clock::now_ms());
    if let Some(p) = svc.pools.get(attempts.pool()) {
        control.metrics.connect_error(&svc.name, p.color.as_str());
    }
    retry
}

/// Everything a request needs, swapped atomically as one unit.
pub struct Snapshot {
    /// The routing table.
    pub table: RouteTable,
    /// Extensions built with I/O for each route slot (static file servers).
    pub slots: Vec<crate::control::slots::Slot>,
    /// Where and how much request and response bodies are buffered.
    pub buffering: crate::net::spool::Limits,
    /// Pages for the edge's own answers (error pages, maintenance).
    pub pages: crate::control::pages::Pages,
}

impl Snapshot {
    /// The limits to buffer responses of route `route` of site `site`
    /// with, unless it streams them (`buffer_responses = false`).
    pub fn response_buffer(&self, site: usize, route: usize) -> Option<&crate::net::spool::Limits> {
        let route = self.table.sites.get(site)?.routes.get(route)?;
        route.buffer_responses.then_some(&self.buffering)
    }
}

/// Where the config text comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file, re-read on reload.
    File(PathBuf),
    /// Text embedded in the binary (the demo), with a display name.
    Embedded {
        /// Name used in error messages.
        name: String,
        /// The config text.
        text: String,
    },
}

impl Source {
    /// Display name for errors.
    pub fn name(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Embedded { name, .. } => name.clone(),
        }
    }

    /// Reads, expands, parses and validates the config, including the checks
    /// that need the file system (static roots, certificate files).
    pub fn load(&self) -> Result<Config, Diagnostics> {
        self.load_with(&|_| Vec::new())
    }

    /// Like [`Source::load`], with `more` checks of the valid config, whose
    /// problems are placed at their lines as well.
    pub fn load_with(
        &self,
        more: &dyn Fn(&Config) -> Vec<routes::Problem>,
    ) -> Result<Config, Diagnostics> {
        routes::load_checked(
            &self.name(),
            &self.text()?,
            |v| std::env::var(v).ok(),
            &|c| {
                let mut problems = crate::control::slots::io_checks(c);
                problems.extend(more(c));
                problems
            },
        )
    }

    /// What `duotone check` needs: like [`Source::load`], except that static
    /// roots missing on this machine and environment variables unset here
    /// (checked with a stand-in, see [`routes::stand_in`]) are warnings
    /// (returned beside the config), not errors.
    pub fn load_for_check(&self) -> Result<(Config, Diagnostics), Diagnostics> {
        routes::load_with_stand_ins(
            &self.name(),
            &self.text()?,
            |v| std::env::var(v).ok(),
            &crate::control::slots::io_checks_here,
            &crate::control::slots::missing_static_roots,
        )
    }

    /// The config text.
    fn text(&self) -> Result<String, Diagnostics> {
        let name = self.name();
        Ok(match self {
            Source::File(p) => std::fs::read_to_string(p).map_err(|e| {
                Diagnostics(vec![routes::Diagnostic {
                    file: name.clone(),
                    line: 0,
                    key: String::new(),
                    message: format!("cannot read: {e}"),
                }])
            })?,
            Source::Embedded { text, .. } => text.clone(),
        })
    }
}

/// Largest accepted sum of canary weights.
pub const MAX_WEIGHT_TOTAL: u64 = 1_000_000;

/// Why an admin change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// No such service.
    #[error("unknown service {0:?}")]
    UnknownService(String),
    /// No such site.
    #[error("unknown site {0:?}")]
    UnknownSite(String),
    /// The request is malformed or names an unknown color.
    #[error("{0}")]
    Invalid(String),
    /// The target color has no healthy member.
    #[error("{0}")]
    Unhealthy(String),
    /// The change conflicts with the service's state (e.g. closing the
    /// WebSockets of a color that takes traffic).
    #[error("{0}")]
    Conflict(String),
    /// The config file is invalid.
    #[error("{0}")]
    BadConfig(Diagnostics),
    /// Persisting or building failed.
    #[error("{0:#}")]
    Internal(anyhow::Error),
    /// Several nodes (`[cluster]`): etcd is unreachable or has no quorum,
    /// so the change is refused rather than made on this node alone.
    #[error("{0}")]
    Unavailable(String),
}

/// What a change reports beyond success: with `[cluster]`, its etcd
/// revision and which nodes applied it.
pub type Ack = Option<cluster_sync::Applied>;

use ::cluster::sync as cluster_sync;

/// The control plane shared by the proxy, admin API and health checker.
pub struct Control {
    current: ArcSwap<Snapshot>,
    vitals: Vitals,
    source: Source,
    /// Run-time overrides; the mutex serializes all changes (never taken on the request path).
    live: Mutex<LiveState>,
    /// Increments on every change.
    generation: std::sync::atomic::AtomicU64,
    /// Metrics, whose handles each snapshot resolves.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Certificates, when the proxy was started with TLS sites.
    certs: Option<Arc<acme::CertStore>>,
    /// Whether the response compression module was installed at start.
    pub compression_installed: std::sync::OnceLock<bool>,
    /// The listeners opened at start: a reload cannot change them.
    listeners: Listeners,
    /// Watches of colors after a flip (automatic rollback).
    watches: watch::Watches,
    /// Notified after every snapshot store: requests held by a pause wait
    /// on it ([`pause::hold`]).
    changed: tokio::sync::Notify,
    /// Whether the config has `[cluster]`: changes then go through etcd.
    clustered: bool,
    /// The shared deploy state's sync, once started.
    sync: std::sync::OnceLock<Arc<cluster_sync::StateSync>>,
}

/// The listeners a running proxy has open. Pingora opens its sockets at
/// start only, so a reload that would need other ones is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listeners {
    /// The plain HTTP listener.
    pub http: Option<SocketAddr>,
    /// The HTTPS listener (opened only when a site had TLS at start).
    pub https: Option<SocketAddr>,
    /// The admin API's listener.
    pub admin: Option<SocketAddr>,
}

impl Listeners {
    /// The listeners `run` opens for `config` (`tls`: whether the
    /// certificate store, hence the HTTPS listener, exists).
    pub fn of(config: &Config, tls: bool) -> Self {
        Listeners {
            http: config.server.http,
            https: config.server.https.filter(|_| tls),
            admin: config.server.admin,
        }
    }

    /// Why `config` cannot be reloaded onto these listeners, if it cannot:
    /// the key at fault and the message.
    pub fn refuse(&self, config: &Config) -> Option<routes::Problem> {
        let key = |k: &str| routes::KeyPath::root("server").key(k);
        const WHY: &str = "listeners cannot change on reload";
        let show = |a: Option<SocketAddr>| a.map_or("none".to_string(), |a| a.to_string());
        let s = &config.server;
        if s.http != self.http {
            return Some((
                key("http"),
                format!(
                    "{WHY}: restart duotone to move plain HTTP from {} to {}",
                    show(self.http),
                    show(s.http)
                ),
            ));
        }
        let tls = config
            .sites
            .iter()
            .any(|site| site.tls != routes::config::Tls::Off);
        match (self.https, s.https) {
            (None, Some(want)) if tls => {
                return Some((
                    key("https"),
                    format!("{WHY}: restart duotone to add https on {want}"),
                ))
            }
            (Some(have), want) if want != Some(have) => {
                return Some((
                    key("https"),
                    format!(
                        "{WHY}: restart duotone to move https from {have} to {}",
                        show(want)
                    ),
                ))
            }
            _ => {}
        }
        if s.admin != self.admin {
            return Some((
                key("admin"),
                format!(
                    "{WHY}: restart duotone to move the admin API from {} to {}",
                    show(self.admin),
                    show(s.admin)
                ),
            ));
        }
        None
    }
}

/// Resolves a member host name once, when a table is compiled.
pub fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    (host, port).to_socket_addrs().ok()?.next()
}

impl Control {
    /// Builds the control plane from a loaded config and the saved live state.
    pub fn new(
        source: Source,
        config: Config,
        metrics: Arc<crate::metrics::Metrics>,
        certs: Option<Arc<acme::CertStore>>,
    ) -> Result<Arc<Self>> {
        std::fs::create_dir_all(&config.server.state_dir)
            .with_context(|| format!("creating state_dir {}", config.server.state_dir.display()))?;
        let live = persist::read_live(&config.server.state_dir)?;
        let listeners = Listeners::of(&config, certs.is_some());
        let clustered = config.cluster.is_some();
        let vitals = Vitals::default();
        let (snap, _) = build(Arc::new(config), &live, &vitals, &metrics)
            .map_err(|d| anyhow::anyhow!("{d}"))?;
        Ok(Arc::new(Control {
            current: ArcSwap::from_pointee(snap),
            vitals,
            source,
            live: Mutex::new(live),
            generation: 0.into(),
            metrics,
            certs,
            compression_installed: std::sync::OnceLock::new(),
            listeners,
            watches: watch::Watches::default(),
            changed: tokio::sync::Notify::new(),
            clustered,
            sync: std::sync::OnceLock::new(),
        }))
    }

    /// The listeners opened at start.
    pub fn listeners(&self) -> Listeners {
        self.listeners
    }

    /// Stores `next` as the current snapshot and starts or calls off the
    /// drains of upgraded connections it implies.
    fn store(&self, next: Snapshot) {
        let next = Arc::new(next);
        let old = self.current.swap(next.clone());
        drain_changes(&old.table, &next.table);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Closes the upgraded connections (WebSockets) of `color` of `service`
    /// now, or of every color taking no new traffic when `color` is `None`.
    /// A color that takes traffic is refused unless `force`. Returns how
    /// many connections were asked to close.
    pub fn close_upgraded(
        &self,
        service: &str,
        color: Option<&str>,
        force: bool,
    ) -> Result<usize, ChangeError> {
        // Serialized with flips and weights, so the color's share of
        // traffic cannot change between the check and the close.
        let _changes = self.lock();
        let snap = self.load();
        let svc = snap
            .table
            .service(service)
            .ok_or_else(|| ChangeError::UnknownService(service.to_string()))?;
        let pools: Vec<usize> = match color {
            Some(c) => {
                let i = svc.pool_index(c).ok_or_else(|| {
                    ChangeError::Invalid(format!("service {service:?} has no color {c:?}"))
                })?;
                if svc.takes_traffic(i) && !force {
                    return Err(ChangeError::Conflict(format!(
                        "color {c:?} of {service:?} takes new traffic: its WebSockets would \
                         reconnect to it; flip first, or use force"
                    )));
                }
                vec![i]
            }
            None => (0..svc.pools.len())
                .filter(|i| !svc.takes_traffic(*i))
                .collect(),
        };
        let mut closed = 0;
        for i in pools {
            let pool = &svc.pools[i];
            // A drain (later upgrades closed too) only for a color without traffic.
            let n = pool.stats.close_upgraded(!svc.takes_traffic(i));
            tracing::info!(service, color = %pool.color, closed = n, "closing upgraded connections");
            closed += n;
        }
        Ok(closed)
    }

    /// The snapshot requests should use now.
    #[inline]
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LiveState> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Persists `next`, compiles it with `config`, and swaps it in.
    fn apply(
        &self,
        live: &mut LiveState,
        next: LiveState,
        config: Arc<Config>,
    ) -> Result<(), ChangeError> {
        let (snap, _) = build(config.clone(), &next, &self.vitals, &self.metrics)
            .map_err(ChangeError::BadConfig)?;
        if next != *live {
            persist::write_live(&config.server.state_dir, &next).map_err(ChangeError::Internal)?;
        }
        self.store(snap);
        *live = next;
        Ok(())
    }

    /// Makes `to` the live color of `service` (the other one of two when
    /// `None`). Refuses a color with no healthy member unless `force`.
    pub fn flip(&self, service: &str, to: Option<&str>, force: bool) -> Result<Ack, ChangeError> {
        self.commit(|live| self.flip_plan(live, service, to, force))
    }

    /// Makes a change: `plan` turns the current persisted state into the
    /// next one. Alone, on this node's state under the change lock; with
    /// `[cluster]`, on the shared state in etcd (compare-and-swap), which
    /// every node then applies.
    fn commit(
        &self,
        mut plan: impl FnMut(&LiveState) -> Result<LiveState, ChangeError>,
    ) -> Result<Ack, ChangeError> {
        if self.clustered {
            return cluster::commit(self, plan).map(Some);
        }
        let mut live = self.lock();
        let next = plan(&live)?;
        let config = self.load().table.config.clone();
        self.apply(&mut live, next, config)?;
        Ok(None)
    }

    /// [`Control::flip`] with the change lock held (`live`).
    fn flip_locked(
        &self,
        live: &mut LiveState,
        service: &str,
        to: Option<&str>,
        force: bool,
    ) -> Result<(), ChangeError> {
        let next = self.flip_plan(live, service, to, force)?;
        let config = self.load().table.config.clone();
        self.apply(live, next, config)
    }

    /// The state after a flip of `service` from `live`.
    fn flip_plan(
        &self,
        live: &LiveState,
        service: &str,
        to: Option<&str>,
        force: bool,
    ) -> Result<LiveState, ChangeError> {
        let snap = self.load();
        let svc = snap
            .table
            .service(service)
            .ok_or_else(|| ChangeError::UnknownService(service.to_string()))?;
        let target = match to {
            Some(c) => svc.pool_index(c).ok_or_else(|| {
                ChangeError::Invalid(format!("service {service:?} has no color {c:?}"))
            })?,
            None if svc.pools.len() == 2 => 1 - svc.live,
            None => {
                return Err(ChangeError::Invalid(format!(
                    "service {service:?} has {} colors: say which one to flip to",
                    svc.pools.len()
                )))
            }
        };
        gate_traffic(svc, [target], force)?;
        let pool = &svc.pools[target];
        let mut next = live.clone();
        let color = pool.color.as_str();
        let state = match live.services.get(service) {
            Some(s) => s.flipped(color),
            None => ServiceState::live(color),
        };
        next.services.insert(service.to_string(), state);
        Ok(next)
    }

    /// Sets canary weights for `service`. Colors left out get weight 0.
    /// Refuses weight on a color with no healthy member unless `force`.
    pub fn set_weights(
        &self,
        service: &str,
        weights: BTreeMap<String, u32>,
        force: bool,
    ) -> Result<Ack, ChangeError> {
        self.commit(|live| self.weights_plan(live, service, &weights, force))
    }

    /// The state after setting `weights` of `service` from `live`.
    fn weights_plan(
        &self,
        live: &LiveState,
        service: &str,
        weights: &BTreeMap<String, u32>,
        force: bool,
    ) -> Result<LiveState, ChangeError> {
        let snap = self.load();
        let svc = snap
            .table
            .service(service)
            .ok_or_else(|| ChangeError::UnknownService(service.to_string()))?;
        if let Some(bad) = weights.keys().find(|c| svc.pool_index(c).is_none()) {
            return Err(ChangeError::Invalid(format!(
                "service {service:?} has no color {bad:?}"
            )));
        }
        let total = weights.values().map(|w| u64::from(*w)).sum::<u64>();
        if total == 0 {
            return Err(ChangeError::Invalid("weights must not all be zero".into()));
        }
        // Weights are summed into a u32 when compiled; keep them readable too.
        if total > MAX_WEIGHT_TOTAL {
            return Err(ChangeError::Invalid(format!(
                "weights add up to {total}; the most is {MAX_WEIGHT_TOTAL} (use e.g. percentages)"
            )));
        }
        let receivers = weights
            .iter()
            .filter(|(_, w)| **w > 0)
            .filter_map(|(c, _)| svc.pool_index(c));
        gate_traffic(svc, receivers, force)?;
        let mut next = live.clone();
        let mut state = live
            .services
            .get(service)
            .cloned()
            .unwrap_or_else(|| ServiceState::live(svc.pools[svc.live].color.as_str()));
        state.live = svc.pools[svc.live].color.to_string();
        state.weights = Some(weights.clone());
        next.services.insert(service.to_string(), state);
        Ok(next)
    }

    /// Turns maintenance mode of `service` on or off (persisted).
    pub fn set_service_maintenance(&self, service: &str, on: bool) -> Result<Ack, ChangeError> {
        self.commit(|live| self.service_maintenance_plan(live, service, on))
    }

    /// The state after maintenance of `service` turned `on` or off.
    fn service_maintenance_plan(
        &self,
        live: &LiveState,
        service: &str,
        on: bool,
    ) -> Result<LiveState, ChangeError> {
        let snap = self.load();
        let svc = snap
            .table
            .service(service)
            .ok_or_else(|| ChangeError::UnknownService(service.to_string()))?;
        // A service with no saved state yet keeps what it runs with now
        // (its live color and the config's weights).
        let current = snap.table.live_state().services.remove(service);
        let mut next = live.clone();
        let state = next.services.entry(service.to_string()).or_insert_with(|| {
            current.unwrap_or_else(|| ServiceState::live(svc.pools[svc.live].color.as_str()))
        });
        state.maintenance = on;
        tracing::info!(service, on, "maintenance");
        Ok(next)
    }

    /// Turns maintenance mode of the site named `site` (its first host, as
    /// the access log shows it) on or off (persisted).
    pub fn set_site_maintenance(&self, site: &str, on: bool) -> Result<Ack, ChangeError> {
        self.commit(|live| self.site_maintenance_plan(live, site, on))
    }

    /// The state after maintenance of `site` turned `on` or off.
    fn site_maintenance_plan(
        &self,
        live: &LiveState,
        site: &str,
        on: bool,
    ) -> Result<LiveState, ChangeError> {
        let snap = self.load();
        if snap.table.site_named(site).is_none() {
            return Err(ChangeError::UnknownSite(site.to_string()));
        }
        let mut next = live.clone();
        if on {
            next.sites.insert(
                site.to_string(),
                routes::state::SiteState { maintenance: true },
            );
        } else {
            next.sites.remove(site);
        }
        tracing::info!(site, on, "maintenance");
        Ok(next)
    }

    /// Pauses `service` (`on`) or resumes it: while paused, its new
    /// requests are held at the edge ([`pause::hold`]). Persisted.
    pub fn pause(&self, service: &str, on: bool) -> Result<Ack, ChangeError> {
        self.commit(|live| self.pause_plan(live, service, on))
    }

    /// The state after `service` paused (`on`) or resumed.
    fn pause_plan(
        &self,
        live: &LiveState,
        service: &str,
        on: bool,
    ) -> Result<LiveState, ChangeError> {
        let snap = self.load();
        if snap.table.service(service).is_none() {
            return Err(ChangeError::UnknownService(service.to_string()));
        }
        let mut next = live.clone();
        // Without a saved state, the table's own (the config's live color
        // and weights) is the base, so the pause changes nothing else.
        let mut state = match live.services.get(service) {
            Some(s) => s.clone(),
            None => snap
                .table
                .live_state()
                .services
                .remove(service)
                .ok_or_else(|| ChangeError::UnknownService(service.to_string()))?,
        };
        state.paused = on;
        next.services.insert(service.to_string(), state);
        Ok(next)
    }

    /// Re-reads the config source; an invalid config changes nothing.
    /// Returns warnings (e.g. saved colors that no longer exist).
    pub fn reload(&self) -> Result<Vec<String>, ChangeError> {
        let config = self
            .source
            .load_with(&|c| self.listeners.refuse(c).into_iter().collect())
            .map_err(ChangeError::BadConfig)?;
        let live = self.lock();
        // A start-up would refuse a state file it cannot read: so does a
        // reload, rather than report success for a config that would not
        // survive the next restart. (The running state is not replaced by
        // the file's: the process's own is the newer one.)
        check_live_file(&config.server.state_dir).map_err(ChangeError::BadConfig)?;
        let (snap, mut warnings) = build(Arc::new(config), &live, &self.vitals, &self.metrics)
            .map_err(ChangeError::BadConfig)?;
        let wants = snap
            .table
            .sites
            .iter()
            .any(|s| s.routes.iter().any(|r| r.compress));
        if wants && !self.compression_installed.get().copied().unwrap_or(false) {
            warnings
                .push("compress = true was added: restart duotone to enable compression".into());
        }
        let specs = crate::control::tls::cert_specs(&snap.table.config);
        match &self.certs {
            Some(store) => store.replace_specs(specs).map_err(|e| {
                ChangeError::BadConfig(Diagnostics(vec![routes::Diagnostic {
                    file: self.source.name(),
                    line: 0,
                    key: "sites.tls".into(),
                    message: e.to_string(),
                }]))
            })?,
            // Refused above (`Listeners::refuse`): TLS sites need the
            // https listener, which only a start opens.
            None if !specs.is_empty() => {
                return Err(ChangeError::BadConfig(Diagnostics(vec![
                    routes::Diagnostic {
                        file: self.source.name(),
                        line: 0,
                        key: "sites.tls".into(),
                        message: "listeners cannot change on reload: restart duotone to add https"
                            .into(),
                    },
                ])))
            }
            None => {}
        }
        // A reload that changes max_connections or max_open_files is
        // checked against the file limit again (logged, and in the answer).
        let limits = &snap.table.config.limits;
        if routes::nofile::need_changed(&self.load().table.config.limits, limits) {
            warnings.extend(crate::ops::nofile::check(limits));
        }
        self.store(snap);
        Ok(warnings)
    }
}

/// Starts the drain of upgraded connections (closed after the service's
/// `drain_upgraded`) of every color that took new traffic in `old` and no
/// longer does in `new`, and calls off that of every color that takes
/// traffic again. The color stats are shared between tables.
fn drain_changes(old: &RouteTable, new: &RouteTable) {
    let takes = |table: &RouteTable, svc: &str, color: &routes::Color| {
        table.service(svc).is_some_and(|s| {
            s.pool_index(color.as_str())
                .is_some_and(|i| s.takes_traffic(i))
        })
    };
    for svc in &old.services {
        for (i, pool) in svc.pools.iter().enumerate() {
            if svc.takes_traffic(i) && !takes(new, &svc.name, &pool.color) {
                let after = new
                    .service(&svc.name)
                    .map_or(svc.drain_upgraded, |s| s.drain_upgraded);
                schedule_close(&svc.name, &pool.color, pool.stats.clone(), after);
            }
        }
    }
    for svc in &new.services {
        for (i, pool) in svc.pools.iter().enumerate() {
            if svc.takes_traffic(i) && !takes(old, &svc.name, &pool.color) {
                pool.stats.cancel_drain();
            }
        }
    }
}

/// Closes the upgraded connections of a color that stopped taking traffic
/// once `after` has passed, unless it takes traffic again by then.
fn schedule_close(
    service: &str,
    color: &routes::Color,
    stats: Arc<routes::ColorStats>,
    after: std::time::Duration,
) {
    let due = crate::clock::now_ms().saturating_add(after.as_millis() as u64);
    let epoch = stats.begin_drain(due);
    let (service, color) = (service.to_string(), color.to_string());
    tracing::info!(
        %service,
        %color,
        open = stats.upgraded(),
        "color takes no new traffic: its upgraded connections (WebSockets) close in {after:?}"
    );
    let close = move || {
        if let Some(n) = stats.close_if_current(epoch) {
            tracing::info!(%service, %color, closed = n, "drain: closing upgraded connections");
        }
    };
    if after.is_zero() {
        close();
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(async move {
                tokio::time::sleep(after).await;
                close();
            });
        }
        Err(_) => {
            std::thread::spawn(move || {
                std::thread::sleep(after);
                close();
            });
        }
    }
}

/// The one rule for changes that send traffic somewhere (flip, weights):
/// every color in `receivers` (pool indexes of `svc`) must have a healthy
/// member, unless `force`.
fn gate_traffic(
    svc: &routes::pool::Service,
    receivers: impl IntoIterator<Item = usize>,
    force: bool,
) -> Result<(), ChangeError> {
    if force {
        return Ok(());
    }
    let now = crate::clock::now_ms();
    let down: Vec<&str> = receivers
        .into_iter()
        .filter_map(|i| svc.pools.get(i))
        .filter(|p| !p.is_healthy(now, svc.health.is_some()))
        .map(|p| p.color.as_str())
        .collect();
    match down.as_slice() {
        [] => Ok(()),
        [one] => Err(ChangeError::Unhealthy(format!(
            "color {one:?} of {:?} has no healthy member; use force to send it traffic anyway",
            svc.name
        ))),
        many => Err(ChangeError::Unhealthy(format!(
            "colors {many:?} of {:?} have no healthy member; use force to send them traffic anyway",
            svc.name
        ))),
    }
}

/// Reads `state_dir/live.json` as start-up does; a file that would stop a
/// restart is a diagnostic naming the file (and line, for bad JSON).
fn check_live_file(state_dir: &std::path::Path) -> Result<(), Diagnostics> {
    let path = persist::live_path(state_dir);
    persist::read_live(state_dir).map(drop).map_err(|e| {
        let line = e
            .chain()
            .find_map(|c| c.downcast_ref::<serde_json::Error>())
            .map_or(0, serde_json::Error::line);
        Diagnostics(vec![routes::Diagnostic {
            file: path.display().to_string(),
            line,
            key: String::new(),
            message: format!(
                "{}; a restart would fail: fix or remove the file",
                e.root_cause()
            ),
        }])
    })
}

/// Compiles a snapshot: the table plus per-route extensions. Returns
/// warnings about saved state that no longer applies (also logged).
/// Public for the fuzz targets, which build their snapshot as the proxy does.
pub fn build(
    config: Arc<Config>,
    live: &LiveState,
    vitals: &Vitals,
    metrics: &crate::metrics::Metrics,
) -> Result<(Snapshot, Vec<String>), Diagnostics> {
    let (table, warnings) = RouteTable::compile(config, live, vitals, &resolve);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let slots = crate::control::slots::build(&table, metrics)?;
    let buffering = crate::net::spool::Limits::prepare(&table.config);
    let pages = crate::control::pages::Pages::build(&table.config)?;
    Ok((
        Snapshot {
            table,
            slots,
            buffering,
            pages,
        },
        warnings,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(server: &str, tls: bool) -> Config {
        let site = if tls {
            "[[sites]]\nhosts = [\"a.test\"]\ntls = \"self-signed\"\n"
        } else {
            "[[sites]]\nhosts = [\"a.test\"]\n"
        };
        let text = format!("[server]\n{server}\nstate_dir = \"/tmp/x\"\n{site}");
        routes::load("t.toml", &text, |_| None).unwrap()
    }

    #[test]
    fn reload_keeps_the_listeners_opened_at_start() {
        let plain = "http = \"127.0.0.1:8080\"\nadmin = \"127.0.0.1:9090\"";
        let both =
            "http = \"127.0.0.1:8080\"\nhttps = \"127.0.0.1:8443\"\nadmin = \"127.0.0.1:9090\"";
        let start = Listeners::of(&config(plain, false), false);
        assert_eq!(start.refuse(&config(plain, false)), None);
        // An https address alone opens nothing, now or at start.
        assert_eq!(start.refuse(&config(both, false)), None);
        let (key, message) = start.refuse(&config(both, true)).unwrap();
        assert_eq!(key.to_string(), "server.https");
        assert_eq!(
            message,
            "listeners cannot change on reload: restart duotone to add https on 127.0.0.1:8443"
        );
        let moved = "http = \"127.0.0.1:8081\"\nadmin = \"127.0.0.1:9090\"";
        let (key, message) = start.refuse(&config(moved, false)).unwrap();
        assert_eq!(key.to_string(), "server.http");
        assert!(
            message.contains("from 127.0.0.1:8080 to 127.0.0.1:8081"),
            "{message}"
        );
        let admin = "http = \"127.0.0.1:8080\"\nadmin = \"127.0.0.1:9091\"";
        assert_eq!(
            start.refuse(&config(admin, false)).unwrap().0.to_string(),
            "server.admin"
        );

        let tls = Listeners::of(&config(both, true), true);
        assert_eq!(tls.https, Some("127.0.0.1:8443".parse().unwrap()));
        assert_eq!(tls.refuse(&config(both, true)), None);
        // TLS sites may go; the https listener stays configured.
        assert_eq!(tls.refuse(&config(both, false)), None);
        let other =
            "http = \"127.0.0.1:8080\"\nhttps = \"127.0.0.1:9443\"\nadmin = \"127.0.0.1:9090\"";
        let (key, message) = tls.refuse(&config(other, true)).unwrap();
        assert_eq!(key.to_string(), "server.https");
        assert!(
            message.contains("move https from 127.0.0.1:8443 to 127.0.0.1:9443"),
            "{message}"
        );
        assert!(tls.refuse(&config(plain, false)).is_some());
    }
}
