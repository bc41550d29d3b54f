//! Per-route extensions that need I/O to build (static file servers), kept
//! beside the pure [`routes::RouteTable`] in the same snapshot, and the
//! config checks that need the file system.

use routes::config::{Config, Tls};
use routes::{Action, Diagnostic, Diagnostics, KeyPath, Problem, RouteTable};
use std::sync::Arc;

/// What a route slot carries besides its pure description.
pub struct Slot {
    /// The file server of a static route.
    pub files: Option<Arc<files::FileServer>>,
    /// Basic auth, when the route has users.
    pub auth: Option<crate::control::auth::BasicAuth>,
    /// Metric handles.
    pub metrics: crate::metrics::RouteMetrics,
}

/// Builds a slot for every route of `table`.
pub fn build(
    table: &RouteTable,
    metrics: &crate::metrics::Metrics,
) -> Result<Vec<Slot>, Diagnostics> {
    let mut slots: Vec<Option<Slot>> = (0..table.route_count()).map(|_| None).collect();
    let mut errors = Vec::new();
    let open_files = crate::edge::static_files::open_files(table.config.limits.max_open_files);
    for site in &table.sites {
        for route in &site.routes {
            let service = match route.action {
                Action::Proxy(i) => table.services.get(i).map(|s| {
                    (
                        s.name.as_str(),
                        s.pools.iter().map(|p| p.color.as_str()).collect(),
                    )
                }),
                _ => None,
            };
            slots[route.slot] = Some(Slot {
                files: None,
                auth: (!route.basic_auth.is_empty())
                    .then(|| crate::control::auth::BasicAuth::new(route.basic_auth.clone())),
                metrics: metrics.route(&site.name, service),
            });
            if let Action::Static(spec) = &route.action {
                match files::FileServer::new(crate::edge::static_files::options(
                    spec,
                    open_files.clone(),
                )) {
                    Ok(fs) => {
                        if let Some(slot) = slots[route.slot].as_mut() {
                            slot.files = Some(Arc::new(fs));
                        }
                    }
                    Err(e) => errors.push(Diagnostic {
                        file: String::new(),
                        line: 0,
                        key: format!("static root {}", spec.root.display()),
                        message: e.to_string(),
                    }),
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(slots.into_iter().flatten().collect())
    } else {
        Err(Diagnostics(errors))
    }
}

/// Checks that need the file system: static roots are directories, and
/// certificate files and extra CA roots are readable.
pub fn io_checks(config: &Config) -> Vec<Problem> {
    let mut out = io_checks_here(config);
    out.extend(missing_static_roots(config));
    out
}

/// Static roots that do not exist on this machine. `duotone run` refuses
/// them ([`io_checks`]); `duotone check` only warns, since a config is often
/// checked where it is written (CI, a laptop), not where it runs.
pub fn missing_static_roots(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, site) in config.sites.iter().enumerate() {
        for (j, route) in site.routes.iter().enumerate() {
            if let routes::config::ActionSpec::Static(s) = &route.action {
                if let Err(e) = std::fs::metadata(&s.root) {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        out.push((
                            KeyPath::root("sites")
                                .index(i)
                                .key("routes")
                                .index(j)
                                .key("static")
                                .key("root"),
                            format!(
                                "{} does not exist here (`duotone run` refuses to start without it)",
                                s.root.display()
                            ),
                        ));
                    }
                }
            }
        }
    }
    out
}

/// [`io_checks`] except static roots that do not exist
/// ([`missing_static_roots`]): what `duotone check` counts as errors.
pub fn io_checks_here(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, site) in config.sites.iter().enumerate() {
        let at = KeyPath::root("sites").index(i);
        if let Tls::Files { cert, key } = &site.tls {
            for (name, path) in [("cert", cert), ("key", key)] {
                if let Err(e) = std::fs::metadata(path) {
                    out.push((at.key("tls").key(name), format!("{}: {e}", path.display())));
                }
            }
        }
        for (j, route) in site.routes.iter().enumerate() {
            if let routes::config::ActionSpec::Static(s) = &route.action {
                let ok = std::fs::metadata(&s.root).map(|m| m.is_dir());
                match ok {
                    Ok(true) => {}
                    // Listed by `missing_static_roots`.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Ok(false) => out.push((
                        at.key("routes").index(j).key("static").key("root"),
                        format!("{} is not a directory", s.root.display()),
                    )),
                    Err(e) => out.push((
                        at.key("routes").index(j).key("static").key("root"),
                        format!("{}: {e}", s.root.display()),
                    )),
                }
            }
        }
    }
    out.extend(crate::control::pages::io_checks(config));
    if let Some(roots) = config.acme.as_ref().and_then(|a| a.ca_roots.as_ref()) {
        if let Err(e) = std::fs::metadata(roots) {
            out.push((
                KeyPath::root("acme").key("ca_roots"),
                format!("{}: {e}", roots.display()),
            ));
        }
    }
    out
}
