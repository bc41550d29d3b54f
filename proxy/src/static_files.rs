//! Glue between the `files` crate and Pingora: serve a static route's file
//! from memory (small files) or in bounded chunks.

use files::{Body, FileOptions, FileServer};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use routes::config::StaticSpec;

/// Chunk size for streamed file bodies: few blocking-pool trips per file,
/// still bounded memory per download.
const CHUNK: usize = 256 * 1024;

/// File server options for a static route.
pub fn options(spec: &StaticSpec) -> FileOptions {
    FileOptions {
        root: spec.root.clone(),
        precompressed: spec.precompressed,
        immutable_hashed: spec.immutable_hashed,
        index: spec.index.clone(),
        follow_symlinks: spec.follow_symlinks,
        max_age: spec.max_age,
        immutable_max_age: std::time::Duration::from_secs(31_536_000),
        ..FileOptions::new(&spec.root)
    }
}

/// Answers the request from `files`; `prefix_len` bytes of the path are the route prefix.
/// Returns the number of body bytes sent.
/// `hsts` is added on HTTPS responses of sites that enable it.
pub async fn serve(
    session: &mut Session,
    files: &FileServer,
    prefix_len: usize,
    hsts: Option<&str>,
) -> Result<u64> {
    let req = session.req_header();
    let path = req.uri.path();
    let rel = path.get(prefix_len..).unwrap_or("");
    let reply = files.respond(&req.method, rel, &req.headers).await;
    let mut resp = ResponseHeader::build(reply.status, Some(reply.headers.len()))?;
    for (k, v) in reply.headers.iter() {
        resp.append_header(k.clone(), v.clone())?;
    }
    if let Some(h) = hsts {
        resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, h)?;
    }
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
