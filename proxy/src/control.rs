//! The control plane: owns the `ArcSwap`ped [`Snapshot`] that requests read,
//! and changes it (flip, weights, reload) by compiling a new table.

use crate::persist;
use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use routes::state::ServiceState;
use routes::{Config, Diagnostics, LiveState, RouteTable, Vitals};
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

/// Everything a request needs, swapped atomically as one unit.
pub struct Snapshot {
    /// The routing table.
    pub table: RouteTable,
    /// Extensions built with I/O for each route slot (static file servers).
    pub slots: Vec<crate::slots::Slot>,
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
        routes::load_checked(
            &self.name(),
            &self.text()?,
            |v| std::env::var(v).ok(),
            &crate::slots::io_checks,
        )
    }

    /// What `duotone check` needs: like [`Source::load`], except that static
    /// roots missing on this machine are warnings (returned beside the
    /// config), not errors.
    pub fn load_for_check(&self) -> Result<(Config, Diagnostics), Diagnostics> {
        routes::load_with_warnings(
            &self.name(),
            &self.text()?,
            |v| std::env::var(v).ok(),
            &crate::slots::io_checks_here,
            &crate::slots::missing_static_roots,
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
    /// The request is malformed or names an unknown color.
    #[error("{0}")]
    Invalid(String),
    /// The target color has no healthy member.
    #[error("{0}")]
    Unhealthy(String),
    /// The config file is invalid.
    #[error("{0}")]
    BadConfig(Diagnostics),
    /// Persisting or building failed.
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

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
        }))
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
        self.current.store(Arc::new(snap));
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *live = next;
        Ok(())
    }

    /// Makes `to` the live color of `service` (the other one of two when
    /// `None`). Refuses a color with no healthy member unless `force`.
    pub fn flip(&self, service: &str, to: Option<&str>, force: bool) -> Result<(), ChangeError> {
        let mut live = self.lock();
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
        next.services.insert(
            service.to_string(),
            ServiceState {
                live: pool.color.to_string(),
                weights: None,
            },
        );
        self.apply(&mut live, next, snap.table.config.clone())
    }

    /// Sets canary weights for `service`. Colors left out get weight 0.
    /// Refuses weight on a color with no healthy member unless `force`.
    pub fn set_weights(
        &self,
        service: &str,
        weights: BTreeMap<String, u32>,
        force: bool,
    ) -> Result<(), ChangeError> {
        let mut live = self.lock();
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
        next.services.insert(
            service.to_string(),
            ServiceState {
                live: svc.pools[svc.live].color.to_string(),
                weights: Some(weights),
            },
        );
        self.apply(&mut live, next, snap.table.config.clone())
    }

    /// Re-reads the config source; an invalid config changes nothing.
    /// Returns warnings (e.g. saved colors that no longer exist).
    pub fn reload(&self) -> Result<Vec<String>, ChangeError> {
        let config = self.source.load().map_err(ChangeError::BadConfig)?;
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
        let specs = crate::tls::cert_specs(&snap.table.config);
        match &self.certs {
            Some(store) => store.replace_specs(specs).map_err(|e| {
                ChangeError::BadConfig(Diagnostics(vec![routes::Diagnostic {
                    file: self.source.name(),
                    line: 0,
                    key: "sites.tls".into(),
                    message: e.to_string(),
                }]))
            })?,
            None if !specs.is_empty() => warnings
                .push("TLS sites were added: restart duotone to open the https listener".into()),
            None => {}
        }
        self.current.store(Arc::new(snap));
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(warnings)
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
fn build(
    config: Arc<Config>,
    live: &LiveState,
    vitals: &Vitals,
    metrics: &crate::metrics::Metrics,
) -> Result<(Snapshot, Vec<String>), Diagnostics> {
    let (table, warnings) = RouteTable::compile(config, live, vitals, &resolve);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let slots = crate::slots::build(&table, metrics)?;
    Ok((Snapshot { table, slots }, warnings))
}
