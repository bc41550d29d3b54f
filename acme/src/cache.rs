//! The ACME cache under `state_dir/acme`: the file names of rustls-acme's
//! `DirCache` (so existing caches keep working), but private files (0600,
//! written atomically) and one shared account key for all certificates.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::prelude::*;
use rustls_acme::{AccountCache, CertCache};

/// Called with each newly issued certificate (key + chain PEM) before it is
/// written to disk; errors are logged by the caller's event loop.
pub(crate) type OnCert = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// rustls-acme cache for one certificate spec.
pub(crate) struct DiskCache {
    dir: PathBuf,
    on_cert: OnCert,
    account_lock: Arc<Mutex<()>>,
}

impl DiskCache {
    pub fn new(dir: PathBuf, on_cert: OnCert, account_lock: Arc<Mutex<()>>) -> Self {
        DiskCache {
            dir,
            on_cert,
            account_lock,
        }
    }
}

pub(crate) fn hashed_name(prefix: &str, parts: &[String], directory_url: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    ctx.update(directory_url.as_bytes());
    let hash = BASE64_URL_SAFE_NO_PAD.encode(ctx.finish());
    format!("{prefix}{hash}")
}

/// Cache file of the certificate for `domains` (same name as `DirCache`).
pub(crate) fn cert_file(dir: &Path, domains: &[String], directory_url: &str) -> PathBuf {
    dir.join(hashed_name("cached_cert_", domains, directory_url))
}

fn account_file(dir: &Path, contact: &[String], directory_url: &str) -> PathBuf {
    dir.join(hashed_name("cached_account_", contact, directory_url))
}

fn read_if_exists(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates `dir` (0700) if needed.
pub(crate) fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `contents` to `path` with mode 0600: temp file, fsync, rename.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    ensure_dir(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes every file in `dir` 0600 and `dir` itself 0700 (older caches, or
/// files written by plain `DirCache`, are world-readable).
pub(crate) fn fix_permissions(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let mode = entry.metadata()?.permissions().mode() & 0o777;
            if mode != 0o600 {
                fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

#[async_trait]
impl CertCache for DiskCache {
    type EC = std::io::Error;

    async fn load_cert(
        &self,
        domains: &[String],
        directory_url: &str,
    ) -> std::io::Result<Option<Vec<u8>>> {
        read_if_exists(&cert_file(&self.dir, domains, directory_url))
    }

    async fn store_cert(
        &self,
        domains: &[String],
        directory_url: &str,
        cert: &[u8],
    ) -> std::io::Result<()> {
        (self.on_cert)(cert);
        write_private(&cert_file(&self.dir, domains, directory_url), cert)
    }
}

#[async_trait]
impl AccountCache for DiskCache {
    type EA = std::io::Error;

    /// Loads the account key; when there is none yet, creates and stores it
    /// here so that every certificate of the store shares one account.
    async fn load_account(
        &self,
        contact: &[String],
        directory_url: &str,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let _guard = self
            .account_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let path = account_file(&self.dir, contact, directory_url);
        if let Some(key) = read_if_exists(&path)? {
            return Ok(Some(key));
        }
        let key = rustls_acme::acme::Account::generate_key_pair();
        write_private(&path, &key)?;
        Ok(Some(key))
    }

    async fn store_account(
        &self,
        contact: &[String],
        directory_url: &str,
        account: &[u8],
    ) -> std::io::Result<()> {
        write_private(&account_file(&self.dir, contact, directory_url), account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_rustls_acme_dir_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let domains = vec!["example.com".to_string(), "www.example.com".to_string()];
        let dir_cache = rustls_acme::caches::DirCache::new(dir.path().to_path_buf());
        futures::executor::block_on(dir_cache.store_cert(&domains, "https://x/dir", b"pem"))
            .expect("DirCache store");
        let ours = cert_file(dir.path(), &domains, "https://x/dir");
        assert_eq!(fs::read(ours).expect("same file name"), b"pem");
    }

    #[test]
    fn private_write_is_0600_and_fix_permissions_repairs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("acme").join("k");
        write_private(&p, b"secret").expect("write");
        let mode = fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
        fix_permissions(p.parent().expect("parent")).expect("fix");
        let mode = fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
