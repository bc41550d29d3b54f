//! Automatic rollback: a watch of one color of a service, usually started
//! right after a flip to it. A thread samples the color's outcome counters
//! ([`routes::ColorStats::outcomes`], fed once per finished request) every
//! [`TICK`] and judges what they counted since the watch started with the
//! pure rule [`routes::watch::judge`]: a threshold crossed flips the service
//! back to `rollback_to` (refused, like any flip, when that color has no
//! healthy member: then the watch has `failed`), the window over without a
//! breach has `passed`, and a flip or weights change of the service by
//! someone else during the watch ends it as `superseded`.
//!
//! Watches live in memory only: a restart ends them (the service keeps
//! whatever color is live, as persisted).

use super::{ChangeError, Control};
use routes::watch::{judge, Limits, Outcomes, Verdict};
use routes::{ColorStats, LiveState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How often a watch looks at the counters.
pub const TICK: Duration = Duration::from_millis(50);

/// A watch to start: which color, where to roll back to, the thresholds.
#[derive(Debug, Clone)]
pub struct Watch {
    /// The color watched (default: the live color).
    pub color: Option<String>,
    /// The color to flip back to on a breach (default: the other color of
    /// two).
    pub rollback_to: Option<String>,
    /// Window and thresholds.
    pub limits: Limits,
}

/// Where a watch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchState {
    /// Sampling the counters.
    Watching,
    /// The window passed without a threshold crossed.
    Passed,
    /// A threshold was crossed and the service was flipped back.
    RolledBack,
    /// A threshold was crossed but the flip back was refused (e.g. the
    /// color to roll back to has no healthy member): nothing was flipped.
    Failed,
    /// The service was flipped or its weights changed by someone else.
    Superseded,
    /// Cancelled through the admin API.
    Cancelled,
}

impl WatchState {
    /// The name used in the API, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            WatchState::Watching => "watching",
            WatchState::Passed => "passed",
            WatchState::RolledBack => "rolled_back",
            WatchState::Failed => "failed",
            WatchState::Superseded => "superseded",
            WatchState::Cancelled => "cancelled",
        }
    }
}

/// A watch as the admin API shows it (the service view's `watch`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchView {
    /// The color watched.
    pub color: String,
    /// The color a breach flips back to.
    pub rollback_to: String,
    /// Where the watch is.
    pub state: WatchState,
    /// Responses of the watched color since the watch started.
    pub requests: u64,
    /// Of those, 5xx (the app's and the edge's 502/504).
    pub errors: u64,
    /// `errors / requests` (0 without requests).
    pub error_rate: f64,
    /// The p99 latency in milliseconds (upper bound of its histogram
    /// bucket, at most 12.5 % above); absent without requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Why the watch ended; absent while watching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Milliseconds left in the window (0 once ended).
    pub remaining_ms: u64,
    /// Milliseconds the watch has run (until it ended).
    pub elapsed_ms: u64,
    /// The window, in milliseconds.
    pub window_ms: u64,
    /// The largest accepted share of 5xx.
    pub max_error_rate: f64,
    /// The largest accepted p99 latency, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_ms: Option<u64>,
    /// Responses needed before a threshold applies.
    pub min_requests: u64,
}

/// A service's traffic as the live state sets it (live color, weights): a
/// change of it during a watch supersedes the watch.
type Traffic = Option<(String, Option<BTreeMap<String, u32>>)>;

fn traffic(live: &LiveState, service: &str) -> Traffic {
    live.services
        .get(service)
        .map(|s| (s.live.clone(), s.weights.clone()))
}

/// One watch, kept after it ended (the latest per service) so its outcome
/// can be read.
struct Entry {
    id: u64,
    color: String,
    rollback_to: String,
    limits: Limits,
    /// The watched color's counters, shared across table generations.
    stats: Arc<ColorStats>,
    /// Their reading at the start.
    baseline: Outcomes,
    started: Instant,
    traffic: Traffic,
    state: WatchState,
    reason: Option<String>,
    /// What was seen, and for how long, when the watch ended.
    ended: Option<(Outcomes, Duration)>,
}

impl Entry {
    fn seen(&self) -> (Outcomes, Duration) {
        match &self.ended {
            Some((o, d)) => (o.clone(), *d),
            None => (
                self.stats.outcomes().since(&self.baseline),
                self.started.elapsed(),
            ),
        }
    }

