//! One proxied exchange: choose the pool and member, get a connection
//! (pooled or new, retrying other members on connect failure and a fresh
//! connection when a reused one turns out closed, if the request may be
//! replayed: [`crate::replay`]), send the request, relay the response head
//! and body to the client: an HTTP/1.1 connection, an HTTP/2 stream or a
//! Pingora session, through [`Client`]. Responses are buffered
//! ([`pump::buffered`]) unless the route or the response says not to.

use super::client::Client;
use super::pump::{self, Framed};
use super::request::Plan;
use super::response::{self, Extra, Framing};
use super::state::{read_some, Outcome};
use super::timer::within;
use super::upstream::{self, Conn, Key};
use crate::control::{Control, Snapshot};
use crate::net::spool::{self, Spool};
use crate::net::uwsgi;
use routes::MemberAddr;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Read size for responses: a 16 KiB body and its head arrive in one
/// read and leave in one write (pages are only touched as far as filled).
const CHUNK: usize = 64 * 1024;

/// How one attempt on one connection ended.
enum Attempt {
    /// The connection failed before any response byte: a reused one may
    /// have been closed by the upstream meanwhile, so try a fresh one if
    /// the request never left (`sent` false) or may be replayed.
    Broken {
        /// Some of the request may have reached the upstream.
        sent: bool,
    },
    /// Failed before anything reached the client: answer with this status.
    Failed(u16),
    /// The response (or part of it) reached the client.
    Relayed {
        status: u16,
        bytes: u64,
        complete: bool,
        reusable: bool,
        keep_client: bool,
    },
}

/// A response read buffer of [`CHUNK`] bytes, taken from the thread's few
/// spare ones and given back when dropped: allocating 64 KiB afresh for
/// every request cost more than parsing the response.
struct Spare(Vec<u8>);

/// Spare buffers kept per thread (untouched pages stay unallocated).
const SPARES: usize = 32;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Spare {
    fn take() -> Spare {
        let spare = SPARE.with(|s| s.borrow_mut().pop());
        Spare(spare.unwrap_or_else(|| Vec::with_capacity(CHUNK)))
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        if buf.capacity() != CHUNK {
            return;
        }
        buf.clear();
        // `try_with`: a thread being torn down keeps nothing.
        let _ = SPARE.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARES {
                s.push(buf);
            }
        });
    }
}

/// A request to send upstream.
pub struct Request<'a> {
    /// The upstream head, then the body bytes at hand (all of the body on
    /// the lane).
    pub bytes: &'a [u8],
    /// Bytes of `bytes` that are the head.
    pub head_len: usize,
    /// The rest of the body, read from the client beforehand.
    pub spool: Option<&'a mut Spool>,
    /// Buffer the response with these limits (None: relay it as it comes).
    pub buffer: Option<&'a spool::Limits>,
    /// The client and connection, as a uwsgi member is told of them.
    pub peer: uwsgi::Facts,
    /// The rest of the body comes from the client as the upstream gets it
    /// ([`Client::read_body`]): a route with `buffer_requests = false`.
    pub stream: Option<Streamed>,
}

/// How a streamed request body is framed upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streamed {
    /// By the Content-Length in the head, at most `limit` bytes.
    Length {
        /// The route's body limit.
        limit: u64,
    },
    /// Chunked (the head says so), at most `limit` bytes of data.
    Chunked {
        /// The route's body limit.
        limit: u64,
    },
}

/// Why a request could not be sent.
enum SendError {
    /// The connection failed; whether any of the request may have left.
    Broken(bool),
    /// The upstream took too long.
    Timeout,
    /// The client's body failed: answer this status.
    Client(u16),
}

