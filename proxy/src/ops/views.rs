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
    /// The sticky canary cookie, when `canary.sticky` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyView>,
    /// The preview override, when a preview secret is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<PreviewView>,
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

/// A service's sticky canary cookie.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StickyView {
    /// The cookie's name.
    pub cookie: String,
    /// Its `Max-Age`, in seconds.
    pub max_age_s: u64,
    /// Whether it is read and set now: weights send traffic to more than
    /// one color.
    pub active: bool,
}

/// A service's preview override (the secret is never shown).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreviewView {
    /// The request header that carries a token.
    pub header: String,
    /// The cookie that carries a token.
    pub cookie: String,
}

/// A preview token: `GET /v1/services/{name}/preview/{color}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreviewToken {
    /// The service.
    pub service: String,
    /// The color it reaches.
    pub color: String,
    /// The hex HMAC-SHA256 token.
    pub token: String,
    /// What the header or cookie holds: `COLOR.TOKEN`.
    pub value: String,
    /// The header to send it in.
    pub header: String,
    /// The cookie to send it in.
    pub cookie: String,
    /// Where the service is served: the first route to it on a site with a
    /// host name (scheme, host, route prefix), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl PreviewToken {
    /// The token of `color` of `service` in `table`; refused for an
    /// unknown service or color, or a service without a preview secret.
    pub fn of(
        table: &routes::RouteTable,
        service: &str,
        color: &str,
    ) -> Result<Self, crate::control::ChangeError> {
        use crate::control::ChangeError;
        let idx = table
            .services
            .iter()
            .position(|s| s.name == service)
            .ok_or_else(|| ChangeError::UnknownService(service.to_string()))?;
        let svc = &table.services[idx];
        let pool = svc.pool_index(color).ok_or_else(|| {
            ChangeError::Invalid(format!("service {service:?} has no color {color:?}"))
        })?;
        let preview = svc.canary.preview.as_ref().ok_or_else(|| {
            ChangeError::Conflict(format!(
                "service {service:?} has no preview secret: set \
                 preview = {{ secret = \"${{DUOTONE_PREVIEW_SECRET}}\" }} in [services.{service}]"
            ))
        })?;
        let token = preview.token(pool).unwrap_or_default().to_string();
        Ok(PreviewToken {
            service: service.to_string(),
            color: color.to_string(),
            value: format!("{color}.{token}"),
            token,
            header: preview.header.clone(),
            cookie: preview.cookie.clone(),
            url: url_of(table, idx),
        })
    }
}

/// The URL of the first route to service `idx` on a site with a host name.
fn url_of(table: &routes::RouteTable, idx: usize) -> Option<String> {
    table
        .sites
        .iter()
        .zip(&table.config.sites)
        .find_map(|(site, spec)| {
            let host = spec.hosts.iter().find(|h| !h.contains('*'))?;
            let route = site
                .routes
                .iter()
                .filter(|r| matches!(r.action, routes::Action::Proxy(i) if i == idx))
                .min_by_key(|r| r.prefix.len())?;
            let scheme = if site.tls { "https" } else { "http" };
            Some(format!("{scheme}://{host}{}", route.prefix))
        })
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
            sticky: svc.canary.sticky.as_ref().map(|s| StickyView {
                cookie: s.cookie.clone(),
                max_age_s: s.max_age.as_secs(),
                active: svc.canary.active,
            }),
            preview: svc.canary.preview.as_ref().map(|p| PreviewView {
                header: p.header.clone(),
                cookie: p.cookie.clone(),
            }),
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
