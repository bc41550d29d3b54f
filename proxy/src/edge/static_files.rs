//! Glue between the `files` crate and Pingora: serve a static route's file
//! from memory (small files) or in bounded chunks.

use files::{Body, FileOptions, FileServer, OpenFiles};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use routes::config::StaticSpec;
use std::sync::Mutex;

/// Chunk size for streamed file bodies (256 KiB): few blocking-pool trips
/// per file, still bounded memory per download.
const CHUNK: usize = 256 * 1024;

static SHARED: Mutex<Option<OpenFiles>> = Mutex::new(None);

/// Gauges of the current open-files bound: files held open and requests
/// waiting for one.
pub fn gauges() -> Vec<crate::metrics::StateGauge> {
    let shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let (open, waiting) = shared
        .as_ref()
        .map_or((0, 0), |o| (o.in_use(), o.waiting()));
    vec![
        crate::metrics::StateGauge {
            name: "duotone_open_files",
            labels: vec![],
            value: open as f64,
        },
        crate::metrics::StateGauge {
            name: "duotone_open_files_waiting",
            labels: vec![],
            value: waiting as f64,
        },
    ]
}

/// The process-wide bound on files held open by static routes (file
/// descriptors are a process resource). Reused across reloads while the
/// limit stays the same; a new limit applies to requests that start after
/// the reload.
pub fn open_files(limit: usize) -> OpenFiles {
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    match shared.as_ref() {
        Some(o) if o.limit() == limit.max(1) => o.clone(),
        _ => {
            let o = OpenFiles::new(limit);
            *shared = Some(o.clone());
            o
        }
    }
}

/// File server options for a static route; `open_files` bounds the files
/// held open by all static routes together.
pub fn options(spec: &StaticSpec, open_files: OpenFiles) -> FileOptions {
    FileOptions {
        open_files: Some(open_files),
        root: spec.root.clone(),
        precompressed: spec.precompressed,
        immutable_hashed: spec.immutable_hashed,
        // Checked by validation (same syntax and limit).
        immutable_pattern: spec
            .immutable_pattern
            .as_deref()
            .and_then(|p| files::HashPattern::new(p).ok()),
        index: spec.index.clone(),
        follow_symlinks: spec.follow_symlinks,
        max_age: spec.max_age,
        immutable_max_age: spec.immutable_max_age,
        ..FileOptions::new(&spec.root)
    }
}

/// Answers the request from `files`; `prefix_len` bytes of the path are the route prefix.
/// Returns the number of body bytes sent.
/// `hsts` is added on HTTPS responses of sites that enable it, `add` (the
/// route's `headers`) on 2xx/3xx ones; `not_found` (the site's 404 page)
/// replaces the body of a 404.
pub async fn serve(
    session: &mut Session,
    files: &FileServer,
    prefix_len: usize,
    hsts: Option<&str>,
    add: &routes::headers::AddHeaders,
    not_found: Option<&crate::lane::client::Page>,
) -> Result<u64> {
    let req = session.req_header();
    let path = req.uri.path();
    let rel = path.get(prefix_len..).unwrap_or("");
    let mut reply = files.respond(&req.method, rel, &req.headers).await;
    if let Some(page) = not_found {
        crate::control::pages::over_not_found(&mut reply, page, req.method == http::Method::HEAD);
    }
    let mut resp = ResponseHeader::build(reply.status, Some(reply.headers.len()))?;
    for (k, v) in reply.headers.iter() {
        resp.append_header(k.clone(), v.clone())?;
    }
    if let Some(h) = hsts {
        resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, h)?;
    }
    crate::edge::respond::add_headers(&mut resp, add)?;
    match reply.body {
        Body::Empty => {
            session.write_response_header(Box::new(resp), true).await?;
            Ok(0)
        }
        Body::Bytes(b) if b.is_empty() => {
            session.write_response_header(Box::new(resp), true).await?;
            Ok(0)
        }
        Body::Bytes(b) => {
            let n = b.len() as u64;
            session.write_response_header(Box::new(resp), false).await?;
            session.write_response_body(Some(b), true).await?;
            Ok(n)
        }
        Body::File(mut body) => {
            session.write_response_header(Box::new(resp), false).await?;
            let mut sent = 0u64;
            loop {
                let chunk = files::read_chunk(&mut body, CHUNK).await.map_err(|e| {
                    pingora::Error::because(pingora::ErrorType::ReadError, "reading static file", e)
                })?;
                match chunk {
                    Some(c) => {
                        sent += c.len() as u64;
                        session.write_response_body(Some(c), false).await?;
                    }
                    None => break,
                }
            }
            session.write_response_body(None, true).await?;
            Ok(sent)
        }
    }
}