/// Proxies `req` and sends the response, or a 502/504, to the client.
#[allow(clippy::too_many_arguments)]
pub async fn exchange<C: Client>(
    control: &Control,
    snap: &Snapshot,
    plan: &Plan,
    service: usize,
    req: &mut Request<'_>,
    client: &mut C,
    tls: bool,
) -> Outcome {
    let mut outcome = Outcome {
        status: 0,
        bytes: 0,
        pool: 0,
        member: None,
        ok: false,
        keep_client: false,
        held: 0.0,
    };
    let Some(svc) = snap.table.services.get(service) else {
        return failed(client, snap, plan, outcome, 502).await;
    };
    // A paused service: held here, then sent with the snapshot of the
    // resume (its live color); the route's settings stay `snap`'s. (Boxed:
    // the wait's state does not enlarge every request's future.)
    let resumed: Arc<Snapshot>;
    let svc = if svc.paused {
        let held_from = std::time::Instant::now();
        match Box::pin(crate::control::pause::hold(control, &svc.name)).await {
            Ok(s) => {
                outcome.held = held_from.elapsed().as_secs_f64();
                resumed = s;
                match resumed.table.service(&svc.name) {
                    Some(svc) => svc,
                    None => return failed(client, snap, plan, outcome, 502).await,
                }
            }
            Err(refused) => {
                outcome.pool = usize::MAX;
                outcome.status = 503;
                let failure = refused.failure(snap, plan.site);
                client.fail(&failure, plan.head_method).await;
                return outcome;
            }
        }
    } else {
        svc
    };
    // Sticky canaries and previews read the request's fields from the
    // upstream head (both transports write one); only when the service has
    // either rule.
    let head = &req.bytes[..req.head_len];
    let fields = || routes::canary::head_fields(head).starting_with(svc.canary.firsts());
    let mut attempts = routes::policy::Attempts::for_request(svc, fields, fastrand::u32(..));
    outcome.pool = attempts.pool();
    let Some(pool) = svc.pools.get(outcome.pool) else {
        return failed(client, snap, plan, outcome, 502).await;
    };
    // Until the upstream is done with: a buffered response still being
    // fed to a slow client does not hold up a drain of its color.
    let mut in_flight = Some(pool.stats.begin());
    let hsts = super::state::hsts(snap, plan.site, tls);
    let route = snap
        .table
        .sites
        .get(plan.site)
        .and_then(|s| s.routes.get(plan.route));
    let extra = Extra {
        head_method: plan.head_method,
        hsts,
        request_id: plan.id.as_bytes(),
        close: plan.close,
        add: route.map_or(&routes::headers::AddHeaders::NONE, |r| &r.headers),
        set_cookie: attempts.set_cookie(svc, tls),
    };
    let t = route.map_or(&svc.timeouts, |r| r.upstream_timeouts(svc));
    let idle_cap = upstream::idle_cap(snap.table.config.limits.max_connections);
    // uwsgi: one request per connection, its head as a uwsgi packet.
    let packet = match svc.protocol {
        routes::Protocol::Http => None,
        routes::Protocol::Uwsgi => match uwsgi::encode(&req.bytes[..req.head_len], &req.peer) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!("request not sent to uwsgi service {}: {e}", svc.name);
                return failed(client, snap, plan, outcome, 502).await;
            }
        },
    };
    let pooled_kind = packet.is_none();
    let mut rbuf = Spare::take();
    let mut head = C::Head::default();
    let code = 'members: loop {
        let Some(i) = attempts.next(svc, crate::clock::now_ms()) else {
            break 502;
        };
        outcome.member = Some(i);
        let member = &pool.members[i];
        let key = match (&member.addr, member.resolved) {
            (MemberAddr::Unix(path), _) => Key::Unix(path),
            (_, Some(addr)) => Key::Inet(addr),
            (_, None) => break 502,
        };
        let mut pooled = upstream::take(key);
        loop {
            let reused = pooled.is_some();
            let mut up = match pooled.take() {
                Some(c) => Some(c),
                None => match within(t.connect, Conn::connect(key)).await {
                    Ok(Ok(c)) => Some(c),
                    res => {
                        if crate::control::connect_failed(control, svc, &attempts) {
                            continue 'members;
                        }
                        break 'members if res.is_err() { 504 } else { 502 };
                    }
                },
            };
            let idle = t.idle;
            let in_flight = &mut in_flight;
            let release = move |conn, reusable| {
                in_flight.take();
                if reusable && pooled_kind {
                    upstream::give(key, conn, idle, idle_cap);
                }
            };
            let attempt = relay(
                &mut up,
                release,
                req,
                packet.as_deref(),
                &extra,
                client,
                &mut rbuf.0,
                &mut head,
                t.read,
                t.write,
            )
            .await;
            match attempt {
                // Never twice to the application unless the method allows
                // it (RFC 9110 §9.2.2); Pingora's path applies the same rule.
                // A streamed body read from the client cannot go again.
                Attempt::Broken { sent }
                    if (req.stream.is_none() || !sent)
                        && routes::policy::Attempts::may_resend(
                            reused,
                            sent,
                            routes::replay::method_of(req.bytes),
                        ) =>
                {
                    continue
                }
                Attempt::Broken { .. } => break 'members 502,
                Attempt::Failed(code) => break 'members code,
                Attempt::Relayed {
                    status,
                    bytes,
                    complete,
                    reusable,
                    keep_client,
                } => {
                    if let (true, true, Some(up)) = (complete, reusable && pooled_kind, up) {
                        upstream::give(key, up, t.idle, idle_cap);
                    }
                    outcome.status = status;
                    outcome.bytes = bytes;
                    outcome.ok = complete;
                    outcome.keep_client = complete && keep_client;
                    return outcome;
                }
            }
        }
    };
    failed(client, snap, plan, outcome, code).await
}

