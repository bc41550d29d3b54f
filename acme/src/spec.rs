//! What the proxy asks for: certificate specs and ACME settings.

use std::path::PathBuf;

use crate::CertError;

/// Where the certificate of a [`CertSpec`] comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// Obtained and renewed from the ACME CA in [`AcmeSettings`].
    Acme,
    /// PEM files on disk, reloaded when they change.
    Static {
        /// Certificate chain (leaf first).
        cert: PathBuf,
        /// Private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// A self-signed certificate generated at startup.
    SelfSigned,
}

impl CertSource {
    /// `"acme"`, `"static"` or `"self-signed"`.
    pub fn kind(&self) -> &'static str {
        match self {
            CertSource::Acme => "acme",
            CertSource::Static { .. } => "static",
            CertSource::SelfSigned => "self-signed",
        }
    }
}

/// One certificate to serve: a stable name, its hosts, and its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    /// Stable identifier (e.g. the first host); unique within a store.
    pub name: String,
    /// Host names served with this certificate: exact names, `*.example.com`
    /// wildcards, or `*` (catch-all, never sent to the CA).
    pub hosts: Vec<String>,
    /// Where the certificate comes from.
    pub source: CertSource,
}

/// Which ACME challenge the CA should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// `GET /.well-known/acme-challenge/{token}` on port 80.
    Http01,
    /// TLS handshake with ALPN `acme-tls/1` on port 443.
    TlsAlpn01,
}

/// Account and CA settings shared by every ACME spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// Contact e-mail for the account (without `mailto:`).
    pub email: Option<String>,
    /// `"letsencrypt"`, `"letsencrypt-staging"` or a directory URL.
    pub directory: String,
    /// Challenge type.
    pub challenge: Challenge,
    /// Extra PEM roots to trust the directory's HTTPS certificate (e.g. Pebble).
    pub ca_roots: Option<PathBuf>,
    /// State directory; the ACME cache lives in `state_dir/acme`.
    pub state_dir: PathBuf,
}

impl AcmeSettings {
    /// The directory URL the `directory` setting stands for.
    pub fn directory_url(&self) -> Result<String, CertError> {
        match self.directory.trim() {
            "letsencrypt" => Ok(rustls_acme::acme::LETS_ENCRYPT_PRODUCTION_DIRECTORY.to_string()),
            "letsencrypt-staging" => {
                Ok(rustls_acme::acme::LETS_ENCRYPT_STAGING_DIRECTORY.to_string())
            }
            url if url.starts_with("https://") => Ok(url.to_string()),
            other => Err(CertError::Acme(format!(
                "directory {other:?}: expected \"letsencrypt\", \"letsencrypt-staging\" or an https:// URL"
            ))),
        }
    }

    /// The ACME cache directory (`state_dir/acme`).
    pub fn cache_dir(&self) -> PathBuf {
        self.state_dir.join("acme")
    }
}
