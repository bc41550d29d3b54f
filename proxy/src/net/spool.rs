//! A body held at the edge: in memory up to a per-body limit (and while
//! all bodies together stay under a global one), then in a temp file.
//! Temp files are opened unnamed (`O_TMPFILE` where the file system has
//! it, else created and unlinked at once), so nothing is left on disk.
//!
//! A spool is a queue: bytes are pushed at the back and taken from the
//! front ([`Spool::front`], [`Spool::consume`]). A request body is also
//! read again from the start for a retry ([`Spool::rewind`]), so request
//! spools keep what was taken until dropped.

use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Bytes held in memory by all spools now.
static MEMORY: AtomicUsize = AtomicUsize::new(0);
/// Bytes held in temp files by all spools now.
static DISK: AtomicU64 = AtomicU64::new(0);
/// Bytes ever written to temp files.
static SPILLED: AtomicU64 = AtomicU64::new(0);
/// Temp files that could not be made or written.
static FAILURES: AtomicU64 = AtomicU64::new(0);

/// Largest read from a temp file at once.
const FILE_READ: usize = 64 * 1024;

/// How much a spool may hold and where its temp file goes
/// (the config's `[buffering]`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Directory of temp files.
    pub dir: PathBuf,
    /// Bytes one spool keeps in memory before using a temp file.
    pub memory: usize,
    /// Bytes all spools together keep in memory.
    pub total_memory: usize,
    /// Largest temp file of a response spool ([`Spool::has_room`]).
    pub max_file: u64,
}

impl Limits {
    /// The limits of the config's `[buffering]`, with its directory made
    /// (a failure is logged: bodies that need a temp file then fail).
    pub fn prepare(config: &routes::Config) -> Limits {
        let b = &config.buffering;
        if let Err(e) = std::fs::create_dir_all(&b.dir) {
            tracing::warn!("buffer directory {}: {e}", b.dir.display());
        }
        Limits {
            dir: b.dir.clone(),
            memory: b.memory,
            total_memory: b.total_memory,
            max_file: b.max_file,
        }
    }
}

/// Why a spool could not take bytes.
#[derive(Debug, thiserror::Error)]
#[error("cannot buffer in {dir}: {source}")]
pub struct SpoolError {
    /// The temp file directory.
    pub dir: String,
    /// The I/O error.
    pub source: io::Error,
}

/// A body in memory, then in a temp file.
#[derive(Debug)]
pub struct Spool {
    limits: Limits,
    /// Keep taken bytes for [`Spool::rewind`].
    keep: bool,
    /// The memory part, as it came (no copy): before anything in the file.
    mem: VecDeque<Bytes>,
    /// Bytes in `mem`.
    mem_len: usize,
    /// Read position in `mem`: chunk index and offset (a response spool
    /// drops chunks once taken, so its index stays 0).
    at: (usize, usize),
    /// Bytes of `mem` taken (before `at`).
    mem_taken: usize,
    /// Bytes counted in [`MEMORY`].
    counted: usize,
    file: Option<File>,
    /// Taken bytes at the front of the file.
    file_pos: u64,
    /// Bytes written to the file.
    file_len: u64,
    /// A temp file failed: memory only from now on.
    disk_failed: bool,
    /// Scratch for reads from the file.
    scratch: Vec<u8>,
}

impl Spool {
    /// An empty spool for a request body, read again on a retry.
    pub fn for_request(limits: Limits) -> Spool {
        Spool::new(limits, true)
    }

    /// An empty spool for a response body, whose taken bytes are dropped.
    pub fn for_response(limits: Limits) -> Spool {
        Spool::new(limits, false)
    }

    fn new(limits: Limits, keep: bool) -> Spool {
        Spool {
            limits,
            keep,
            mem: VecDeque::new(),
            mem_len: 0,
            at: (0, 0),
            mem_taken: 0,
            counted: 0,
            file: None,
            file_pos: 0,
            file_len: 0,
            disk_failed: false,
            scratch: Vec::new(),
        }
    }

