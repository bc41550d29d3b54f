//! Per-route extensions that need I/O to build (static file servers), kept
//! beside the pure [`routes::RouteTable`] in the same snapshot, and the
//! config checks that need the file system.

use routes::config::{Config, Tls};
use routes::{Action, Diagnostic, Diagnostics, KeyPath, Problem, RouteTable};
use std::sync::Arc;

/// What a route slot carries besides its pure description.
#[derive(Default)]
pub struct Slot {
    /// The file server of a static route.
    pub files: Option<Arc<()>>,
}

/// Builds a slot for every route of `table`.
pub fn build(table: &RouteTable) -> Result<Vec<Slot>, Diagnostics> {
    let mut slots: Vec<Slot> = (0..table.route_count()).map(|_| Slot::default()).collect();
    let mut errors = Vec::new();
    for site in &table.sites {
        for route in &site.routes {
            if let Action::Static(spec) = &route.action {
                match Ok::<(), String>(()) {
                    Ok(fs) => slots[route.slot].files = Some(Arc::new(fs)),
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
        Ok(slots)
    } else {
        Err(Diagnostics(errors))
    }
}

/// Checks that need the file system: static roots are directories, and
/// certificate files and extra CA roots are readable.
pub fn io_checks(config: &Config) -> Vec<Problem> {
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
