//! Static and media file serving at the edge, with Whitenoise/nginx semantics,
//! independent of any HTTP server framework.
//!
//! Build one [`FileServer`] per static route, call [`FileServer::respond`] per
//! request, write the returned [`Reply`] status and headers, then stream a
//! [`Body::File`] with [`read_chunk`] in bounded chunks.
//!
//! Behaviour: GET/HEAD only (405 otherwise); strict path decoding (400 on
//! `..`, encoded `/` or `\`, NUL, bad escapes) and canonical containment
//! under the root (404 on escape); strong ETag + Last-Modified with
//! If-Match/If-Unmodified-Since (412), If-None-Match/If-Modified-Since (304);
//! single byte ranges with If-Range (multiple ranges → full 200);
//! precompressed `.br`/`.zst`/`.gz` sidecars by Accept-Encoding; immutable
//! caching for content-hashed names.
//!
//! Small files (up to [`SMALL_FILE`] bytes) are read whole in the same
//! blocking call that locates them and kept in a bounded per-server cache;
//! a cached answer is used only while a `stat` of the file still shows the
//! same (device, inode, size, mtime, ctime) and for at most
//! [`FileOptions::cache_ttl`], so a changed file is served fresh at once and
//! new sidecars or index files are picked up within the TTL.
//!
//! Larger files stream from the open file, which a [`FileBody`] holds until
//! dropped. To bound the descriptors this takes, give servers an
//! [`OpenFiles`] limit in [`FileOptions::open_files`]: each lookup and each
//! streamed body then holds a permit, and requests beyond the limit wait for
//! one (cache hits need none).

// House rule: no `unwrap()`/`expect()` on input or I/O outside tests.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod body;
mod cache;
mod conditional;
mod content_type;
mod encoding;
mod error;
mod memo;
mod open_files;
mod path;
mod range;
mod serve;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use body::{read_chunk, Body, FileBody, DEFAULT_CHUNK_SIZE};
pub use cache::HashPattern;
pub use error::FilesError;
pub use memo::SMALL_FILE;
pub use open_files::OpenFiles;

/// Configuration of one static route.
#[derive(Debug, Clone)]
pub struct FileOptions {
    /// Directory served; canonicalized by [`FileServer::new`].
    pub root: PathBuf,
    /// Serve `x.br` / `x.zst` / `x.gz` sidecars of `x` by Accept-Encoding
    /// (and send `Vary: Accept-Encoding` on every file response).
    pub precompressed: bool,
    /// Send `public, max-age=<immutable_max_age>, immutable` for
    /// content-hashed names (`app.3f2a9c81b7d4.css`).
    pub immutable_hashed: bool,
    /// Which names are content-hashed, instead of the built-in rule
    /// (Django/webpack hex segments, Vite's `-XXXXXXXX`); a name it
    /// matches is immutable even without `immutable_hashed`.
    pub immutable_pattern: Option<HashPattern>,
    /// File served for directory requests (e.g. `index.html`); `None`: 404.
    pub index: Option<String>,
    /// Follow symlinks whose target stays inside the root; outside the root
    /// is always refused (404). `false`: any symlink component → 404.
    pub follow_symlinks: bool,
    /// max-age for everything not immutable (`public, max-age=N, must-revalidate`).
    pub max_age: Duration,
    /// max-age for content-hashed names when `immutable_hashed` is set.
    pub immutable_max_age: Duration,
    /// How long a cached small-file answer may be reused (each reuse still
    /// checks the file's identity with one `stat`); `Duration::ZERO`
    /// disables the cache.
    pub cache_ttl: Duration,
    /// Bounds the files this server (and every server sharing the handle)
    /// holds open at once: each lookup and each streamed body holds a
    /// permit; requests beyond the limit wait for one. `None`: unbounded.
    pub open_files: Option<OpenFiles>,
}

impl FileOptions {
    /// Options for `root` with defaults: no sidecars, no immutable caching,
    /// no index, no symlinks, max-age 60 s, immutable max-age one year,
    /// small-file cache TTL 2 s, no bound on open files.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileOptions {
            root: root.into(),
            precompressed: false,
            immutable_hashed: false,
            immutable_pattern: None,
            index: None,
            follow_symlinks: false,
            max_age: Duration::from_secs(60),
            immutable_max_age: Duration::from_secs(31_536_000),
            cache_ttl: memo::DEFAULT_TTL,
            open_files: None,
        }
    }
}

/// Serves files under one root. Cheap to clone (shared `Arc`); holds no
/// open files between requests (only the bounded small-file cache), just
/// those of lookups in progress and of streamed bodies still alive, at most
/// [`FileOptions::open_files`] of them when set.
#[derive(Debug, Clone)]
pub struct FileServer {
    inner: Arc<Inner>,
}

/// What a [`FileServer`] shares between its clones.
#[derive(Debug)]
pub(crate) struct Inner {
    pub opts: FileOptions,
    pub memo: memo::Memo,
}

impl FileServer {
    /// Validates the options and canonicalizes the root (must be an existing
    /// directory).
    pub fn new(mut opts: FileOptions) -> Result<Self, FilesError> {
        let root = std::fs::canonicalize(&opts.root).map_err(|source| FilesError::Root {
            path: opts.root.clone(),
            source,
        })?;
        if !root.is_dir() {
            return Err(FilesError::NotADirectory(opts.root));
        }
        if let Some(index) = &opts.index {
            let plain = matches!(path::decode(index), Ok(p) if p.segments.len() == 1 && p.segments[0] == *index);
            if !plain || index.contains('%') {
                return Err(FilesError::InvalidIndex(index.clone()));
            }
        }
        opts.root = root;
        let memo = memo::Memo::new(opts.cache_ttl);
        Ok(FileServer {
            inner: Arc::new(Inner { opts, memo }),
        })
    }

    /// The effective options (root canonicalized).
    pub fn options(&self) -> &FileOptions {
        &self.inner.opts
    }

    /// Answers one request. `rel` is the request path after the route prefix,
    /// still percent-encoded, without query. Never fails: errors become
    /// 400/403/404/405/412/416/500 replies.
    ///
    /// Filesystem work runs in one `tokio::task::spawn_blocking` call, so this
    /// must be called within a Tokio runtime; a cached small file costs one
    /// `stat` on the calling thread instead. With
    /// [`FileOptions::open_files`] set, that call first waits for a permit.
    pub async fn respond(
        &self,
        method: &http::Method,
        rel: &str,
        headers: &http::HeaderMap,
    ) -> Reply {
        serve::respond(&self.inner, method, rel, headers).await
    }
}

/// What to send: status, headers (incl. Content-Length) and body.
#[derive(Debug)]
pub struct Reply {
    /// Response status.
    pub status: http::StatusCode,
    /// Response headers; `Content-Length` is set whenever a body may follow.
    pub headers: http::HeaderMap,
    /// Response body; [`Body::Empty`] for HEAD, 304, 416 and redirects.
    pub body: Body,
}
