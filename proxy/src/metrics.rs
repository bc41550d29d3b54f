//! Prometheus metrics, exported on the admin listener at `/metrics`.
//!
//! The request path never looks up a label set: counters and histograms for
//! each route (and each color of a proxied route) are resolved when a
//! snapshot is built. Gauges that mirror state (in-flight, live color,
//! weights, member health, certificate expiry) are read at scrape time.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};
use std::sync::{Arc, OnceLock};

/// Status classes counted separately: 1xx … 5xx.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Counters for one (site, service, color) label set, one per status class.
#[derive(Clone)]
pub struct StatusCounters([IntCounter; 5]);

impl StatusCounters {
    /// Counts a response with `status` (0 = no response sent, not counted).
    #[inline]
    pub fn count(&self, status: u16) {
        if (100..600).contains(&status) {
            self.0[usize::from(status / 100 - 1)].inc();
        }
    }
}

/// Handles a route needs on the request path, resolved once per snapshot.
#[derive(Clone)]
pub struct RouteMetrics {
    /// Responses answered locally (static, redirect, errors before proxying).
    pub local: StatusCounters,
    /// Proxied responses, per pool index.
    pub colors: Vec<StatusCounters>,
    /// Request duration.
    pub duration: Histogram,
    /// Static bytes served for the route's site.
    pub static_bytes: IntCounter,
}

/// Source of state gauges, read at scrape time.
pub type StateSource = Arc<dyn Fn() -> Vec<StateGauge> + Send + Sync>;

/// One sample of a state gauge.
pub struct StateGauge {
    /// Metric name.
    pub name: &'static str,
    /// Label pairs.
    pub labels: Vec<(&'static str, String)>,
    /// Value.
    pub value: f64,
}

/// All of Duotone's metrics.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    static_bytes: IntCounterVec,
    connect_errors: IntCounterVec,
    reloads: IntCounterVec,
    rollbacks: IntCounterVec,
    watch_decisions: IntCounterVec,
    state: Arc<OnceLock<Vec<StateSource>>>,
}

