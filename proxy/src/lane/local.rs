//! Static files answered on the lane: the `files` crate decides (path
//! safety, validators, ranges, codings, cache headers); this writes its
//! reply, small bodies in the same write as the head.

use super::request::{header, StaticRequest};
use super::timer::within;
use super::Outcome;
use crate::net::stream::HeadDeadline;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Chunk size for streamed file bodies (as on Pingora's path).
const CHUNK: usize = 256 * 1024;

/// Answers `req` from its route's files; `hsts` is added on HTTPS
/// responses of sites that enable it, `add` (the route's `headers`) on
/// 2xx/3xx ones; `not_found` (the site's 404 page) replaces a 404's body.
pub async fn serve(
    req: &StaticRequest,
    hsts: Option<&str>,
    add: &routes::headers::AddHeaders,
    close: bool,
    io: &mut HeadDeadline,
    timeout: Duration,
    not_found: Option<&crate::lane::client::Page>,
) -> Outcome {
    let mut reply = req.files.respond(&req.method, &req.rel, &req.headers).await;
    if let Some(page) = not_found {
        let head = req.method == http::Method::HEAD;
        crate::control::pages::over_not_found(&mut reply, page, head);
    }
    let status = reply.status.as_u16();
    let mut outcome = Outcome {
        status,
        bytes: 0,
        pool: usize::MAX,
        member: None,
        ok: false,
        keep_client: false,
        held: 0.0,
    };
    let small = match &reply.body {
        files::Body::Bytes(b) => b.len(),
        _ => 0,
    };
    let mut out = Vec::with_capacity(512 + small);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(reply.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        reply
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    let add = add.for_status(status);
    for (name, value) in reply.headers.iter() {
        if add.is_empty() || !routes::headers::AddHeaders::replaces(add, name.as_str()) {
            header(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if let Some(h) = hsts {
        header(&mut out, b"strict-transport-security", h.as_bytes());
    }
    for (name, value) in add.iter().filter(|(_, v)| !v.is_empty()) {
        header(&mut out, name.as_bytes(), value.as_bytes());
    }
    super::response::date(&mut out);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let file = match reply.body {
        files::Body::Empty => None,
        files::Body::Bytes(b) => {
            out.extend_from_slice(&b);
            outcome.bytes = b.len() as u64;
            None
        }
        files::Body::File(f) => Some(f),
    };
    if !matches!(within(timeout, io.write_all(&out)).await, Ok(Ok(()))) {
        return outcome;
    }
    if let Some(mut body) = file {
        loop {
            match files::read_chunk(&mut body, CHUNK).await {
                Ok(Some(c)) => {
                    if !matches!(within(timeout, io.write_all(&c)).await, Ok(Ok(()))) {
                        return outcome;
                    }
                    outcome.bytes += c.len() as u64;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("reading static file: {e}");
                    return outcome;
                }
            }
        }
    }
    if !matches!(within(timeout, io.flush()).await, Ok(Ok(()))) {
        return outcome;
    }
    outcome.ok = true;
    outcome.keep_client = true;
    outcome
}
