//! The compiled routing table: host lookup, longest-prefix path match, and
//! the services with their color pools. Built once per config load, flip or
//! weight change, then only read.

use crate::config::{ActionSpec, Config, IpNet, RouteSpec, ServiceSpec, StaticSpec};
use crate::pool::{Color, ColorStats, Member, MemberAddr, MemberHealth, Pool, Service};
use crate::state::LiveState;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Health and counters that outlive a single table, keyed by service,
/// color and member, so flips and reloads keep them.
#[derive(Debug, Default)]
pub struct Vitals {
    members: Mutex<HashMap<(String, String, MemberAddr), Arc<MemberHealth>>>,
    colors: Mutex<HashMap<(String, String), Arc<ColorStats>>>,
    holds: Mutex<HashMap<String, Arc<crate::pause::Holds>>>,
}

impl Vitals {
    fn member(&self, svc: &str, color: &str, addr: &MemberAddr) -> Arc<MemberHealth> {
        let mut m = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        m.entry((svc.to_string(), color.to_string(), addr.clone()))
            .or_default()
            .clone()
    }

    fn color(&self, svc: &str, color: &str) -> Arc<ColorStats> {
        let mut m = self.colors.lock().unwrap_or_else(PoisonError::into_inner);
        m.entry((svc.to_string(), color.to_string()))
            .or_default()
            .clone()
    }

    fn holds(&self, svc: &str) -> Arc<crate::pause::Holds> {
        let mut m = self.holds.lock().unwrap_or_else(PoisonError::into_inner);
        m.entry(svc.to_string()).or_default().clone()
    }
}

/// What a matched route does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Proxy to `RouteTable::services[i]`.
    Proxy(usize),
    /// Serve files.
    Static(Arc<StaticSpec>),
    /// Redirect to `to` (with `$path` replaced) using `status`.
    Redirect {
        /// Target template.
        to: String,
        /// Status code.
        status: u16,
    },
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Path prefix.
    pub prefix: String,
    /// What to do.
    pub action: Action,
    /// Number of this route in the whole table (for per-route side tables).
    pub slot: usize,
    /// Served on plain HTTP even when the site has TLS.
    pub allow_http: bool,
    /// Remove the prefix before proxying.
    pub strip_prefix: bool,
    /// Body limit for this route.
    pub max_body: u64,
    /// Basic auth users and bcrypt hashes.
    pub basic_auth: Vec<(String, String)>,
    /// Allowed client networks; empty allows all.
    pub allow: Vec<IpNet>,
    /// Compress text responses.
    pub compress: bool,
    /// Response fields added to 2xx/3xx answers (the site's and the route's).
    pub headers: crate::headers::AddHeaders,
    /// Upstream timeouts when the route overrides its service's.
    pub timeouts: Option<crate::config::Timeouts>,
    /// Read the whole request body before the upstream is used (`true`
    /// unless the route says otherwise; meaningful for service routes).
    pub buffer_requests: bool,
    /// Read the upstream response whatever the client's pace (`true`
    /// unless the route says otherwise; meaningful for service routes).
    pub buffer_responses: bool,
}

impl Route {
    /// The upstream timeouts for a request this route proxies to `service`:
    /// the route's own where it sets them, else the service's.
    pub fn upstream_timeouts<'a>(&'a self, service: &'a Service) -> &'a crate::config::Timeouts {
        self.timeouts.as_ref().unwrap_or(&service.timeouts)
    }
}

/// A compiled site.
#[derive(Debug, Clone)]
pub struct Site {
    /// Label: the first host.
    pub name: String,
    /// True when the site is served over HTTPS (plain HTTP redirects).
    pub tls: bool,
    /// HSTS header value.
    pub hsts: Option<String>,
    /// Requests get the maintenance page (unless let through).
    pub maintenance: bool,
    /// Routes, longest prefix first.
    pub routes: Vec<Route>,
}

impl Site {
    /// The route with the longest prefix of `path`.
    pub fn find(&self, path: &str) -> Option<&Route> {
        self.routes.get(self.position(path)?)
    }

    /// The index of the route with the longest prefix of `path`. `path`
    /// must be canonical ([`crate::path::normalize`]).
    pub fn position(&self, path: &str) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| path.starts_with(r.prefix.as_str()))
    }
}

