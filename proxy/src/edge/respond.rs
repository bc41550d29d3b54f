//! Small local responses (errors, redirects) written straight to the client.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// Writes a complete response with a short text body. HEAD gets no body.
pub async fn text(
    session: &mut Session,
    status: u16,
    body: &'static str,
    extra: &[(&'static str, &str)],
) -> Result<()> {
    let head = session.req_header().method == http::Method::HEAD;
    let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    for (k, v) in extra {
        resp.insert_header(*k, *v)?;
    }
    if head || body.is_empty() {
        session.write_response_header(Box::new(resp), true).await
    } else {
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
            .await
    }
}

/// Writes a redirect to `location` with an empty body.
pub async fn redirect(session: &mut Session, status: u16, location: &str) -> Result<()> {
    redirect_with(
        session,
        status,
        location,
        &routes::headers::AddHeaders::NONE,
    )
    .await
}

/// Writes a redirect to `location` with an empty body and the route's
/// configured response fields.
pub async fn redirect_with(
    session: &mut Session,
    status: u16,
    location: &str,
    add: &routes::headers::AddHeaders,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(2))?;
    resp.insert_header(http::header::LOCATION, location)?;
    resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
    add_headers(&mut resp, add)?;
    session.write_response_header(Box::new(resp), true).await
}

/// Applies a route's configured response fields
/// ([`routes::headers::AddHeaders`]) to a response head: on 2xx/3xx, each
/// replaces the fields of its name; an empty value only removes them.
pub fn add_headers(resp: &mut ResponseHeader, add: &routes::headers::AddHeaders) -> Result<()> {
    for (name, value) in add.for_status(resp.status.as_u16()) {
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| {
            pingora::Error::because(pingora::ErrorType::InternalError, "header name", e)
        })?;
        if value.is_empty() {
            resp.remove_header(&name);
        } else {
            resp.insert_header(name, &**value)?;
        }
    }
    Ok(())
}

/// Writes a complete `text/plain` response with an owned body.
pub async fn owned(session: &mut Session, status: u16, body: String) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}

/// Writes a [`Failure`](crate::lane::client::Failure): its status, the
/// site's page or the status's text, and `Retry-After` when it has one.
/// HEAD gets no body.
pub async fn failure(session: &mut Session, f: &crate::lane::client::Failure<'_>) -> Result<()> {
    failure_with(session, f, &[]).await
}

/// [`failure`] with `extra` response fields (a 401's challenge).
pub async fn failure_with(
    session: &mut Session,
    f: &crate::lane::client::Failure<'_>,
    extra: &[(&'static str, &str)],
) -> Result<()> {
    let head = session.req_header().method == http::Method::HEAD;
    let (body, content_type) = f.body();
    let mut resp = ResponseHeader::build(f.status, Some(5 + extra.len()))?;
    for (k, v) in extra {
        resp.insert_header(*k, *v)?;
    }
    resp.insert_header(http::header::CONTENT_TYPE, content_type)?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if let Some(secs) = f.retry_after {
        resp.insert_header(http::header::RETRY_AFTER, secs)?;
    }
    if head || body.is_empty() {
        session.write_response_header(Box::new(resp), true).await
    } else {
        session.write_response_header(Box::new(resp), false).await?;
        let body = match f.page {
            Some(p) => p.body.clone(),
            None => Bytes::copy_from_slice(body),
        };
        session.write_response_body(Some(body), true).await
    }
}