    /// Bytes not taken yet.
    pub fn len(&self) -> u64 {
        (self.mem_len - self.mem_taken) as u64 + (self.file_len - self.file_pos)
    }

    /// Whether every byte pushed has been taken.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes pushed in all (taken or not) for a request spool.
    pub fn total(&self) -> u64 {
        self.mem_len as u64 + self.file_len
    }

    /// Whether a temp file holds some of the body.
    pub fn on_disk(&self) -> bool {
        self.file_len > 0
    }

    /// Whether a response spool should take more: memory left, or a temp
    /// file under `max_file`. When temp files failed, only memory counts.
    pub fn has_room(&self) -> bool {
        let mem = self.mem_len - self.mem_taken;
        if self.file_len == self.file_pos && mem < self.limits.memory {
            return true;
        }
        !self.disk_failed && self.file_len - self.file_pos < self.limits.max_file
    }

    /// Appends a copy of `data` ([`Spool::push_bytes`]).
    pub fn push(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        self.push_bytes(Bytes::copy_from_slice(data))
    }

    /// Appends `data` (kept as it is while in memory), or fails and keeps
    /// none of it. When a temp file fails, a response spool with nothing
    /// in its file keeps `data` in memory instead (logged) and
    /// [`Spool::has_room`] then says no until memory drains: the upstream
    /// waits for the client.
    pub fn push_bytes(&mut self, data: Bytes) -> Result<(), SpoolError> {
        if data.is_empty() {
            return Ok(());
        }
        // Bytes go to memory only while nothing waits in the file (order).
        if self.file_len == self.file_pos && self.fits_memory(data.len()) {
            self.keep_in_memory(data);
            return Ok(());
        }
        match self.write_to_file(&data) {
            Ok(()) => Ok(()),
            Err(e) => {
                FAILURES.fetch_add(1, Relaxed);
                if self.keep || self.file_len > self.file_pos {
                    return Err(e);
                }
                tracing::warn!("response buffering falls back to memory: {e}");
                self.disk_failed = true;
                self.keep_in_memory(data);
                Ok(())
            }
        }
    }

    /// Whether `n` more bytes may stay in memory.
    fn fits_memory(&self, n: usize) -> bool {
        let mine = self.mem_len - self.mem_taken + n;
        if mine > self.limits.memory {
            return false;
        }
        let all = MEMORY.load(Relaxed);
        all + n <= self.limits.total_memory
    }

    fn keep_in_memory(&mut self, data: Bytes) {
        self.mem_len += data.len();
        self.mem.push_back(data);
        self.recount();
    }

    fn write_to_file(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        let err = |source| SpoolError {
            dir: self.limits.dir.display().to_string(),
            source,
        };
        if self.file.is_none() {
            self.file = Some(tempfile::tempfile_in(&self.limits.dir).map_err(err)?);
        }
        let Some(file) = &self.file else {
            return Ok(());
        };
        file.write_all_at(data, self.file_len).map_err(err)?;
        let n = data.len() as u64;
        self.file_len += n;
        DISK.fetch_add(n, Relaxed);
        SPILLED.fetch_add(n, Relaxed);
        Ok(())
    }

    /// Keeps [`MEMORY`] in step with the bytes this spool holds.
    fn recount(&mut self) {
        let now = self.mem_len;
        if now >= self.counted {
            MEMORY.fetch_add(now - self.counted, Relaxed);
        } else {
            MEMORY.fetch_sub(self.counted - now, Relaxed);
        }
        self.counted = now;
    }