/// The whole compiled table, read once per request through an `ArcSwap`.
#[derive(Debug)]
pub struct RouteTable {
    /// The configuration this table was compiled from.
    pub config: Arc<Config>,
    /// Sites in config order.
    pub sites: Vec<Site>,
    /// Services in config order (sorted by name).
    pub services: Vec<Service>,
    exact: HashMap<Box<str>, usize>,
    wildcard: HashMap<Box<str>, usize>,
    default: Option<usize>,
    routes: usize,
}

impl RouteTable {
    /// Compiles `config` with run-time overrides from `live`. Names are
    /// resolved with `resolve`; health and counters come from `vitals`.
    /// Returns the table and warnings about overrides that no longer apply.
    pub fn compile(
        config: Arc<Config>,
        live: &LiveState,
        vitals: &Vitals,
        resolve: &dyn Fn(&str, u16) -> Option<SocketAddr>,
    ) -> (RouteTable, Vec<String>) {
        let mut warnings = Vec::new();
        let services: Vec<Service> = config
            .services
            .iter()
            .map(|s| compile_service(s, live, vitals, resolve, &mut warnings))
            .collect();
        let mut slot = 0;
        let mut sites = Vec::new();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        for (i, s) in config.sites.iter().enumerate() {
            for h in &s.hosts {
                if h == "*" {
                    default = Some(i);
                } else if let Some(suffix) = h.strip_prefix("*.") {
                    wildcard.insert(suffix.into(), i);
                } else {
                    exact.insert(h.as_str().into(), i);
                }
            }
            let mut routes: Vec<Route> = s
                .routes
                .iter()
                .map(|r| {
                    slot += 1;
                    compile_route(r, slot - 1, &config, &s.headers)
                })
                .collect();
            routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
            sites.push(Site {
                name: s.name().to_string(),
                tls: s.tls != crate::config::Tls::Off,
                hsts: s.hsts.as_ref().map(|h| h.value.clone()),
                maintenance: live.sites.get(s.name()).is_some_and(|st| st.maintenance),
                routes,
            });
        }
        for name in live.sites.keys() {
            if !sites.iter().any(|s| s.name == *name) {
                warnings.push(format!(
                    "site {name:?}: saved maintenance state names no site of the config; ignored"
                ));
            }
        }
        let table = RouteTable {
            config,
            sites,
            services,
            exact,
            wildcard,
            default,
            routes: slot,
        };
        (table, warnings)
    }

    /// Number of routes in the table (slots are `0..route_count()`).
    pub fn route_count(&self) -> usize {
        self.routes
    }

    /// The site for a host (exact, then the longest `*.` suffix, then `*`).
    /// `host` may carry a port and any case.
    pub fn site(&self, host: &str) -> Option<(usize, &Site)> {
        let host = crate::host::strip_port(host);
        let mut buf = [0u8; 256];
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) && host.len() <= buf.len() {
            let b = &mut buf[..host.len()];
            b.copy_from_slice(host.as_bytes());
            b.make_ascii_lowercase();
            std::str::from_utf8(b).unwrap_or(host)
        } else {
            host
        };
        let idx = self.exact.get(host).copied().or_else(|| {
            if self.wildcard.is_empty() {
                return self.default;
            }
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if let Some(i) = self.wildcard.get(rest) {
                    return Some(*i);
                }
            }
            self.default
        })?;
        Some((idx, &self.sites[idx]))
    }

    /// The site and route indices for a request's host and canonical path
    /// ([`crate::request::check`] gives both).
    pub fn locate(&self, host: &str, path: &str) -> Option<(usize, usize)> {
        let (i, site) = self.site(host)?;
        Some((i, site.position(path)?))
    }

    /// The site and route for a request.
    pub fn find(&self, host: &str, path: &str) -> Option<(usize, &Site, &Route)> {
        let (i, site) = self.site(host)?;
        Some((i, site, site.find(path)?))
    }

    /// A service by name.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The live state this table embodies, for persistence.
    pub fn live_state(&self) -> LiveState {
        let mut st = LiveState::default();
        for s in &self.services {
            st.services.insert(
                s.name.clone(),
                crate::state::ServiceState {
                    live: s.pools[s.live].color.to_string(),
                    weights: s
                        .weight_pairs()
                        .map(|w| w.into_iter().map(|(c, w)| (c.to_string(), w)).collect()),
                    paused: s.paused,
                    maintenance: s.maintenance,
                },
            );
        }
        for s in self.sites.iter().filter(|s| s.maintenance) {
            st.sites.insert(
                s.name.clone(),
                crate::state::SiteState { maintenance: true },
            );
        }
        st
    }

    /// A site by name (its first host, as the access log shows it).
    pub fn site_named(&self, name: &str) -> Option<(usize, &Site)> {
        self.sites.iter().enumerate().find(|(_, s)| s.name == name)
    }
}

