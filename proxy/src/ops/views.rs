//! JSON views of services for the admin API and CLI.

pub use crate::control::watch::{WatchState, WatchView};
use routes::{HealthState, Service};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A service as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceView {
    /// Service name.
    pub name: String,
    /// The live color.
    pub live: String,
    /// Canary weights, when set.
    pub weights: Option<BTreeMap<String, u32>>,
    /// Requests get the maintenance page (unless let through).
    #[serde(default)]
    pub maintenance: bool,
    /// True when the service has active health checks (then a member counts
    /// as healthy only after passing one).
    #[serde(default)]
    pub active_checks: bool,
    /// How long upgraded connections of a color that stopped taking new
    /// traffic stay open before the edge closes them, in milliseconds.
    #[serde(default)]
    pub drain_upgraded_ms: u64,
    /// New requests are held at the edge until a resume.
    #[serde(default)]
    pub paused: bool,
    /// Requests held by the pause now.
    #[serde(default)]
    pub held: u64,
    /// How requests are held while paused (`pause = { … }`).
    #[serde(default)]
    pub pause: PauseView,
    /// Per color.
    pub colors: BTreeMap<String, ColorView>,
    /// The latest watch of a color (automatic rollback), running or ended;
    /// absent when none was started since the proxy started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchView>,
}

/// A service's `pause` settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PauseView {
    /// Longest a request is held, in milliseconds.
    pub timeout_ms: u64,
    /// Most requests held at once.
    pub queue: u64,
    /// `Retry-After` of a refusal, in seconds.
    pub retry_after_s: u64,
}

/// One color of a service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColorView {
    /// True for the live color.
    pub live: bool,
    /// True when at least one member can take traffic.
    pub healthy: bool,
    /// Requests being proxied to this color now (upgraded connections not
    /// included).
    pub in_flight: i64,
    /// Upgraded connections (WebSockets) open to this color now.
    #[serde(default)]
    pub upgraded: i64,
    /// While this color takes no new traffic: milliseconds until the edge
    /// closes its upgraded connections (`drain_upgraded`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgraded_close_in_ms: Option<u64>,
    /// Requests sent to this color since start.
    pub requests: u64,
    /// Members.
    pub members: Vec<MemberView>,
}

/// One member of a color.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    /// Address as configured.
    pub addr: String,
    /// Active check verdict: up, down or unknown.
    pub health: String,
    /// Skipped after connect failures.
    pub ejected: bool,
    /// Can take traffic now.
    pub healthy: bool,
    /// Active checks completed so far.
    #[serde(default)]
    pub checks: u64,
    /// Whether the last active check passed (absent before the first one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_ok: Option<bool>,
    /// Why the last active check failed ("connection refused", "no such
    /// socket …", "timed out after 1s", "status 503", …); absent when it
    /// passed or before the first one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_error: Option<String>,
}

impl MemberView {
    /// The member's state in words: "up", "down (connection refused)", …
    pub fn describe(&self) -> String {
        let mut out = self.health.clone();
        if let Some(e) = &self.last_check_error {
            out.push_str(&format!(" ({e})"));
        }
        if self.ejected {
            out.push_str(", ejected after errors");
        }
        out
    }
}

impl ServiceView {
    /// Describes `svc` as of `now_ms` (without its watch: see
    /// [`ServiceView::with_watch`]).
    pub fn of(svc: &Service, now_ms: u64) -> Self {
        let checked = svc.health.is_some();
        let colors = svc
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let members = p
                    .members
                    .iter()
                    .map(|m| {
                        let state = m.health.state();
                        MemberView {
                            addr: m.written(),
                            health: state.as_str().to_string(),
                            ejected: m.health.is_ejected(now_ms),
                            healthy: m.health.is_available(now_ms)
                                && (!checked || state == HealthState::Up),
                            checks: m.health.checks(),
                            last_check_ok: m.health.last_check_ok(),
                            last_check_error: m.health.last_error().map(|e| e.to_string()),
                        }
                    })
                    .collect();
                (
                    p.color.to_string(),
                    ColorView {
                        live: i == svc.live,
                        healthy: p.is_healthy(now_ms, checked),
                        in_flight: p.stats.in_flight(),
                        upgraded: p.stats.upgraded(),
                        upgraded_close_in_ms: p
                            .stats
                            .close_due_ms()
                            .map(|due| due.saturating_sub(now_ms)),
                        requests: p.stats.requests(),
                        members,
                    },
                )
            })
            .collect();
        ServiceView {
            name: svc.name.clone(),
            live: svc.pools[svc.live].color.to_string(),
            weights: svc
                .weight_pairs()
                .map(|w| w.into_iter().map(|(c, w)| (c.to_string(), w)).collect()),
            maintenance: svc.maintenance,
            active_checks: checked,
            drain_upgraded_ms: svc.drain_upgraded.as_millis() as u64,
            paused: svc.paused,
            held: svc.holds.held(),
            pause: PauseView {
                timeout_ms: svc.pause.timeout.as_millis() as u64,
                queue: svc.pause.queue,
                retry_after_s: svc.pause.retry_after_secs(),
            },
            colors,
            watch: None,
        }
    }

    /// The view with the service's latest watch, from `watches` (see
    /// [`crate::control::Control::watched_snapshot`]).
    pub fn with_watch(mut self, watches: &BTreeMap<String, WatchView>) -> Self {
        self.watch = watches.get(&self.name).cloned();
        self
    }
}

/// A site as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteView {
    /// The site's name: its first host, as the access log shows it.
    pub name: String,
    /// Its host patterns.
    pub hosts: Vec<String>,
    /// Requests get the maintenance page (unless let through).
    #[serde(default)]
    pub maintenance: bool,
}

impl SiteView {
    /// Every site of `table`, in config order.
    pub fn all(table: &routes::RouteTable) -> Vec<SiteView> {
        table
            .sites
            .iter()
            .zip(&table.config.sites)
            .map(|(site, spec)| SiteView {
                name: site.name.clone(),
                hosts: spec.hosts.clone(),
                maintenance: site.maintenance,
            })
            .collect()
    }
}
