//! Response bodies and bounded-memory streaming of file bodies.

use std::io::{self, SeekFrom};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Recommended chunk size for [`read_chunk`]: 64 KiB.
pub const DEFAULT_CHUNK_SIZE: usize = 64 * 1024;

/// The body of a [`Reply`](crate::Reply).
#[derive(Debug)]
pub enum Body {
    /// No body (HEAD, 304, 416, redirects).
    Empty,
    /// A small in-memory body (error pages).
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
/// Holds exactly one file handle, released when dropped.
#[derive(Debug)]
pub struct FileBody {
    file: tokio::fs::File,
    offset: u64,
    len: u64,
    sent: u64,
    positioned: bool,
}

impl FileBody {
    pub(crate) fn new(file: tokio::fs::File, offset: u64, len: u64) -> Self {
        FileBody {
            file,
            offset,
            len,
            sent: 0,
            positioned: false,
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
/// Memory stays bounded by `buf_size` per call. If the file shrank since it
/// was opened, this fails with [`io::ErrorKind::UnexpectedEof`] (the
/// Content-Length was already promised, so the caller must abort the response).
pub async fn read_chunk(body: &mut FileBody, buf_size: usize) -> io::Result<Option<Bytes>> {
    let remaining = body.remaining();
    if remaining == 0 {
        return Ok(None);
    }
    if !body.positioned {
        body.file.seek(SeekFrom::Start(body.offset)).await?;
        body.positioned = true;
    }
    let want = usize::try_from(remaining)
        .unwrap_or(usize::MAX)
        .min(buf_size.max(1));
    let mut buf = BytesMut::with_capacity(want);
    while buf.len() < want {
        let limit = (want - buf.len()) as u64;
        let n = (&mut body.file).take(limit).read_buf(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being served",
            ));
        }
    }
    body.sent += buf.len() as u64;
    Ok(Some(buf.freeze()))
}
