//! A response body read as the upstream sends it and written as the client
//! takes it ([`buffered`]): the two sides meet in a [`Spool`] (memory, then
//! a temp file), so a slow client never holds an upstream worker. The
//! upstream connection is given back (or closed) as soon as the body is in,
//! while the client is still being fed.
//!
//! [`Framed`] follows the body's framing for both this and the relay's
//! streaming loop.

use super::client::Client;
use super::response::{Chunks, Framing};
use super::timer::within;
use super::upstream::Conn;
use crate::net::spool::Spool;
use bytes::{Bytes, BytesMut};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

/// Where a response body ends, followed read by read.
pub struct Framed {
    framing: Framing,
    /// Body bytes still to come (Content-Length framing).
    left: u64,
    chunks: Chunks,
    /// Pass chunked bodies on decoded (into the `data` buffer).
    dechunk: bool,
}

impl Framed {
    /// Follows a body framed by `framing`; `dechunk`: chunked bodies are
    /// passed on decoded.
    pub fn new(framing: Framing, dechunk: bool) -> Framed {
        Framed {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunks: Chunks::default(),
            dechunk: dechunk && framing == Framing::Chunked,
        }
    }

    /// Whether body bytes are passed on decoded, from `data`.
    pub fn decodes(&self) -> bool {
        self.dechunk
    }

    /// Of the response bytes `read`: how many belong to the body, and
    /// whether the body is complete. Decoded chunk data replaces what is
    /// in `data`. Err: a malformed chunked body.
    pub fn feed(&mut self, read: &[u8], data: &mut Vec<u8>) -> Result<(usize, bool), ()> {
        let n = read.len();
        Ok(match self.framing {
            Framing::Empty => (0, true),
            Framing::Length(_) => {
                let take = n.min(usize::try_from(self.left).unwrap_or(usize::MAX));
                self.left -= take as u64;
                (take, self.left == 0)
            }
            Framing::Chunked if self.dechunk => {
                data.clear();
                let take = self.chunks.feed_data(read, data).map_err(|_| ())?;
                (take, self.chunks.done())
            }
            Framing::Chunked => (self.chunks.feed(read).map_err(|_| ())?, self.chunks.done()),
            Framing::Close => (n, false),
        })
    }

    /// Whether the upstream closing the connection ends the body well.
    pub fn ends_at_close(&self) -> bool {
        self.framing == Framing::Close
    }
}

/// Size of each read from the upstream (the pieces the spool holds).
const READ: usize = 64 * 1024;

/// How the upstream side of a buffered body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    /// The whole body arrived.
    pub complete: bool,
    /// The connection can serve another request (no stray bytes).
    pub reusable: bool,
}

/// How a buffered body went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pumped {
    /// The upstream side.
    pub upstream: Upstream,
    /// Body bytes the client was sent.
    pub bytes: u64,
    /// The client got the whole body.
    pub delivered: bool,
}

/// What the two sides share.
struct Shared {
    spool: Spool,
    /// Set once the upstream side ended.
    ended: Option<Upstream>,
}

/// Sends `head` and the body (`first`, already read, then the rest from
/// `up`) to `client`, reading the upstream as fast as it sends. When the
/// body is in, `release` gets the connection (with whether it is
/// reusable) before the client has taken it all.
#[allow(clippy::too_many_arguments)]
pub async fn buffered<C: Client>(
    up: &mut Option<Conn>,
    release: impl FnOnce(Conn, bool),
    client: &mut C,
    head: &mut C::Head,
    first: &[u8],
    mut framed: Framed,
    mut spool: Spool,
    read_timeout: Duration,
) -> Pumped {
    let mut ended = None;
    if let Err(e) = spool.push(first) {
        tracing::warn!("{e}");
        ended = Some(Upstream {
            complete: false,
            reusable: false,
        });
    }
    let shared = Mutex::new(Shared { spool, ended });
    let data_ready = Notify::new();
    let room = Notify::new();
    let lock = || shared.lock().unwrap_or_else(|e| e.into_inner());

    let reader = async {
        let mut data = Vec::new();
        let end = |complete, reusable| Upstream { complete, reusable };
        let result = loop {
            if lock().ended.is_some() {
                break None;
            }
            while !lock().spool.has_room() {
                room.notified().await;
            }
            let Some(conn) = up.as_mut() else {
                break Some(end(false, false));
            };
            // A fresh buffer per read: it goes into the spool as it is.
            let mut read = BytesMut::with_capacity(READ);
            let n = match within(read_timeout, conn.read_buf(&mut read)).await {
                Ok(Ok(n)) => n,
                _ => break Some(end(false, false)),
            };
            if n == 0 {
                break Some(end(framed.ends_at_close(), false));
            }
            let Ok((take, done)) = framed.feed(&read, &mut data) else {
                break Some(end(false, false));
            };
            let out = if framed.decodes() {
                Bytes::from(std::mem::take(&mut data))
            } else {
                read.truncate(take);
                read.freeze()
            };
            if let Err(e) = lock().spool.push_bytes(out) {
                tracing::warn!("{e}");
                break Some(end(false, false));
            }
            data_ready.notify_one();
            if done {
                break Some(end(true, take == n));
            }
            // Let the client side write what just came before reading on:
            // a client that keeps up then never sends the body to disk.
            tokio::task::yield_now().await;
        };
        if let Some(r) = result {
            lock().ended = Some(r);
            data_ready.notify_one();
        }
        // The body is in (or never will be): the upstream is done with.
        if let Some(conn) = up.take() {
            let reusable = result.is_some_and(|r| r.complete && r.reusable);
            release(conn, reusable);
        }
    };

    let writer = async {
        let mut bytes = 0u64;
        if !client.send_head(head, &[], false).await {
            return (bytes, false);
        }
        loop {
            let (chunk, ended, last) = {
                let mut s = lock();
                let chunk = match s.spool.take() {
                    Ok(c) => c.unwrap_or_default(),
                    Err(e) => {
                        tracing::warn!("reading a buffered response: {e}");
                        return (bytes, false);
                    }
                };
                let last = s.ended.is_some() && s.spool.is_empty();
                (chunk, s.ended, last)
            };
            room.notify_one();
            if chunk.is_empty() {
                match ended {
                    Some(u) if u.complete => return (bytes, client.send_body(&[], true).await),
                    Some(_) => return (bytes, false),
                    None => {
                        data_ready.notified().await;
                        continue;
                    }
                }
            }
            let end = last && ended.is_some_and(|u| u.complete);
            if !client.send_body(&chunk, end).await {
                return (bytes, false);
            }
            bytes += chunk.len() as u64;
            if end {
                return (bytes, true);
            }
        }
    };

    let mut reader = std::pin::pin!(reader);
    let mut writer = std::pin::pin!(writer);
    let (bytes, delivered) = tokio::select! {
        () = &mut reader => writer.await,
        w = &mut writer => {
            if w.1 {
                reader.await;
            }
            w
        }
    };
    let upstream = lock().ended.unwrap_or(Upstream {
        complete: false,
        reusable: false,
    });
    Pumped {
        upstream,
        bytes,
        delivered,
    }
}
