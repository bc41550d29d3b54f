//! Admin endpoints owned by other modules: metrics and certificates.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use std::sync::Arc;

/// Hooks the admin API calls into.
#[derive(Clone)]
pub struct Extras {
    /// Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Lists certificates as JSON, when TLS is configured.
    pub certs: Option<Arc<dyn Fn() -> serde_json::Value + Send + Sync>>,
}

impl Extras {
    /// `GET /metrics`.
    pub fn metrics(&self) -> Response<Full<Bytes>> {
        match self.metrics.encode() {
            Ok(text) => Response::builder()
                .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(text)))
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
            Err(e) => crate::ops::json::error(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    }

    /// `GET /v1/certificates`.
    pub fn certificates(&self) -> serde_json::Value {
        match &self.certs {
            Some(list) => list(),
            None => serde_json::json!({ "certificates": [] }),
        }
    }

    /// Records a reload attempt.
    pub fn reloaded(&self, ok: bool) {
        self.metrics.reload(ok);
    }
}