/// Help text and type of the state gauges.
const GAUGES: &[(&str, &str, &[&str])] = &[
    (
        "duotone_downstream_connections",
        "Client connections open now.",
        &[],
    ),
    (
        "duotone_worker_connections",
        "Client connections open now, per worker thread (a new connection goes to the worker with the fewest).",
        &["worker"],
    ),
    (
        "duotone_parked_connections",
        "Idle plain HTTP/1.1 keep-alive connections parked now (in their worker's epoll set, with no task of their own); counted in duotone_downstream_connections too.",
        &[],
    ),
    (
        "duotone_open_files",
        "Files held open by static routes now (limits.max_open_files caps it).",
        &[],
    ),
    (
        "duotone_open_files_limit",
        "The process's file limit (soft RLIMIT_NOFILE, raised to the hard one at start); it needs 2 × max_connections + max_open_files + 1024.",
        &[],
    ),
    (
        "duotone_open_files_waiting",
        "Static-file requests waiting for a file handle now.",
        &[],
    ),
    (
        "duotone_in_flight_requests",
        "Requests being proxied now, per color.",
        &["service", "color"],
    ),
    (
        "duotone_upgraded_connections",
        "Upgraded connections (WebSockets) open now, per color; not counted in duotone_in_flight_requests.",
        &["service", "color"],
    ),
    (
        "duotone_live_color",
        "1 for the live color of each service, else 0.",
        &["service", "color"],
    ),
    (
        "duotone_color_weight",
        "Canary weight of each color (0 when weights are not set).",
        &["service", "color"],
    ),
    (
        "duotone_paused",
        "1 while the service is paused (new requests held at the edge), else 0.",
        &["service"],
    ),
    (
        "duotone_held_requests",
        "Requests held by a pause now.",
        &["service"],
    ),
    (
        "duotone_hold_refused_total",
        "Held requests answered 503: held for the pause's whole timeout, or over its queue.",
        &["service", "reason"],
    ),
    (
        "duotone_member_up",
        "1 if the member can take traffic (health checks and passive ejection).",
        &["service", "color", "member"],
    ),
    (
        "duotone_maintenance",
        "1 while the service is in maintenance mode, else 0.",
        &["service"],
    ),
    (
        "duotone_site_maintenance",
        "1 while the site is in maintenance mode, else 0.",
        &["site"],
    ),
    (
        "duotone_certificate_expiry_timestamp_seconds",
        "Certificate notAfter as a Unix timestamp.",
        &["name"],
    ),
    (
        "duotone_acme_renewals_total",
        "Certificates obtained or renewed via ACME.",
        &[],
    ),
    (
        "duotone_acme_failures_total",
        "Failed ACME orders or renewals.",
        &[],
    ),
    (
        "duotone_acme_cluster_orders_total",
        "ACME orders this node placed for the whole cluster (cluster mode).",
        &[],
    ),
    (
        "duotone_acme_cluster_lock_wait_seconds_total",
        "Time this node waited for ACME order locks (cluster mode).",
        &[],
    ),
    (
        "duotone_acme_cluster_store_down",
        "1 while the shared certificate store (etcd) is unreachable: certificates in hand are served, orders wait.",
        &[],
    ),
    (
        "duotone_buffered_bytes",
        "Request and response body bytes buffered now, in memory or in temp files ([buffering]).",
        &["where"],
    ),
    (
        "duotone_buffer_spilled_bytes_total",
        "Body bytes written to buffer temp files.",
        &[],
    ),
    (
        "duotone_buffer_failures_total",
        "Buffer temp files that could not be made or written (requests answered 503, responses kept in memory).",
        &[],
    ),
    (
        "duotone_client_handshake_failures_total",
        "Client TLS (and HTTP/2 preface) handshakes that failed or timed out; logged at DEBUG.",
        &[],
    ),    (
        "duotone_cluster_connected",
        "1 while this node's watch on etcd is up ([cluster]), else 0: it serves its last applied state.",
        &["node"],
    ),
    (
        "duotone_cluster_applied_revision",
        "The etcd revision this node has applied the shared deploy state up to.",
        &["node"],
    ),
    (
        "duotone_cluster_state_revision",
        "The etcd revision of the shared deploy state this node serves.",
        &["node"],
    ),
    (
        "duotone_cluster_changes_refused_total",
        "Changes (flip, weights, …) refused because etcd was unreachable or had no quorum.",
        &["node"],
    ),
];

struct StateCollector {
    descs: Vec<Desc>,
    sources: Arc<OnceLock<Vec<StateSource>>>,
}