    fn view(&self) -> WatchView {
        let (seen, elapsed) = self.seen();
        let remaining = match self.state {
            WatchState::Watching => self.limits.window.saturating_sub(elapsed),
            _ => Duration::ZERO,
        };
        WatchView {
            color: self.color.clone(),
            rollback_to: self.rollback_to.clone(),
            state: self.state,
            requests: seen.responses,
            errors: seen.errors,
            error_rate: seen.error_rate(),
            p99_ms: seen.quantile(0.99).map(|d| d.as_secs_f64() * 1e3),
            reason: self.reason.clone(),
            remaining_ms: remaining.as_millis() as u64,
            elapsed_ms: elapsed.as_millis() as u64,
            window_ms: self.limits.window.as_millis() as u64,
            max_error_rate: self.limits.max_error_rate,
            max_latency_ms: self.limits.max_latency.map(|d| d.as_millis() as u64),
            min_requests: self.limits.min_requests,
        }
    }
}

/// The control plane's watches: the latest per service. Never touched on
/// the request path.
#[derive(Default)]
pub struct Watches {
    map: Mutex<BTreeMap<String, Entry>>,
    next: AtomicU64,
}

impl Watches {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Control {
    /// Starts watching a color of `service` (see the module docs). Refused
    /// when the color takes no traffic or a watch of the service is
    /// running. Returns the new watch's view.
    pub fn watch(self: &Arc<Self>, service: &str, w: Watch) -> Result<WatchView, ChangeError> {
        w.limits.check().map_err(ChangeError::Invalid)?;
        let live = self.lock();
        let snap = self.load();
        let svc = snap
            .table
            .service(service)
            .ok_or_else(|| ChangeError::UnknownService(service.to_string()))?;
        let no_color =
            |c: &str| ChangeError::Invalid(format!("service {service:?} has no color {c:?}"));
        let color = w
            .color
            .unwrap_or_else(|| svc.pools[svc.live].color.to_string());
        let watched = svc.pool_index(&color).ok_or_else(|| no_color(&color))?;
        let rollback_to = match w.rollback_to {
            Some(c) => c,
            None if svc.pools.len() == 2 => svc.pools[1 - watched].color.to_string(),
            None => {
                return Err(ChangeError::Invalid(format!(
                    "service {service:?} has {} colors: say which one to roll back to",
                    svc.pools.len()
                )))
            }
        };
        let back = svc
            .pool_index(&rollback_to)
            .ok_or_else(|| no_color(&rollback_to))?;
        if back == watched {
            return Err(ChangeError::Invalid(format!(
                "cannot roll {color:?} back to itself: rollback_to must be another color"
            )));
        }
        if !svc.takes_traffic(watched) {
            return Err(ChangeError::Conflict(format!(
                "color {color:?} of {service:?} takes no traffic, so there is nothing to watch: \
                 flip to it (or give it weight) first"
            )));
        }
        let stats = svc.pools[watched].stats.clone();
        let mut watches = self.watches.lock();
        if let Some(e) = watches
            .get(service)
            .filter(|e| e.state == WatchState::Watching)
        {
            return Err(ChangeError::Conflict(format!(
                "a watch of {service:?} ({}, rolling back to {}) is running; cancel it first \
                 (DELETE /v1/services/{service}/watch)",
                e.color, e.rollback_to
            )));
        }
        let id = self.watches.next.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            id,
            color: color.clone(),
            rollback_to: rollback_to.clone(),
            limits: w.limits,
            baseline: stats.outcomes(),
            stats,
            started: Instant::now(),
            traffic: traffic(&live, service),
            state: WatchState::Watching,
            reason: None,
            ended: None,
        };
        let view = entry.view();
        watches.insert(service.to_string(), entry);
        drop(watches);
        drop(live);
        let (me, name) = (Arc::downgrade(self), service.to_string());
        let spawned = std::thread::Builder::new()
            .name("duotone-watch".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                match me.upgrade() {
                    Some(control) if control.watch_tick(&name, id) => {}
                    _ => return,
                }
            });
        if let Err(e) = spawned {
            self.watches.lock().remove(service);
            return Err(ChangeError::Internal(anyhow::anyhow!(
                "cannot start the watch: {e}"
            )));
        }
        let l = &w.limits;
        tracing::info!(
            service,
            %color,
            %rollback_to,
            window_ms = l.window.as_millis() as u64,
            max_error_rate = l.max_error_rate,
            max_latency_ms = l.max_latency.map(|d| d.as_millis() as u64),
            min_requests = l.min_requests,
            "watch started: rolling back to {rollback_to} if {color} crosses a threshold"
        );
        Ok(view)
    }

    /// Cancels the running watch of `service`; returns its view.
    pub fn cancel_watch(&self, service: &str) -> Result<WatchView, ChangeError> {
        if self.load().table.service(service).is_none() {
            return Err(ChangeError::UnknownService(service.to_string()));
        }
        let mut watches = self.watches.lock();
        match watches
            .get_mut(service)
            .filter(|e| e.state == WatchState::Watching)
        {
            Some(e) => {
                self.end_watch(
                    service,
                    e,
                    WatchState::Cancelled,
                    "cancelled through the admin API".into(),
                    None,
                );
                Ok(e.view())
            }
            None => Err(ChangeError::Conflict(format!(
                "no watch of {service:?} is running"
            ))),
        }
    }

    /// The latest watch of `service` (running or ended), if any.
    pub fn watch_view(&self, service: &str) -> Option<WatchView> {
        self.watches.lock().get(service).map(Entry::view)
    }

    /// The latest watch of every service and the current snapshot, read
    /// together: a watch that rolled back is never shown beside the
    /// snapshot from before its flip.
    pub fn watched_snapshot(&self) -> (BTreeMap<String, WatchView>, Arc<super::Snapshot>) {
        let watches = self.watches.lock();
        let views = watches.iter().map(|(k, e)| (k.clone(), e.view())).collect();
        (views, self.load())
    }

    /// One look at watch `id` of `service`; false once it has ended.
    fn watch_tick(&self, service: &str, id: u64) -> bool {
        // Serialized with flips and weights: a change by someone else is
        // either seen here (superseded) or comes after the rollback.
        let mut live = self.lock();
        let mut watches = self.watches.lock();
        let Some(e) = watches
            .get_mut(service)
            .filter(|e| e.id == id && e.state == WatchState::Watching)
        else {
            return false;
        };
        if traffic(&live, service) != e.traffic {
            self.end_watch(
                service,
                e,
                WatchState::Superseded,
                "the service was flipped or its weights changed during the watch".into(),
                None,
            );
            return false;
        }
        let seen = e.seen();
        match judge(&e.limits, &seen.0, seen.1) {
            Verdict::Watching => true,
            Verdict::Passed(why) => {
                self.end_watch(service, e, WatchState::Passed, why, Some(seen));
                false
            }
            Verdict::Breached(why) => {
                let to = e.rollback_to.clone();
                let result = if self.clustered() {
                    // With [cluster] the rollback goes through the shared
                    // state, so every node rolls back; this node applies it
                    // as any other change, hence without the locks held.
                    drop(watches);
                    drop(live);
                    let result = self.flip(service, Some(&to), false).map(drop);
                    let mut watches = self.watches.lock();
                    let Some(e) = watches
                        .get_mut(service)
                        .filter(|e| e.id == id && e.state == WatchState::Watching)
                    else {
                        return false;
                    };
                    self.end_rollback(service, e, &why, &to, seen, result);
                    return false;
                } else {
                    self.flip_locked(&mut live, service, Some(&to), false)
                };
                self.end_rollback(service, e, &why, &to, seen, result);
                false
            }
        }
    }

    /// Ends watch `e` after its rollback to `to` was made (or refused).
    fn end_rollback(
        &self,
        service: &str,
        e: &mut Entry,
        why: &str,
        to: &str,
        seen: (Outcomes, Duration),
        result: Result<(), ChangeError>,
    ) {
        match result {
            Ok(()) => self.end_watch(
                service,
                e,
                WatchState::RolledBack,
                format!("{why}: rolled back to {to}"),
                Some(seen),
            ),
            Err(err) => self.end_watch(
                service,
                e,
                WatchState::Failed,
                format!("{why}, but the rollback to {to} was refused: {err}"),
                Some(seen),
            ),
        }
    }

    /// Ends watch `e` of `service` with `state`: freezes its figures, logs
    /// the decision with them and counts it.
    /// `seen`: the figures the decision was made on (`None`: as of now).
    fn end_watch(
        &self,
        service: &str,
        e: &mut Entry,
        state: WatchState,
        reason: String,
        seen: Option<(Outcomes, Duration)>,
    ) {
        e.ended = Some(seen.unwrap_or_else(|| e.seen()));
        e.state = state;
        e.reason = Some(reason);
        let v = e.view();
        let reason = v.reason.as_deref().unwrap_or("");
        macro_rules! log {
            ($level:ident) => {
                tracing::$level!(
                    service,
                    color = %v.color,
                    rollback_to = %v.rollback_to,
                    decision = state.as_str(),
                    requests = v.requests,
                    errors = v.errors,
                    error_rate = v.error_rate,
                    p99_ms = v.p99_ms,
                    elapsed_ms = v.elapsed_ms,
                    "watch {}: {reason}",
                    state.as_str()
                )
            };
        }
        match state {
            WatchState::RolledBack | WatchState::Failed => log!(warn),
            _ => log!(info),
        }
        self.metrics.watch_decision(service, state.as_str());
    }
}
