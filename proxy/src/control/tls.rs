//! From the config to the certificate layer: one certificate spec per TLS
//! site, ACME settings, and the admin/metrics views of certificates.

use acme::{AcmeSettings, CertError, CertSource, CertSpec, CertStore, Challenge};
use routes::config::{Config, Tls};
use std::sync::Arc;

/// One certificate per site with TLS, named after its first host.
pub fn cert_specs(config: &Config) -> Vec<CertSpec> {
    config
        .sites
        .iter()
        .filter_map(|site| {
            let source = match &site.tls {
                Tls::Off => return None,
                Tls::Acme => CertSource::Acme,
                Tls::SelfSigned => CertSource::SelfSigned,
                Tls::Files { cert, key } => CertSource::Static {
                    cert: cert.clone(),
                    key: key.clone(),
                },
            };
            Some(CertSpec {
                name: site.name().to_string(),
                hosts: site.hosts.clone(),
                source,
            })
        })
        .collect()
}

/// ACME settings, when the config has an `[acme]` section.
pub fn acme_settings(config: &Config) -> Option<AcmeSettings> {
    let a = config.acme.as_ref()?;
    Some(AcmeSettings {
        email: a.email.clone(),
        directory: a.directory.clone(),
        challenge: match a.challenge {
            routes::config::Challenge::Http01 => Challenge::Http01,
            routes::config::Challenge::TlsAlpn01 => Challenge::TlsAlpn01,
        },
        ca_roots: a.ca_roots.clone(),
        state_dir: config.server.state_dir.clone(),
    })
}

/// Builds the certificate store for `config` (reads certificate files and
/// the ACME cache; never contacts the CA). Self-signed certificates are kept
/// in `state_dir/self-signed` and reused across restarts while valid.
pub fn store(config: &Config) -> Result<Arc<CertStore>, acme::CertError> {
    CertStore::with_fallback_dir(
        acme_settings(config),
        cert_specs(config),
        Some(config.server.state_dir.join("self-signed")),
    )
}

/// The HTTPS listener's rustls config: [`acme::tls::server_config`] (TLS 1.2
/// and 1.3, the safe suites, ALPN h2 + http/1.1, certificates by SNI from
/// `store`) with stateless session tickets ([`acme::tls::ticketer`]: any
/// number of clients resume, on any worker, where rustls' default server-side
/// cache holds 256 sessions) and the cipher suite chosen by the server's
/// order of preference rather than the client's (testssl.sh reports "no
/// cipher order configured" otherwise).
pub fn server_config(store: &Arc<CertStore>) -> Result<rustls::ServerConfig, CertError> {
    let mut config = acme::tls::server_config(store.resolver())?;
    config.ticketer = acme::tls::ticketer()?;
    config.ignore_client_order = true;
    Ok(config)
}

/// What `duotone check` builds: [`store`] without writing self-signed
/// certificates to `state_dir` (the machine that checks may not be the one
/// that runs).
pub fn store_for_check(config: &Config) -> Result<Arc<CertStore>, acme::CertError> {
    CertStore::new(acme_settings(config), cert_specs(config))
}

/// `GET /v1/certificates`.
pub fn certificates_json(store: &CertStore) -> serde_json::Value {
    let items: Vec<serde_json::Value> = store
        .certificates()
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "hosts": c.hosts,
                "sans": c.sans,
                "issuer": c.issuer,
                "not_before": c.not_before,
                "not_after": c.not_after,
                "source": c.source,
                "configured": c.configured,
                "renewals": c.renewals,
                "failures": c.failures,
                "last_error": c.last_error,
            })
        })
        .collect();
    serde_json::json!({ "certificates": items })
}

/// Certificate gauges for `/metrics`.
pub fn gauges(store: &CertStore) -> Vec<crate::metrics::StateGauge> {
    let list = store.certificates();
    let mut out: Vec<crate::metrics::StateGauge> = list
        .iter()
        .map(|c| crate::metrics::StateGauge {
            name: "duotone_certificate_expiry_timestamp_seconds",
            labels: vec![("name", c.name.clone())],
            value: c.not_after as f64,
        })
        .collect();
    let (renewals, failures) = store.acme_totals();
    out.push(crate::metrics::StateGauge {
        name: "duotone_acme_renewals_total",
        labels: vec![],
        value: renewals as f64,
    });
    out.push(crate::metrics::StateGauge {
        name: "duotone_acme_failures_total",
        labels: vec![],
        value: failures as f64,
    });
    if let Some(c) = store.cluster_acme() {
        for (name, value) in [
            ("duotone_acme_cluster_orders_total", c.orders as f64),
            (
                "duotone_acme_cluster_lock_wait_seconds_total",
                c.lock_wait_ms as f64 / 1000.0,
            ),
            (
                "duotone_acme_cluster_store_down",
                if c.store_down { 1.0 } else { 0.0 },
            ),
        ] {
            out.push(crate::metrics::StateGauge {
                name,
                labels: vec![],
                value,
            });
        }
    }
    out
}
