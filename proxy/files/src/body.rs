//! Response bodies and bounded-memory streaming of file bodies.

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::Bytes;

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
/// Holds exactly one file handle, released when dropped (or when the last
/// read in flight finishes).
#[derive(Debug)]
pub struct FileBody {
    file: Arc<File>,
    offset: u64,
    len: u64,
    sent: u64,
}

impl FileBody {
    pub(crate) fn new(file: File, offset: u64, len: u64) -> Self {
        FileBody {
            file: Arc::new(file),
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
/// One positioned read in one `spawn_blocking` call per chunk, straight into
/// the returned buffer. Memory stays bounded by `buf_size` per call. If the
/// file shrank since it was opened, this fails with
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
    let file = body.file.clone();
    let pos = body.offset + body.sent;
    // Allocated (and later freed, once written) on the calling thread, so
    // the allocator reuses it there rather than growing a blocking-pool
    // thread's heap.
    let mut buf = vec![0u8; want];
    let chunk = tokio::task::spawn_blocking(move || {
        let mut got = 0;
        while got < want {
            match read_at(&file, &mut buf[got..], pos + got as u64) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while being served",
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(io::Error::other)??;
    body.sent += chunk.len() as u64;
    Ok(Some(chunk))
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
