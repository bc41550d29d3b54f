//! Prometheus metrics, exported on the admin listener at `/metrics`.

use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};

/// All of Duotone's metrics.
pub struct Metrics {
    registry: Registry,
    reloads: IntCounterVec,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let reloads = IntCounterVec::new(
            Opts::new("duotone_config_reloads_total", "Config reloads by result."),
            &["result"],
        )?;
        registry.register(Box::new(reloads.clone()))?;
        for r in ["success", "failure"] {
            reloads.with_label_values(&[r]);
        }
        Ok(Metrics { registry, reloads })
    }

    /// Counts a reload.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> prometheus::Result<String> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}