/// Answers the client with `code` (502 or 504; the site's page for it
/// when it has one) and records it.
async fn failed<C: Client>(
    client: &mut C,
    snap: &Snapshot,
    plan: &Plan,
    mut outcome: Outcome,
    code: u16,
) -> Outcome {
    let failure = snap.pages.failure(Some(plan.site), code);
    client.fail(&failure, plan.head_method).await;
    outcome.status = code;
    outcome
}

/// Writes the request (head and body) to `up`: the head (or uwsgi
/// packet), the body bytes at hand, the spooled rest, then what the client
/// still sends of a streamed body.
async fn send<C: Client>(
    up: &mut Conn,
    req: &mut Request<'_>,
    packet: Option<&[u8]>,
    client: &mut C,
    write_timeout: std::time::Duration,
) -> Result<(), SendError> {
    // A request not one byte of which was written may be sent again
    // whatever its method.
    let mut sent = false;
    match packet {
        // The uwsgi packet stands for the HTTP head.
        Some(p) => {
            write_all(up, p, &mut sent, write_timeout).await?;
            let body = &req.bytes[req.head_len..];
            write_all(up, body, &mut sent, write_timeout).await?;
        }
        None => write_all(up, req.bytes, &mut sent, write_timeout).await?,
    }
    if let Some(spool) = req.spool.as_deref_mut() {
        spool.rewind();
        loop {
            let chunk = match spool.front() {
                Ok([]) => break,
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("reading a buffered request body: {e}");
                    return Err(SendError::Broken(true));
                }
            };
            let n = chunk.len();
            write_all(up, chunk, &mut sent, write_timeout).await?;
            spool.consume(n);
        }
    }
    let Some(stream) = req.stream else {
        return Ok(());
    };
    let (limit, chunked) = match stream {
        Streamed::Length { limit } => (limit, false),
        Streamed::Chunked { limit } => (limit, true),
    };
    let mut seen = 0u64;
    while let Some(data) = client.read_body().await.map_err(SendError::Client)? {
        seen += data.len() as u64;
        if seen > limit {
            return Err(SendError::Client(413));
        }
        if data.is_empty() {
            continue;
        }
        if chunked {
            let size = format!("{:x}\r\n", data.len());
            write_all(up, size.as_bytes(), &mut sent, write_timeout).await?;
        }
        write_all(up, &data, &mut sent, write_timeout).await?;
        if chunked {
            write_all(up, b"\r\n", &mut sent, write_timeout).await?;
        }
    }
    if chunked {
        write_all(up, b"0\r\n\r\n", &mut sent, write_timeout).await?;
    }
    Ok(())
}

/// `write_all`, noting in `sent` whether any byte left.
async fn write_all(
    up: &mut Conn,
    bytes: &[u8],
    sent: &mut bool,
    write_timeout: std::time::Duration,
) -> Result<(), SendError> {
    let mut written = 0;
    while written < bytes.len() {
        match within(write_timeout, up.write(&bytes[written..])).await {
            Ok(Ok(n)) if n > 0 => {
                written += n;
                *sent = true;
            }
            Ok(_) => return Err(SendError::Broken(*sent)),
            Err(()) => return Err(SendError::Timeout),
        }
    }
    Ok(())
}

