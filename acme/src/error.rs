//! Errors of the certificate layer.

use std::path::PathBuf;

/// Everything that can go wrong while building or reloading a [`crate::CertStore`].
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {msg}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A certificate and key do not form a usable pair.
    #[error("certificate {name}: {msg}")]
    Invalid {
        /// The spec name (or file) the certificate belongs to.
        name: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A self-signed certificate could not be generated.
    #[error("self-signed certificate for {name}: {source}")]
    SelfSigned {
        /// The spec name.
        name: String,
        /// The generator's error.
        source: rcgen::Error,
    },
    /// The ACME settings are unusable (bad directory, missing settings).
    #[error("acme: {0}")]
    Acme(String),
    /// Two specs share one name.
    #[error("duplicate certificate name {0:?}")]
    DuplicateName(String),
    /// A Pingora listener could not be configured.
    #[error("listener: {0}")]
    Listener(String),
    /// A rustls configuration could not be built.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
}

impl CertError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CertError::Io {
            path: path.into(),
            source,
        }
    }
}
