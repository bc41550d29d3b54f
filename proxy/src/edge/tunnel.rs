//! Upgraded connections (WebSockets, any `101 Switching Protocols`) on
//! Pingora's path (the lane hands every upgrade there): counted per color
//! apart from requests, and closed by the edge when a drain asks.
//!
//! How the edge closes one: it shuts down the read side of the upstream
//! socket (`shutdown(SHUT_RD)` on its own duplicate of the descriptor, so
//! the descriptor can never be another connection's). Pingora then sees
//! the upstream end the tunnel, as when the app closes it: it relays what
//! it already has to the client and closes both connections. For a
//! WebSocket whose server-to-client stream is between frames, the edge
//! first adds a close frame, status 1001 "going away", so the client sees a
//! clean close (browsers and Channels' JavaScript then reconnect, to the
//! new color); mid-frame it cannot, and the client sees the TCP close only.
//! The edge follows the frame boundaries by reading frame headers and
//! skipping payloads by their length; it never buffers or changes a frame.

use bytes::{Bytes, BytesMut};
use routes::{Closer, ColorStats};
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A close frame from a server: FIN + opcode 8, unmasked, 12 payload bytes:
/// status 1001 ("going away", RFC 6455 §7.4.1) and a reason.
pub const GOING_AWAY: &[u8] = b"\x88\x0c\x03\xe9going away";

/// The upstream side of an upgraded connection, held so a drain can end it.
#[derive(Debug)]
pub struct UpstreamSocket {
    /// Our own duplicate of the upstream connection's descriptor (std's
    /// `TcpStream` is only the owner and `shutdown(2)` caller here: it works
    /// for unix sockets as well).
    socket: std::net::TcpStream,
    closed: AtomicBool,
}

impl UpstreamSocket {
    /// Duplicates `fd`, the descriptor of an upstream connection that is
    /// open while this is called.
    pub fn dup(fd: RawFd) -> std::io::Result<Self> {
        // SAFETY: Pingora passed `fd` for the upstream connection it is
        // proxying on right now, so it is open for the length of this call;
        // it is only borrowed to duplicate it (F_DUPFD_CLOEXEC).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let owned = borrowed.try_clone_to_owned()?;
        Ok(UpstreamSocket {
            socket: std::net::TcpStream::from(owned),
            closed: AtomicBool::new(false),
        })
    }

    /// Whether the edge closed the connection (rather than the app or the
    /// client).
    pub fn closed_by_edge(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Closer for UpstreamSocket {
    fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Err(e) = self.socket.shutdown(std::net::Shutdown::Read) {
            // Already closed by the app (ENOTCONN): it ends by itself.
            tracing::debug!(fd = ?self.socket.as_fd(), "closing an upgraded connection: {e}");
        }
    }
}

/// An upgraded connection being relayed: registered on its color until
/// dropped.
pub struct Tunnel {
    socket: Option<Arc<UpstreamSocket>>,
    /// Frame boundaries of the server-to-client stream, for a WebSocket.
    frames: Option<FrameBoundary>,
    _registered: routes::pool::Upgraded,
}

impl Tunnel {
    /// Registers an upgraded connection on `stats`. `fd` is the upstream
    /// connection's descriptor (without it, or if it cannot be duplicated,
    /// the connection is counted but cannot be closed by the edge);
    /// `websocket` when the upgrade is to WebSocket.
    pub fn start(stats: &Arc<ColorStats>, fd: Option<RawFd>, websocket: bool) -> Tunnel {
        let socket = fd.and_then(|fd| match UpstreamSocket::dup(fd) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                tracing::warn!("upgraded connection: the edge cannot close it on drains: {e}");
                None
            }
        });
        let closer: Arc<dyn Closer> = match &socket {
            Some(s) => s.clone(),
            None => Arc::new(Unclosable),
        };
        Tunnel {
            _registered: stats.upgrade(closer),
            socket,
            frames: websocket.then(FrameBoundary::default),
        }
    }

    /// Sees a chunk of the server-to-client stream before it is relayed;
    /// at its end after a close by the edge, appends a WebSocket close
    /// frame when the stream is between frames.
    pub fn relay(&mut self, body: &mut Option<Bytes>, end_of_stream: bool) {
        let Some(frames) = &mut self.frames else {
            return;
        };
        if let Some(b) = body {
            frames.feed(b);
        }
        let closed = self.socket.as_ref().is_some_and(|s| s.closed_by_edge());
        if end_of_stream && closed && frames.may_close() {
            let mut out = BytesMut::new();
            if let Some(b) = body.take() {
                out.extend_from_slice(&b);
            }
            out.extend_from_slice(GOING_AWAY);
            *body = Some(out.freeze());
            // Once only.
            self.frames = None;
        }
    }
}

/// A closer for a connection whose descriptor could not be kept.
struct Unclosable;

impl Closer for Unclosable {
    fn close(&self) {}
}

