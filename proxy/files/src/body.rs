//! Response bodies and bounded-memory streaming of file bodies.

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::Bytes;

use crate::open_files::Permit;

/// Recommended chunk size for [`read_chunk`]: 64 KiB.
pub const DEFAULT_CHUNK_SIZE: usize = 64 * 1024;

/// The body of a [`Reply`](crate::Reply).
#[derive(Debug)]
pub enum Body {
    /// No body (HEAD, 304, 416, redirects).
    Empty,
    /// An in-memory body (error pages, small files).
    Bytes(Bytes),
    /// A byte range of an open file; stream it with [`read_chunk`].
    File(FileBody),
}

impl Body {
    /// Number of body bytes that will be produced.
    pub fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::File(f) => f.len(),
        }
    }

    /// Whether the body produces no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An open file plus the byte range of it to send.
///
/// Holds exactly one file handle, and its [`OpenFiles`](crate::OpenFiles)
/// permit if the server is bounded; both are released when the body is
/// dropped (or when the last read in flight finishes).
#[derive(Debug)]
pub struct FileBody {
    handle: Arc<Handle>,
    offset: u64,
    len: u64,
    sent: u64,
}

/// The open file and its permit, shared with reads in flight.
#[derive(Debug)]
struct Handle {
    /// Declared first, so the file is closed before the permit is released.
    file: File,
    _permit: Option<Permit>,
}

impl FileBody {
    pub(crate) fn new(file: File, permit: Option<Permit>, offset: u64, len: u64) -> Self {
        FileBody {
            handle: Arc::new(Handle {
                file,
                _permit: permit,
            }),
            offset,
            len,
            sent: 0,
        }
    }

    /// Offset in the file of the first byte to send.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Total number of bytes this body sends (the Content-Length).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the body sends zero bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes not yet returned by [`read_chunk`].
    pub fn remaining(&self) -> u64 {
        self.len - self.sent
    }
}

/// Reads the next chunk of at most `buf_size` bytes (at least 1 is used);
/// `Ok(None)` once all `len` bytes were returned.
///
/// On Linux, what is already in the page cache is read on the calling thread
/// without blocking (`preadv2` with `RWF_NOWAIT`); the rest is read with
/// positioned reads in one `spawn_blocking` call. Either way the bytes go
/// straight into the returned buffer. Memory stays bounded by `buf_size` per
/// call. If the file shrank since it was opened, this fails with
/// [`io::ErrorKind::UnexpectedEof`] (the Content-Length was already promised,
/// so the caller must abort the response).
pub async fn read_chunk(body: &mut FileBody, buf_size: usize) -> io::Result<Option<Bytes>> {
    let remaining = body.remaining();
    if remaining == 0 {
        return Ok(None);
    }
    let want = usize::try_from(remaining)
        .unwrap_or(usize::MAX)
        .min(buf_size.max(1));
    let pos = body.offset + body.sent;
    // Allocated (and later freed, once written) on the calling thread, so
    // the allocator reuses it there rather than growing a blocking-pool
    // thread's heap.
    let mut buf: Vec<u8> = Vec::with_capacity(want);
    #[cfg(target_os = "linux")]
    while buf.len() < want {
        match sys::pread_into(&body.handle.file, &mut buf, want, pos, true) {
            Ok(n) if n > 0 => {}
            // EOF, EAGAIN (not cached), EOPNOTSUPP, EINTR, …: the blocking
            // path retries, and reports a short file or a real error.
            _ => break,
        }
    }
    if buf.len() < want {
        let handle = body.handle.clone();
        buf = tokio::task::spawn_blocking(move || fill(&handle.file, buf, want, pos))
            .await
            .map_err(io::Error::other)??;
    }
    body.sent += buf.len() as u64;
    Ok(Some(Bytes::from(buf)))
}

fn shrank() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "file shrank while being served",
    )
}

/// Blocking: reads until `buf` holds `want` bytes of the file from `pos`.
fn fill(file: &File, mut buf: Vec<u8>, want: usize, pos: u64) -> io::Result<Vec<u8>> {
    while buf.len() < want {
        match sys::pread_into(file, &mut buf, want, pos, false) {
            Ok(0) => return Err(shrank()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf)
}

/// One positioned read into `buf`'s spare capacity: appends up to
/// `want - buf.len()` bytes read at `pos + buf.len()`.
#[cfg(unix)]
mod sys {
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;

    // SAFETY: each `unsafe` block below says why it holds.
    #[allow(unsafe_code)]
    pub(super) fn pread_into(
        file: &File,
        buf: &mut Vec<u8>,
        want: usize,
        pos: u64,
        nowait: bool,
    ) -> io::Result<usize> {
        let filled = buf.len();
        let spare = &mut buf.spare_capacity_mut()[..want - filled];
        let off = libc::off_t::try_from(pos + filled as u64)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let fd = file.as_raw_fd();
        #[cfg(target_os = "linux")]
        let n = if nowait {
            let iov = libc::iovec {
                iov_base: spare.as_mut_ptr().cast(),
                iov_len: spare.len(),
            };
            // SAFETY: `iov` describes `spare`, writable memory owned by `buf`;
            // the kernel writes at most `iov_len` bytes into it.
            unsafe { libc::preadv2(fd, &iov, 1, off, libc::RWF_NOWAIT) }
        } else {
            // SAFETY: as above, for `pread`.
            unsafe { libc::pread(fd, spare.as_mut_ptr().cast(), spare.len(), off) }
        };
        #[cfg(not(target_os = "linux"))]
        let n = {
            let _ = nowait;
            // SAFETY: `spare` is writable memory of `spare.len()` bytes owned
            // by `buf`; the kernel writes at most that many bytes into it.
            unsafe { libc::pread(fd, spare.as_mut_ptr().cast(), spare.len(), off) }
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        // SAFETY: the kernel initialized the first `n` spare bytes.
        unsafe { buf.set_len(filled + n) };
        Ok(n)
    }
}

#[cfg(windows)]
mod sys {
    use std::fs::File;
    use std::io;

    pub(super) fn pread_into(
        file: &File,
        buf: &mut Vec<u8>,
        want: usize,
        pos: u64,
        _nowait: bool,
    ) -> io::Result<usize> {
        let filled = buf.len();
        buf.resize(want, 0);
        let r = super::read_at(file, &mut buf[filled..], pos + filled as u64);
        buf.truncate(filled + *r.as_ref().unwrap_or(&0));
        r
    }
}

/// One positioned read (does not move any file cursor).
#[cfg(unix)]
pub(crate) fn read_at(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, pos)
}

/// One positioned read (moves the cursor, which nobody else uses).
#[cfg(windows)]
pub(crate) fn read_at(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, pos)
}
