//! One proxied exchange: choose the pool and member, get a connection
//! (pooled or new, retrying other members on connect failure and a fresh
//! connection when a reused one turns out closed), send the request, relay
//! the response head and body to the client.

use super::request::Plan;
use super::response::{self, Chunks, Extra, Framing};
use super::upstream::{self, Conn, Key};
use super::{read_some, within, Lane, Outcome};
use crate::conn::HeadDeadline;
use crate::control::Snapshot;
use routes::MemberAddr;
use tokio::io::AsyncWriteExt;

/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Read size for responses: a 16 KiB body and its head arrive in one
/// read and leave in one write (pages are only touched as far as filled).
const CHUNK: usize = 64 * 1024;

/// How one attempt on one connection ended.
enum Attempt {
    /// The connection failed before any response byte: a reused one may
    /// have been closed by the upstream meanwhile, so try a fresh one.
    Broken,
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

/// Proxies the request in `req` (upstream head and body) and writes the
/// response, or a 502/504, to the client.
pub async fn exchange(
    lane: &Lane,
    snap: &Snapshot,
    plan: &Plan,
    service: usize,
    req: &[u8],
    io: &mut HeadDeadline,
    tls: bool,
) -> Outcome {
    let mut outcome = Outcome {
        status: 0,
        bytes: 0,
        pool: 0,
        member: None,
        ok: false,
        keep_client: false,
    };
    let body_timeout = snap.table.config.limits.body_timeout;
    let Some(svc) = snap.table.services.get(service) else {
        outcome.status = fail(io, plan, 502, body_timeout).await;
        return outcome;
    };
    outcome.pool = svc.choose_pool(fastrand::u32(..));
    let Some(pool) = svc.pools.get(outcome.pool) else {
        outcome.status = fail(io, plan, 502, body_timeout).await;
        return outcome;
    };
    let _in_flight = pool.stats.begin();
    let hsts = super::hsts(snap, plan.site, tls);
    let extra = Extra {
        head_method: plan.head_method,
        hsts,
        request_id: plan.id.as_bytes(),
        close: plan.close,
    };
    let t = &svc.timeouts;
    let mut tried = 0u64;
    let mut attempts = 0u32;
    let mut rbuf = Vec::with_capacity(CHUNK);
    let mut head = Vec::with_capacity(512);
    let code = 'members: loop {
        attempts += 1;
        let Some(i) = pool.pick(crate::clock::now_ms(), tried) else {
            break 502;
        };
        outcome.member = Some(i);
        if i < 64 {
            tried |= 1 << i;
        }
        let member = &pool.members[i];
        let key = match (&member.addr, member.resolved) {
            (MemberAddr::Unix(path), _) => Key::Unix(path),
            (_, Some(addr)) => Key::Inet(addr),
            (_, None) => break 502,
        };
        let mut pooled = upstream::take(key, t.idle);
        loop {
            let reused = pooled.is_some();
            let mut up = match pooled.take() {
                Some(c) => c,
                None => match within(t.connect, Conn::connect(key)).await {
                    Ok(Ok(c)) => c,
                    res => {
                        if crate::edge::connect_failed(
                            &lane.control,
                            svc,
                            outcome.pool,
                            i,
                            attempts,
                        ) {
                            continue 'members;
                        }
                        break 'members if res.is_err() { 504 } else { 502 };
                    }
                },
            };
            let attempt = relay(
                &mut up,
                req,
                &extra,
                io,
                &mut rbuf,
                &mut head,
                t.read,
                t.write,
                body_timeout,
            )
            .await;
            match attempt {
                Attempt::Broken if reused => continue,
                Attempt::Broken => break 'members 502,
                Attempt::Failed(code) => break 'members code,
                Attempt::Relayed {
                    status,
                    bytes,
                    complete,
                    reusable,
                    keep_client,
                } => {
                    if complete && reusable {
                        upstream::give(key, up, t.idle);
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
    outcome.status = fail(io, plan, code, body_timeout).await;
    outcome
}

/// One attempt: request out, response head in, response relayed.
#[allow(clippy::too_many_arguments)]
async fn relay(
    up: &mut Conn,
    req: &[u8],
    extra: &Extra<'_>,
    io: &mut HeadDeadline,
    rbuf: &mut Vec<u8>,
    head: &mut Vec<u8>,
    read_timeout: std::time::Duration,
    write_timeout: std::time::Duration,
    client_timeout: std::time::Duration,
) -> Attempt {
    match within(write_timeout, up.write_all(req)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Attempt::Broken,
        Err(()) => return Attempt::Failed(504),
    }
    rbuf.clear();
    let parsed = 'head: loop {
        match within(read_timeout, read_some(up, rbuf)).await {
            Err(()) => return Attempt::Failed(504),
            Ok(Ok(n)) if n > 0 => {}
            _ if rbuf.is_empty() => return Attempt::Broken,
            _ => return Attempt::Failed(502),
        }
        loop {
            match response::parse(rbuf, extra, head) {
                response::Parsed::Partial if rbuf.len() < MAX_RESPONSE_HEAD => break,
                response::Parsed::Partial | response::Parsed::Invalid => {
                    return Attempt::Failed(502)
                }
                response::Parsed::Interim(n) => {
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
        match within(read_timeout, read_some(up, rbuf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Attempt::Failed(502),
            Err(()) => return Attempt::Failed(504),
        }
    }
    let status = parsed.status;
    let mut reusable = parsed.reusable;
    let keep_client = parsed.framing != Framing::Close;
    let early = &rbuf[parsed.len..];
    let mut chunks = Chunks::default();
    let (take, mut left) = match parsed.framing {
        Framing::Empty => (0, 0),
        Framing::Length(n) => {
            let take = early.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            (take, n - take as u64)
        }
        Framing::Chunked => match chunks.feed(early) {
            Ok(n) => (n, 0),
            Err(_) => return Attempt::Failed(502),
        },
        Framing::Close => (early.len(), 0),
    };
    if take < early.len() {
        // Bytes past the response: the connection is out of step.
        reusable = false;
    }
    head.extend_from_slice(&early[..take]);
    let mut bytes = take as u64;
    let relayed = |bytes, complete, reusable| Attempt::Relayed {
        status,
        bytes,
        complete,
        reusable,
        keep_client,
    };
    if !matches!(within(client_timeout, io.write_all(head)).await, Ok(Ok(()))) {
        return relayed(bytes, false, false);
    }
    let mut done = match parsed.framing {
        Framing::Empty => true,
        Framing::Length(_) => left == 0,
        Framing::Chunked => chunks.done(),
        Framing::Close => false,
    };
    while !done {
        rbuf.clear();
        let n = match within(read_timeout, read_some(up, rbuf)).await {
            Ok(Ok(n)) => n,
            _ => return relayed(bytes, false, false),
        };
        if n == 0 {
            // Close-delimited bodies end here; others were cut short.
            return relayed(bytes, parsed.framing == Framing::Close, false);
        }
        let take = match parsed.framing {
            Framing::Length(_) => {
                let take = n.min(usize::try_from(left).unwrap_or(usize::MAX));
                left -= take as u64;
                done = left == 0;
                take
            }
            Framing::Chunked => match chunks.feed(&rbuf[..n]) {
                Ok(take) => {
                    done = chunks.done();
                    take
                }
                Err(_) => return relayed(bytes, false, false),
            },
            _ => n,
        };
        if take < n {
            reusable = false;
        }
        if !matches!(
            within(client_timeout, io.write_all(&rbuf[..take])).await,
            Ok(Ok(()))
        ) {
            return relayed(bytes, false, false);
        }
        bytes += take as u64;
    }
    // TLS (and buffered) streams may hold the tail until flushed.
    if !matches!(within(client_timeout, io.flush()).await, Ok(Ok(()))) {
        return relayed(bytes, false, false);
    }
    relayed(bytes, true, reusable)
}

/// Answers the client with a short error (the connection then closes, as
/// on Pingora's path); returns the status.
async fn fail(
    io: &mut HeadDeadline,
    plan: &Plan,
    status: u16,
    timeout: std::time::Duration,
) -> u16 {
    let (reason, body) = match status {
        504 => (
            "Gateway Timeout",
            "gateway timeout: the upstream did not answer in time\n",
        ),
        _ => ("Bad Gateway", "bad gateway: the upstream failed\n"),
    };
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
    super::request::header(&mut out, b"content-type", b"text/plain; charset=utf-8");
    super::request::header(
        &mut out,
        b"content-length",
        body.len().to_string().as_bytes(),
    );
    super::request::header(&mut out, b"cache-control", b"no-store");
    response::date(&mut out);
    super::request::header(&mut out, b"connection", b"close");
    out.extend_from_slice(b"\r\n");
    if !plan.head_method {
        out.extend_from_slice(body.as_bytes());
    }
    let _ = tokio::time::timeout(timeout, async {
        io.write_all(&out).await?;
        io.flush().await
    })
    .await;
    status
}