/// Follows the frame boundaries of a WebSocket stream (RFC 6455 §5.2):
/// reads each frame header, skips the payload by its length.
#[derive(Debug, Default, Clone)]
pub struct FrameBoundary {
    /// Header bytes of the frame being read (2 to 14).
    head: [u8; 14],
    have: usize,
    /// Payload bytes still to pass.
    skip: u64,
    /// A header made no sense: never claim a boundary again.
    lost: bool,
    /// The app already sent a close frame.
    close_seen: bool,
}

impl FrameBoundary {
    /// Follows `data`, the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.lost {
            if self.skip > 0 {
                let n = usize::try_from(self.skip).map_or(data.len(), |s| s.min(data.len()));
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let (first, rest) = data.split_at(1);
            self.head[self.have] = first[0];
            self.have += 1;
            data = rest;
            if self.have < 2 {
                continue;
            }
            let len7 = self.head[1] & 0x7f;
            let ext = match len7 {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
            if self.have < 2 + ext + mask {
                continue;
            }
            let payload = match ext {
                0 => u64::from(len7),
                2 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
                _ => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.head[2..10]);
                    u64::from_be_bytes(b)
                }
            };
            if payload >> 63 != 0 {
                self.lost = true;
                return;
            }
            self.close_seen |= self.head[0] & 0x0f == 0x8;
            self.skip = payload;
            self.have = 0;
        }
    }

    /// Whether the bytes seen so far end with a whole frame.
    pub fn at_boundary(&self) -> bool {
        !self.lost && self.have == 0 && self.skip == 0
    }

    /// Whether a close frame may be sent now: between frames, and the app
    /// has not sent its own (nothing may follow a close frame).
    pub fn may_close(&self) -> bool {
        self.at_boundary() && !self.close_seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x82];
        let m = if masked { 0x80 } else { 0 };
        match payload {
            0..=125 => f.push(m | payload as u8),
            126..=65535 => {
                f.push(m | 126);
                f.extend_from_slice(&(payload as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(payload as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(7u8, payload));
        f
    }

    #[test]
    fn follows_frame_boundaries_across_any_split() {
        let mut stream = Vec::new();
        for (len, masked) in [
            (0, false),
            (5, false),
            (125, true),
            (126, false),
            (70_000, false),
        ] {
            stream.extend(frame(len, masked));
        }
        stream.extend_from_slice(GOING_AWAY);
        for chunk in [1, 2, 3, 7, 100, 4096, stream.len()] {
            let mut b = FrameBoundary::default();
            for (i, c) in stream.chunks(chunk).enumerate() {
                b.feed(c);
                let end = (i + 1) * chunk;
                if end >= stream.len() {
                    assert!(b.at_boundary(), "chunk {chunk}");
                }
            }
        }
        let mut b = FrameBoundary::default();
        b.feed(&stream[..stream.len() - 1]);
        assert!(!b.at_boundary());
        b.feed(&stream[..1]);
        assert!(b.at_boundary(), "the last byte completes the close frame");
        assert!(!b.may_close(), "the stream ends with a close frame");
        let mut b = FrameBoundary::default();
        b.feed(&stream[..1]);
        assert!(!b.at_boundary(), "one header byte");
        let mut b = FrameBoundary::default();
        b.feed(&frame(3, false));
        assert!(b.may_close());
    }

    #[test]
    fn a_nonsense_length_is_never_a_boundary() {
        let mut b = FrameBoundary::default();
        b.feed(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]);
        assert!(!b.at_boundary());
        b.feed(&frame(1, false));
        assert!(!b.at_boundary());
    }

    #[test]
    fn close_frame_says_going_away() {
        assert_eq!(GOING_AWAY[0], 0x88);
        assert_eq!(usize::from(GOING_AWAY[1]), GOING_AWAY.len() - 2);
        assert_eq!(u16::from_be_bytes([GOING_AWAY[2], GOING_AWAY[3]]), 1001);
    }

    #[test]
    fn appends_the_close_frame_only_between_frames_after_an_edge_close() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let stats = Arc::new(ColorStats::default());
        let fd = std::os::fd::AsRawFd::as_raw_fd(&a);
        let mut t = Tunnel::start(&stats, Some(fd), true);
        assert_eq!(stats.upgraded(), 1);
        let mut body = Some(Bytes::from(frame(3, false)));
        t.relay(&mut body, false);
        // The app ended the stream: nothing added.
        let mut end = None;
        t.relay(&mut end, true);
        assert_eq!(end, None);
        // The edge closed it: a close frame follows the last whole frame.
        assert_eq!(stats.close_upgraded(true), 1);
        let mut end = None;
        t.relay(&mut end, true);
        assert_eq!(end.as_deref(), Some(GOING_AWAY));
        drop(t);
        assert_eq!(stats.upgraded(), 0);

        // Mid-frame: no close frame.
        let mut t = Tunnel::start(&stats, Some(fd), true);
        let mut body = Some(Bytes::from(frame(10, false)[..5].to_vec()));
        stats.close_upgraded(true);
        t.relay(&mut body, true);
        assert_eq!(body.map(|b| b.len()), Some(5));
    }
}
