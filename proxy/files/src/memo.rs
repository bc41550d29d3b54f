//! Bounded cache of small-file answers, so hot small files are served
//! without a trip to the blocking pool.
//!
//! An entry is keyed by the request path (still encoded) and the negotiated
//! codings, and holds the whole content plus ready-made headers. It is used
//! only while
//! - it is younger than the TTL (so new sidecars, index files or symlink
//!   changes are picked up), and
//! - a `stat` of the canonical path it was read from still shows the same
//!   device, inode, size, mtime and ctime (so a changed, replaced, removed or
//!   re-permissioned file is re-read at once).
//!
//! Serving cached bytes can never expose more than was already served: the
//! bytes are those of a file that passed every check when it was read, and
//! the identity check only lets them out while that same file is in place.

use std::collections::HashMap;
use std::fs::Metadata;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::encoding::Coding;
use crate::serve::Repr;

/// Files up to this size are read whole and may be cached: 64 KiB.
pub const SMALL_FILE: u64 = 64 * 1024;
/// Default reuse window of a cached answer.
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(2);
/// At most this many cached answers per server.
const MAX_ENTRIES: usize = 2048;
/// At most this many cached content bytes per server: 16 MiB.
const MAX_BYTES: usize = 16 * 1024 * 1024;

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    #[cfg(unix)]
    pub fn of(meta: &Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    #[cfg(not(unix))]
    pub fn of(meta: &Metadata) -> Stamp {
        let m = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or((0, 0), |d| {
                (d.as_secs() as i64, i64::from(d.subsec_nanos()))
            });
        Stamp {
            dev: 0,
            ino: 0,
            len: meta.len(),
            mtime: m,
            ctime: (0, 0),
        }
    }
}

/// The negotiated coding list as a small key (3 bits per coding, in order).
pub(crate) fn codings_key(codings: &[Coding]) -> u16 {
    codings.iter().enumerate().fold(0, |k, (i, c)| {
        let v: u16 = match c {
            Coding::Br => 1,
            Coding::Zstd => 2,
            Coding::Gzip => 3,
            Coding::Identity => 4,
        };
        k | (v << (3 * i))
    })
}

#[derive(Debug)]
struct Entry {
    codings: u16,
    path: PathBuf,
    stamp: Stamp,
    created: Instant,
    size: usize,
    repr: Arc<Repr>,
}

#[derive(Debug, Default)]
struct State {
    map: HashMap<Box<str>, Vec<Arc<Entry>>>,
    entries: usize,
    bytes: usize,
}

impl State {
    fn remove_where(&mut self, mut drop_it: impl FnMut(&Entry) -> bool) {
        let (mut entries, mut bytes) = (0, 0);
        self.map.retain(|_, v| {
            v.retain(|e| !drop_it(e));
            entries += v.len();
            bytes += v.iter().map(|e| e.size).sum::<usize>();
            !v.is_empty()
        });
        self.entries = entries;
        self.bytes = bytes;
    }
}

/// The cache of one [`FileServer`](crate::FileServer).
#[derive(Debug)]
pub(crate) struct Memo {
    ttl: Duration,
    state: RwLock<State>,
}

impl Memo {
    pub fn new(ttl: Duration) -> Memo {
        Memo {
            ttl,
            state: RwLock::new(State::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// A cached answer for `rel` with these codings, if still valid. Costs one
    /// `stat` on the calling thread when an entry exists.
    pub fn lookup(&self, rel: &str, codings: u16) -> Option<Arc<Repr>> {
        if !self.enabled() {
            return None;
        }
        let entry = {
            let state = self.state.read().ok()?;
            state
                .map
                .get(rel)?
                .iter()
                .find(|e| e.codings == codings)?
                .clone()
        };
        if entry.created.elapsed() >= self.ttl {
            return None;
        }
        let meta = std::fs::metadata(&entry.path).ok()?;
        (meta.is_file() && Stamp::of(&meta) == entry.stamp).then(|| entry.repr.clone())
    }

    /// Remembers an answer read from `path` (canonical) in version `stamp`.
    pub fn insert(&self, rel: &str, codings: u16, path: PathBuf, stamp: Stamp, repr: Arc<Repr>) {
        if !self.enabled() {
            return;
        }
        let size = repr.cached_size() + rel.len() + path.as_os_str().len();
        if size > MAX_BYTES / 4 {
            return;
        }
        let Ok(mut state) = self.state.write() else {
            return;
        };
        if let Some(v) = state.map.get_mut(rel) {
            if let Some(i) = v.iter().position(|e| e.codings == codings) {
                let old = v.swap_remove(i);
                state.entries -= 1;
                state.bytes -= old.size;
            }
        }
        if state.entries + 1 > MAX_ENTRIES || state.bytes + size > MAX_BYTES {
            let ttl = self.ttl;
            state.remove_where(|e| e.created.elapsed() >= ttl);
        }
        if state.entries + 1 > MAX_ENTRIES || state.bytes + size > MAX_BYTES {
            // Still full of live entries: drop about a quarter, arbitrarily.
            let mut n = 0usize;
            state.remove_where(|_| {
                n += 1;
                n & 3 == 0
            });
        }
        if state.entries + 1 > MAX_ENTRIES || state.bytes + size > MAX_BYTES {
            state.remove_where(|_| true);
        }
        state.entries += 1;
        state.bytes += size;
        state
            .map
            .entry(rel.into())
            .or_default()
            .push(Arc::new(Entry {
                codings,
                path,
                stamp,
                created: Instant::now(),
                size,
                repr,
            }));
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let s = self.state.read().expect("lock");
        (s.entries, s.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codings_keys_differ_by_order() {
        use Coding::*;
        let keys = [
            codings_key(&[Identity]),
            codings_key(&[Br, Gzip, Identity]),
            codings_key(&[Gzip, Br, Identity]),
            codings_key(&[Br, Zstd, Gzip, Identity]),
            codings_key(&[Gzip, Identity]),
        ];
        let set: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(set.len(), keys.len());
    }

    #[test]
    fn bounded_and_revalidated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").expect("write");
        let meta = std::fs::metadata(&p).expect("meta");
        let memo = Memo::new(Duration::from_secs(60));
        let repr = Arc::new(Repr::for_test(vec![0u8; 40 * 1024]));
        for i in 0..(MAX_ENTRIES + 10) {
            memo.insert(
                &format!("k{i}"),
                4,
                p.clone(),
                Stamp::of(&meta),
                repr.clone(),
            );
            let (n, bytes) = memo.counts();
            assert!(n <= MAX_ENTRIES && bytes <= MAX_BYTES, "{n} {bytes}");
        }
        memo.insert("hit", 4, p.clone(), Stamp::of(&meta), repr.clone());
        assert!(memo.lookup("hit", 4).is_some());
        assert!(memo.lookup("hit", 1).is_none());
        // Same size, new content: the ctime/mtime (or inode) moves on.
        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(&p, b"xyz").expect("rewrite");
        assert!(memo.lookup("hit", 4).is_none());
        std::fs::remove_file(&p).expect("rm");
        assert!(memo.lookup("hit", 4).is_none());

        let off = Memo::new(Duration::ZERO);
        off.insert("k", 4, p.clone(), Stamp::of(&meta), repr);
        assert_eq!(off.counts(), (0, 0));
    }
}
