//! Errors building a [`FileServer`](crate::FileServer).

use std::io;
use std::path::PathBuf;

/// Why a [`FileServer`](crate::FileServer) could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The root could not be canonicalized (missing, permission, …).
    #[error("static root {path}: {source}")]
    Root {
        /// The configured root.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The root exists but is not a directory.
    #[error("static root {0} is not a directory")]
    NotADirectory(PathBuf),
    /// The index option is not a single plain file name.
    #[error("index {0:?} must be a plain file name (no '/', '.', '..')")]
    InvalidIndex(String),
}