impl Collector for StateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let samples: Vec<StateGauge> = self
            .sources
            .get()
            .map(|s| s.iter().flat_map(|f| f()).collect())
            .unwrap_or_default();
        let mut out = Vec::new();
        for (name, help, labels) in GAUGES {
            let counter = name.ends_with("_total");
            let vec_opts = Opts::new(*name, *help);
            let mut fam_metrics = Vec::new();
            for s in samples.iter().filter(|s| s.name == *name) {
                let mut m = prometheus::proto::Metric::default();
                let mut pairs = Vec::new();
                for (k, v) in &s.labels {
                    let mut lp = prometheus::proto::LabelPair::default();
                    lp.set_name(k.to_string());
                    lp.set_value(v.clone());
                    pairs.push(lp);
                }
                m.set_label(pairs);
                if counter {
                    let mut c = prometheus::proto::Counter::default();
                    c.set_value(s.value);
                    m.set_counter(c);
                } else {
                    let mut g = prometheus::proto::Gauge::default();
                    g.set_value(s.value);
                    m.set_gauge(g);
                }
                fam_metrics.push(m);
            }
            if fam_metrics.is_empty() && !labels.is_empty() {
                continue;
            }
            let mut fam = MetricFamily::default();
            fam.set_name(vec_opts.name.clone());
            fam.set_help(vec_opts.help.clone());
            fam.set_field_type(if counter {
                prometheus::proto::MetricType::COUNTER
            } else {
                prometheus::proto::MetricType::GAUGE
            });
            if fam_metrics.is_empty() {
                let mut m = prometheus::proto::Metric::default();
                if counter {
                    m.set_counter(prometheus::proto::Counter::default());
                } else {
                    m.set_gauge(prometheus::proto::Gauge::default());
                }
                fam_metrics.push(m);
            }
            fam.set_metric(fam_metrics);
            out.push(fam);
        }
        out
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "duotone_requests_total",
                "Responses by site, service, color and status class.",
            ),
            &["site", "service", "color", "status_class"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "duotone_request_duration_seconds",
                "Time from request head to the end of the response.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["site", "service"],
        )?;
        let static_bytes = IntCounterVec::new(
            Opts::new(
                "duotone_static_bytes_total",
                "Body bytes of static files served.",
            ),
            &["site"],
        )?;
        let connect_errors = IntCounterVec::new(
            Opts::new(
                "duotone_upstream_connect_errors_total",
                "Failed connections to upstream members.",
            ),
            &["service", "color"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new("duotone_config_reloads_total", "Config reloads by result."),
            &["result"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(static_bytes.clone()))?;
        registry.register(Box::new(connect_errors.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        let rollbacks = IntCounterVec::new(
            Opts::new(
                "duotone_rollbacks_total",
                "Automatic rollbacks: a watched color crossed a threshold and the service was flipped back.",
            ),
            &["service"],
        )?;
        let watch_decisions = IntCounterVec::new(
            Opts::new(
                "duotone_watch_decisions_total",
                "How watches ended: passed, rolled_back, failed, superseded, cancelled.",
            ),
            &["service", "decision"],
        )?;
        registry.register(Box::new(rollbacks.clone()))?;
        registry.register(Box::new(watch_decisions.clone()))?;
        for r in ["success", "failure"] {
            reloads.with_label_values(&[r]);
        }
        let state = Arc::new(OnceLock::new());
        let descs = GAUGES
            .iter()
            .map(|(n, h, l)| {
                Desc::new(
                    n.to_string(),
                    h.to_string(),
                    l.iter().map(|s| s.to_string()).collect(),
                    Default::default(),
                )
            })
            .collect::<prometheus::Result<Vec<_>>>()?;
        registry.register(Box::new(StateCollector {
            descs,
            sources: state.clone(),
        }))?;
        Ok(Metrics {
            registry,
            requests,
            duration,
            static_bytes,
            connect_errors,
            reloads,
            rollbacks,
            watch_decisions,
            state,
        })
    }

    /// Sets the sources of state gauges (once).
    pub fn set_state_sources(&self, sources: Vec<StateSource>) {
        let _ = self.state.set(sources);
    }

    fn status_counters(&self, site: &str, service: &str, color: &str) -> StatusCounters {
        StatusCounters(CLASSES.map(|c| self.requests.with_label_values(&[site, service, color, c])))
    }

    /// Resolves the handles of one route.
    pub fn route(&self, site: &str, service: Option<(&str, Vec<&str>)>) -> RouteMetrics {
        let (svc, colors) = service.unwrap_or(("", Vec::new()));
        for c in &colors {
            self.connect_errors.with_label_values(&[svc, c]);
        }
        if !svc.is_empty() {
            self.rollbacks.with_label_values(&[svc]);
        }
        RouteMetrics {
            local: self.status_counters(site, svc, ""),
            colors: colors
                .iter()
                .map(|c| self.status_counters(site, svc, c))
                .collect(),
            duration: self.duration.with_label_values(&[site, svc]),
            static_bytes: self.static_bytes.with_label_values(&[site]),
        }
    }

    /// Counts a failed upstream connection.
    pub fn connect_error(&self, service: &str, color: &str) {
        self.connect_errors
            .with_label_values(&[service, color])
            .inc();
    }

    /// Counts a reload.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
    }

    /// Counts how a watch of `service` ended (`decision`: `passed`,
    /// `rolled_back`, …); a `rolled_back` is a rollback too.
    pub fn watch_decision(&self, service: &str, decision: &str) {
        self.watch_decisions
            .with_label_values(&[service, decision])
            .inc();
        if decision == "rolled_back" {
            self.rollbacks.with_label_values(&[service]).inc();
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> prometheus::Result<String> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

/// Open client connections, in total and per worker thread.
pub fn connection_gauges(total: i64, per_worker: Vec<i64>, parked: i64) -> Vec<StateGauge> {
    let mut gauges = vec![
        StateGauge {
            name: "duotone_downstream_connections",
            labels: vec![],
            value: total as f64,
        },
        StateGauge {
            name: "duotone_parked_connections",
            labels: vec![],
            value: parked as f64,
        },
    ];
    gauges.extend(per_worker.into_iter().enumerate().map(|(i, n)| StateGauge {
        name: "duotone_worker_connections",
        labels: vec![("worker", i.to_string())],
        value: n as f64,
    }));
    gauges
}

/// State gauges of the services in the current snapshot.
pub fn service_gauges(table: &routes::RouteTable) -> Vec<StateGauge> {
    let now = crate::clock::now_ms();
    let mut out = Vec::new();
    for svc in &table.services {
        let name = || vec![("service", svc.name.clone())];
        out.push(StateGauge {
            name: "duotone_paused",
            labels: name(),
            value: if svc.paused { 1.0 } else { 0.0 },
        });
        out.push(StateGauge {
            name: "duotone_held_requests",
            labels: name(),
            value: svc.holds.held() as f64,
        });
        for why in [
            routes::pause::Refusal::Timeout,
            routes::pause::Refusal::Queue,
        ] {
            let mut labels = name();
            labels.push(("reason", why.as_str().to_string()));
            out.push(StateGauge {
                name: "duotone_hold_refused_total",
                labels,
                value: svc.holds.refused(why) as f64,
            });
        }
        let weights = svc.weight_pairs();
        let checked = svc.health.is_some();
        for (i, pool) in svc.pools.iter().enumerate() {
            let labels = vec![
                ("service", svc.name.clone()),
                ("color", pool.color.to_string()),
            ];
            out.push(StateGauge {
                name: "duotone_in_flight_requests",
                labels: labels.clone(),
                value: pool.stats.in_flight() as f64,
            });
            out.push(StateGauge {
                name: "duotone_upgraded_connections",
                labels: labels.clone(),
                value: pool.stats.upgraded() as f64,
            });
            out.push(StateGauge {
                name: "duotone_live_color",
                labels: labels.clone(),
                value: if i == svc.live { 1.0 } else { 0.0 },
            });
            let w = weights.as_ref().map(|w| f64::from(w[i].1)).unwrap_or(0.0);
            out.push(StateGauge {
                name: "duotone_color_weight",
                labels: labels.clone(),
                value: w,
            });
            for m in &pool.members {
                let up = m.health.is_available(now)
                    && (!checked || m.health.state() == routes::HealthState::Up);
                let mut l = labels.clone();
                l.push(("member", m.written()));
                out.push(StateGauge {
                    name: "duotone_member_up",
                    labels: l,
                    value: if up { 1.0 } else { 0.0 },
                });
            }
        }
    }
    out
}

/// Maintenance mode of every service and site in the current snapshot (1
/// on, 0 off).
pub fn maintenance_gauges(table: &routes::RouteTable) -> Vec<StateGauge> {
    let on = |b: bool| if b { 1.0 } else { 0.0 };
    let services = table.services.iter().map(|svc| StateGauge {
        name: "duotone_maintenance",
        labels: vec![("service", svc.name.clone())],
        value: on(svc.maintenance),
    });
    let sites = table.sites.iter().map(|site| StateGauge {
        name: "duotone_site_maintenance",
        labels: vec![("site", site.name.clone())],
        value: on(site.maintenance),
    });
    services.chain(sites).collect()
}
