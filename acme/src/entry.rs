//! One spec and what it serves: fallback, current certificate, counters.

use std::fmt;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rustls::sign::CertifiedKey;
use rustls_acme::ResolvesServerCertAcme;

use crate::certs::{self, Loaded};
use crate::store::AcmeCtx;
use crate::{CertError, CertSource, CertSpec};

/// Identity of a file's contents, as seen by `stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileStamp(Vec<Option<(SystemTime, u64, u64)>>);

impl FileStamp {
    pub fn of(paths: &[&Path]) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp(
            paths
                .iter()
                .map(|p| {
                    std::fs::metadata(p)
                        .ok()
                        .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())))
                })
                .collect(),
        )
    }
}

/// Counters of one ACME spec.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub renewals: AtomicU64,
    pub failures: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

/// One spec and the certificate it serves.
pub(crate) struct Entry {
    pub spec: CertSpec,
    /// Identifiers sent to the CA (ACME specs only).
    pub acme_domains: Vec<String>,
    /// Self-signed certificate served until `current` is set.
    pub fallback: Loaded,
    /// The real certificate (ACME or static), once there is one.
    pub current: ArcSwapOption<Loaded>,
    /// rustls-acme's resolver, holding challenge data while an order runs.
    pub challenge: ArcSwapOption<ResolvesServerCertAcme>,
    pub stats: Stats,
    /// Static files as last loaded (or last attempted).
    pub stamp: Mutex<Option<FileStamp>>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Entry {
    /// The certificate served now: the real one, else the fallback.
    pub fn served(&self) -> Arc<CertifiedKey> {
        match &*self.current.load() {
            Some(loaded) => loaded.key.clone(),
            None => self.fallback.key.clone(),
        }
    }

    /// Builds an entry: fallback (kept in `fallback_dir` when given), static
    /// files or cached ACME certificate.
    pub fn build(
        spec: CertSpec,
        acme: Option<&AcmeCtx>,
        fallback_dir: Option<&Path>,
    ) -> Result<Entry, CertError> {
        let fallback = certs::self_signed_kept(&spec.hosts, &spec.name, fallback_dir)?;
        let mut current = None;
        let mut stamp = None;
        let mut domains = Vec::new();
        match &spec.source {
            CertSource::SelfSigned => {}
            CertSource::Static { cert, key } => {
                stamp = Some(FileStamp::of(&[cert, key]));
                current = Some(Arc::new(certs::load_static(cert, key, &spec.name)?));
            }
            CertSource::Acme => {
                let Some(ctx) = acme else {
                    return Err(CertError::Acme(format!(
                        "certificate {:?} uses ACME but no ACME settings are given",
                        spec.name
                    )));
                };
                domains = acme_domains(&spec);
                if !domains.is_empty() {
                    let file =
                        crate::cache::cert_file(&ctx.cache_dir, &domains, &ctx.directory_url);
                    current = load_cached(&file, &spec.name).map(Arc::new);
                }
            }
        }
        Ok(Entry {
            spec,
            acme_domains: domains,
            fallback,
            current: ArcSwapOption::new(current),
            challenge: ArcSwapOption::empty(),
            stats: Stats::default(),
            stamp: Mutex::new(stamp),
        })
    }

    /// Re-reads the static files if their size, mtime or inode changed;
    /// returns `true` if a different certificate is now served.
    pub fn reload_static(&self) -> bool {
        let CertSource::Static { cert, key } = &self.spec.source else {
            return false;
        };
        let stamp = FileStamp::of(&[cert, key]);
        {
            let Ok(mut last) = self.stamp.lock() else {
                return false;
            };
            if last.as_ref() == Some(&stamp) {
                return false;
            }
            *last = Some(stamp);
        }
        match certs::load_static(cert, key, &self.spec.name) {
            Ok(loaded) => {
                let unchanged = self
                    .current
                    .load()
                    .as_ref()
                    .is_some_and(|c| c.leaf_der() == loaded.leaf_der());
                if unchanged {
                    return false;
                }
                tracing::info!(cert = %self.spec.name, not_after = loaded.meta.not_after, "reloaded static certificate");
                self.current.store(Some(Arc::new(loaded)));
                true
            }
            Err(err) => {
                tracing::warn!(cert = %self.spec.name, error = %err, "static certificate changed but cannot be loaded; keeping the previous one");
                false
            }
        }
    }
}

/// ACME identifiers of `hosts`: no catch-all, wildcards or IP addresses.
fn acme_domains(spec: &CertSpec) -> Vec<String> {
    let mut out = Vec::new();
    for host in &spec.hosts {
        let h = crate::normalize_host(host);
        if h == "*" || h.starts_with("*.") || h.parse::<std::net::IpAddr>().is_ok() {
            tracing::warn!(cert = %spec.name, host = %h, "host cannot get an ACME certificate (wildcard, catch-all or IP); it gets the self-signed fallback");
        } else if !h.is_empty() && !out.contains(&h) {
            out.push(h);
        }
    }
    out
}

fn load_cached(file: &Path, name: &str) -> Option<Loaded> {
    let pem = match std::fs::read(file) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(cert = %name, file = %file.display(), error = %e, "cannot read cached ACME certificate");
            return None;
        }
    };
    match certs::parse_acme_pem(&pem, name) {
        Ok(loaded) => {
            tracing::info!(cert = %name, not_after = loaded.meta.not_after, "serving cached ACME certificate");
            Some(loaded)
        }
        Err(e) => {
            tracing::warn!(cert = %name, error = %e, "ignoring unusable cached ACME certificate");
            None
        }
    }
}