    /// The next bytes to take (empty when none are left): from memory, or
    /// up to 64 KiB read from the temp file.
    pub fn front(&mut self) -> io::Result<&[u8]> {
        if let Some(chunk) = self.mem.get(self.at.0) {
            return Ok(&chunk[self.at.1..]);
        }
        let left = self.file_len - self.file_pos;
        let Some(file) = self.file.as_ref().filter(|_| left > 0) else {
            return Ok(&[]);
        };
        let n = usize::try_from(left).unwrap_or(FILE_READ).min(FILE_READ);
        self.scratch.resize(n, 0);
        file.read_exact_at(&mut self.scratch, self.file_pos)?;
        Ok(&self.scratch)
    }

    /// Takes the next bytes of a response spool (None when none are left):
    /// a chunk from memory as it was pushed, or up to 64 KiB read from the
    /// temp file.
    pub fn take(&mut self) -> io::Result<Option<Bytes>> {
        if !self.keep && self.at.0 < self.mem.len() {
            if let Some(chunk) = self.mem.pop_front() {
                let rest = chunk.slice(self.at.1..);
                self.mem_len -= chunk.len();
                self.mem_taken -= self.at.1;
                self.at = (0, 0);
                self.recount();
                return Ok(Some(rest));
            }
        }
        let front = self.front()?;
        if front.is_empty() {
            return Ok(None);
        }
        let out = Bytes::copy_from_slice(front);
        self.consume(out.len());
        Ok(Some(out))
    }

    /// Takes `n` bytes from the front (at most what [`Spool::front`] gave).
    pub fn consume(&mut self, n: usize) {
        if let Some(chunk) = self.mem.get(self.at.0) {
            let n = n.min(chunk.len() - self.at.1);
            self.at.1 += n;
            self.mem_taken += n;
            if self.at.1 == chunk.len() {
                if self.keep {
                    self.at = (self.at.0 + 1, 0);
                } else {
                    self.mem_len -= chunk.len();
                    self.mem_taken -= chunk.len();
                    self.mem.pop_front();
                    self.at = (0, 0);
                    self.recount();
                }
            }
            return;
        }
        self.file_pos = (self.file_pos + n as u64).min(self.file_len);
        if !self.keep && self.file_pos == self.file_len && self.file_len > 0 {
            // Drained: start the file over rather than grow it forever.
            DISK.fetch_sub(self.file_len, Relaxed);
            if let Some(f) = &self.file {
                let _ = f.set_len(0);
            }
            self.file_len = 0;
            self.file_pos = 0;
        }
    }

    /// Starts a request spool over from its first byte.
    pub fn rewind(&mut self) {
        if self.keep {
            self.at = (0, 0);
            self.mem_taken = 0;
            self.file_pos = 0;
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        MEMORY.fetch_sub(self.counted, Relaxed);
        DISK.fetch_sub(self.file_len, Relaxed);
    }
}

/// What all spools hold now and have done, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Bytes in memory now.
    pub memory: u64,
    /// Bytes in temp files now.
    pub disk: u64,
    /// Bytes ever written to temp files.
    pub spilled: u64,
    /// Temp files that could not be made or written.
    pub failures: u64,
}

/// The spools' totals now.
pub fn totals() -> Totals {
    Totals {
        memory: MEMORY.load(Relaxed) as u64,
        disk: DISK.load(Relaxed),
        spilled: SPILLED.load(Relaxed),
        failures: FAILURES.load(Relaxed),
    }
}

/// The spools' totals as metrics.
pub fn gauges() -> Vec<crate::metrics::StateGauge> {
    let t = totals();
    let gauge = |name, labels, value: u64| crate::metrics::StateGauge {
        name,
        labels,
        value: value as f64,
    };
    vec![
        gauge(
            "duotone_buffered_bytes",
            vec![("where", "memory".to_string())],
            t.memory,
        ),
        gauge(
            "duotone_buffered_bytes",
            vec![("where", "disk".to_string())],
            t.disk,
        ),
        gauge("duotone_buffer_spilled_bytes_total", vec![], t.spilled),
        gauge("duotone_buffer_failures_total", vec![], t.failures),
    ]
}

#[cfg(test)]
mod tests;