/// One attempt: request out, response head in, response relayed
/// (buffered when `req.buffer` says so and the response allows it).
#[allow(clippy::too_many_arguments)]
async fn relay<C: Client>(
    slot: &mut Option<Conn>,
    release: impl FnOnce(Conn, bool),
    req: &mut Request<'_>,
    packet: Option<&[u8]>,
    extra: &Extra<'_>,
    client: &mut C,
    rbuf: &mut Vec<u8>,
    head: &mut C::Head,
    read_timeout: std::time::Duration,
    write_timeout: std::time::Duration,
) -> Attempt {
    let Some(up) = slot.as_mut() else {
        return Attempt::Failed(502);
    };
    if packet.is_none() && req.spool.is_none() && req.stream.is_none() {
        // The lane's requests: head and body in one buffer, written here
        // (a nested future per request cost more than the loop).
        let mut written = 0;
        while written < req.bytes.len() {
            match within(write_timeout, up.write(&req.bytes[written..])).await {
                Ok(Ok(n)) if n > 0 => written += n,
                Ok(_) => return Attempt::Broken { sent: written > 0 },
                Err(()) => return Attempt::Failed(504),
            }
        }
    } else {
        match send(up, req, packet, client, write_timeout).await {
            Ok(()) => {}
            Err(SendError::Broken(sent)) => return Attempt::Broken { sent },
            Err(SendError::Timeout) => return Attempt::Failed(504),
            Err(SendError::Client(code)) => return Attempt::Failed(code),
        }
    }
    rbuf.clear();
    let parsed = 'head: loop {
        match client
            .upstream_timer()
            .within(read_timeout, read_some(up, rbuf))
            .await
        {
            Err(()) => return Attempt::Failed(504),
            Ok(Ok(n)) if n > 0 => {}
            _ if rbuf.is_empty() => return Attempt::Broken { sent: true },
            _ => return Attempt::Failed(502),
        }
        loop {
            match response::parse(rbuf, extra, head) {
                response::Parsed::Partial if rbuf.len() < MAX_RESPONSE_HEAD => break,
                response::Parsed::Partial | response::Parsed::Invalid => {
                    return Attempt::Failed(502)
                }
                response::Parsed::Interim(n) => {
                    if !client.interim(&rbuf[..n]).await {
                        return Attempt::Failed(502);
                    }
                    rbuf.drain(..n);
                    if rbuf.is_empty() {
                        break;
                    }
                }
                response::Parsed::Done(h) => break 'head h,
            }
        }
    };
    if matches!(parsed.framing, Framing::Length(n) if n > 0) && rbuf.len() == parsed.len {
        // Only the head so far (upstreams often write it apart from the
        // body): wait for the body's first bytes and send both in one write.
        match client
            .upstream_timer()
            .within(read_timeout, read_some(up, rbuf))
            .await
        {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Attempt::Failed(502),
            Err(()) => return Attempt::Failed(504),
        }
    }
    let status = parsed.status;
    let mut reusable = parsed.reusable;
    let keep_client = parsed.framing != Framing::Close;
    let mut framed = Framed::new(parsed.framing, C::DECHUNK);
    let mut data = Vec::new();
    let Ok((take, mut done)) = framed.feed(&rbuf[parsed.len..], &mut data) else {
        return Attempt::Failed(502);
    };
    if parsed.len + take < rbuf.len() {
        // Bytes past the response: the connection is out of step.
        reusable = false;
    }
    let first = if framed.decodes() {
        &data[..]
    } else {
        &rbuf[parsed.len..parsed.len + take]
    };
    let relayed = |bytes, complete, reusable| Attempt::Relayed {
        status,
        bytes,
        complete,
        reusable,
        keep_client,
    };
    if let (false, false, Some(limits)) = (done, parsed.unbuffered, req.buffer) {
        let spool = Spool::for_response(limits.clone());
        let first = first.to_vec();
        let p = pump::buffered(
            slot,
            release,
            client,
            head,
            &first,
            framed,
            spool,
            read_timeout,
        )
        .await;
        // `release` had the connection when it was reusable.
        return relayed(p.bytes, p.delivered && p.upstream.complete, false);
    }
    let mut bytes = first.len() as u64;
    if !client.send_head(head, first, done).await {
        return relayed(bytes, false, false);
    }
    while !done {
        rbuf.clear();
        let n = match client
            .upstream_timer()
            .within(read_timeout, read_some(up, rbuf))
            .await
        {
            Ok(Ok(n)) => n,
            _ => return relayed(bytes, false, false),
        };
        if n == 0 {
            // Close-delimited bodies end here; others were cut short.
            let complete = framed.ends_at_close();
            let ended = complete && client.send_body(&[], true).await;
            return relayed(bytes, ended, false);
        }
        let Ok((take, end)) = framed.feed(&rbuf[..n], &mut data) else {
            return relayed(bytes, false, false);
        };
        done = end;
        if take < n {
            reusable = false;
        }
        let out = if framed.decodes() {
            &data[..]
        } else {
            &rbuf[..take]
        };
        if !client.send_body(out, done).await {
            return relayed(bytes, false, false);
        }
        bytes += out.len() as u64;
    }
    relayed(bytes, true, reusable)
}