fn compile_route(
    r: &RouteSpec,
    slot: usize,
    config: &Config,
    site_headers: &[(String, String)],
) -> Route {
    let max_body = config.limits.max_body;
    let action = match &r.action {
        ActionSpec::Proxy(name) => Action::Proxy(config.service_index(name).unwrap_or(usize::MAX)),
        ActionSpec::Static(s) => Action::Static(Arc::new(s.clone())),
        ActionSpec::Redirect { to, status } => Action::Redirect {
            to: to.clone(),
            status: *status,
        },
    };
    Route {
        prefix: r.path.clone(),
        action,
        slot,
        allow_http: r.allow_http,
        strip_prefix: r.strip_prefix,
        max_body: r.max_body.unwrap_or(max_body),
        basic_auth: r.basic_auth.clone(),
        allow: r.allow.clone(),
        compress: r.compress,
        headers: crate::headers::AddHeaders::merge(site_headers, &r.headers),
        buffer_requests: r.buffer_requests,
        buffer_responses: r.buffer_responses,
        timeouts: match &r.action {
            ActionSpec::Proxy(name) if !r.timeouts.is_empty() => config
                .services
                .iter()
                .find(|s| s.name == *name)
                .map(|s| r.timeouts.over(&s.timeouts)),
            _ => None,
        },
    }
}

fn compile_service(
    s: &ServiceSpec,
    live: &LiveState,
    vitals: &Vitals,
    resolve: &dyn Fn(&str, u16) -> Option<SocketAddr>,
    warnings: &mut Vec<String>,
) -> Service {
    let pools: Vec<Pool> = s
        .colors
        .iter()
        .map(|(color, addrs)| {
            let members = addrs
                .iter()
                .map(|a| Member {
                    protocol: s.protocol,
                    resolved: match a {
                        MemberAddr::Tcp(sa) => Some(*sa),
                        MemberAddr::Named(h, p) => resolve(h, *p),
                        MemberAddr::Unix(_) => None,
                    },
                    health: vitals.member(&s.name, color.as_str(), a),
                    addr: a.clone(),
                })
                .collect();
            Pool::new(
                color.clone(),
                members,
                vitals.color(&s.name, color.as_str()),
            )
        })
        .collect();
    let find = |c: &str| pools.iter().position(|p| p.color.as_str() == c);
    let mut live_idx = find(s.live.as_str()).unwrap_or(0);
    let mut weights: Option<Vec<(Color, u32)>> = s.weights.clone();
    if let Some(st) = live.services.get(&s.name) {
        match find(&st.live) {
            Some(i) => {
                live_idx = i;
                weights = st.weights.as_ref().map(|w| {
                    pools
                        .iter()
                        .map(|p| {
                            (
                                p.color.clone(),
                                w.get(p.color.as_str()).copied().unwrap_or(0),
                            )
                        })
                        .collect()
                });
            }
            None => warnings.push(format!(
                "service {}: saved live color {:?} no longer exists; using {:?} from the config",
                s.name, st.live, s.live
            )),
        }
    }
    let cumulative = weights.and_then(|w| {
        let mut acc = 0u32;
        let cum: Vec<u32> = w
            .iter()
            .map(|(_, x)| {
                acc = acc.saturating_add(*x);
                acc
            })
            .collect();
        (acc > 0).then_some(cum)
    });
    let split = cumulative.as_deref().is_some_and(crate::canary::splits);
    let canary = crate::canary::Canary::compile(&s.canary, &s.name, &pools, split);
    Service {
        name: s.name.clone(),
        protocol: s.protocol,
        pools,
        live: live_idx,
        weights: cumulative,
        health: s.health.clone(),
        timeouts: s.timeouts,
        retries: s.retries,
        drain_upgraded: s.drain_upgraded,
        paused: live.services.get(&s.name).is_some_and(|st| st.paused),
        maintenance: live.services.get(&s.name).is_some_and(|st| st.maintenance),
        pause: s.pause,
        holds: vitals.holds(&s.name),
        canary,
    }
}
