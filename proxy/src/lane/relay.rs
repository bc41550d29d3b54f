//! One proxied exchange: choose the pool and member, get a connection
//! (pooled or new, retrying other members on connect failure and a fresh
//! connection when a reused one turns out closed, if the request may be
//! replayed: [`crate::replay`]), send the request, relay the response head
//! and body to the client: an HTTP/1.1 connection or an HTTP/2 stream,
//! through [`Client`].

use super::request::Plan;
use super::response::{self, Chunks, Extra, Framing, HeadOut};
use super::state::{read_some, Lane, Outcome};
use super::timer::{within, Timer};
use super::upstream::{self, Conn, Key};
use crate::control::Snapshot;
use crate::net::stream::HeadDeadline;
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

/// Where a proxied response goes: an HTTP/1.1 connection or an HTTP/2
/// stream. Each applies its own client write timeout.
pub trait Client {
    /// The response head as this client's protocol writes it.
    type Head: HeadOut + Default;
    /// Chunked upstream bodies are passed on decoded (HTTP/2 has its own
    /// framing) rather than verbatim.
    const DECHUNK: bool;
    /// Sends `head` followed by the first `body` bytes; `end`: the response
    /// is complete. False when the client is gone.
    async fn send_head(&mut self, head: &mut Self::Head, body: &[u8], end: bool) -> bool;
    /// Sends more of the body; `end`: the response is complete.
    async fn send_body(&mut self, body: &[u8], end: bool) -> bool;
    /// Answers with a short 502 or 504 before anything else was sent.
    async fn fail(&mut self, status: u16, head_method: bool);
    /// The timer for waits on the upstream during this exchange.
    fn upstream_timer(&mut self) -> &mut Timer;
}

/// An HTTP/1.1 client connection.
pub struct H1<'a> {
    /// The connection.
    pub io: &'a mut HeadDeadline,
    /// Client write timeout.
    pub timeout: std::time::Duration,
    /// The connection's timer for client waits.
    pub timer: &'a mut Timer,
    /// The connection's timer for upstream waits.
    pub upstream_timer: &'a mut Timer,
}

impl Client for H1<'_> {
    type Head = Vec<u8>;
    const DECHUNK: bool = false;

    async fn send_head(&mut self, head: &mut Vec<u8>, body: &[u8], end: bool) -> bool {
        head.extend_from_slice(body);
        self.send_body(head, end).await
    }

    async fn send_body(&mut self, body: &[u8], end: bool) -> bool {
        let timer = &mut *self.timer;
        if !matches!(
            timer.within(self.timeout, self.io.write_all(body)).await,
            Ok(Ok(()))
        ) {
            return false;
        }
        // TLS (and buffered) streams may hold the tail until flushed.
        !end || matches!(
            timer.within(self.timeout, self.io.flush()).await,
            Ok(Ok(()))
        )
    }

    async fn fail(&mut self, status: u16, head_method: bool) {
        fail(self.io, head_method, status, self.timeout).await;
    }

    fn upstream_timer(&mut self) -> &mut Timer {
        self.upstream_timer
    }
}

/// Proxies the request in `req` (upstream head and body) and sends the
/// response, or a 502/504, to the client.
pub async fn exchange<C: Client>(
    lane: &Lane,
    snap: &Snapshot,
    plan: &Plan,
    service: usize,
    req: &[u8],
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
    };
    let Some(svc) = snap.table.services.get(service) else {
        return failed(client, plan, outcome, 502).await;
    };
    let mut attempts = routes::policy::Attempts::new(svc, fastrand::u32(..));
    outcome.pool = attempts.pool();
    let Some(pool) = svc.pools.get(outcome.pool) else {
        return failed(client, plan, outcome, 502).await;
    };
    let _in_flight = pool.stats.begin();
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
    };
    let t = route.map_or(&svc.timeouts, |r| r.upstream_timeouts(svc));
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
        let mut pooled = upstream::take(key, t.idle);
        loop {
            let reused = pooled.is_some();
            let mut up = match pooled.take() {
                Some(c) => c,
                None => match within(t.connect, Conn::connect(key)).await {
                    Ok(Ok(c)) => c,
                    res => {
                        if crate::control::connect_failed(&lane.control, svc, &attempts) {
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
                Attempt::Broken { sent }
                    if routes::policy::Attempts::may_resend(
                        reused,
                        sent,
                        routes::replay::method_of(req),
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
    failed(client, plan, outcome, code).await
}

/// Answers the client with `code` (502 or 504) and records it.
async fn failed<C: Client>(
    client: &mut C,
    plan: &Plan,
    mut outcome: Outcome,
    code: u16,
) -> Outcome {
    client.fail(code, plan.head_method).await;
    outcome.status = code;
    outcome
}

/// One attempt: request out, response head in, response relayed.
#[allow(clippy::too_many_arguments)]
async fn relay<C: Client>(
    up: &mut Conn,
    req: &[u8],
    extra: &Extra<'_>,
    client: &mut C,
    rbuf: &mut Vec<u8>,
    head: &mut C::Head,
    read_timeout: std::time::Duration,
    write_timeout: std::time::Duration,
) -> Attempt {
    // `write_all`, counting what left: a request not one byte of which
    // was written may be sent again whatever its method.
    let mut written = 0;
    while written < req.len() {
        match within(write_timeout, up.write(&req[written..])).await {
            Ok(Ok(n)) if n > 0 => written += n,
            Ok(_) => return Attempt::Broken { sent: written > 0 },
            Err(()) => return Attempt::Failed(504),
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
    let mut chunks = Chunks::default();
    let mut data = Vec::new();
    let mut left = match parsed.framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    // Of the response bytes `read`: how many belong to the body, and
    // whether the body is complete (decoded chunk data goes to `data`).
    let mut body = |read: &[u8], data: &mut Vec<u8>| -> Result<(usize, bool), ()> {
        let n = read.len();
        Ok(match parsed.framing {
            Framing::Empty => (0, true),
            Framing::Length(_) => {
                let take = n.min(usize::try_from(left).unwrap_or(usize::MAX));
                left -= take as u64;
                (take, left == 0)
            }
            Framing::Chunked if C::DECHUNK => {
                data.clear();
                (chunks.feed_data(read, data).map_err(|_| ())?, chunks.done())
            }
            Framing::Chunked => (chunks.feed(read).map_err(|_| ())?, chunks.done()),
            Framing::Close => (n, false),
        })
    };
    let Ok((take, mut done)) = body(&rbuf[parsed.len..], &mut data) else {
        return Attempt::Failed(502);
    };
    if parsed.len + take < rbuf.len() {
        // Bytes past the response: the connection is out of step.
        reusable = false;
    }
    let dechunked = C::DECHUNK && parsed.framing == Framing::Chunked;
    let first = if dechunked {
        &data[..]
    } else {
        &rbuf[parsed.len..parsed.len + take]
    };
    let mut bytes = first.len() as u64;
    let relayed = |bytes, complete, reusable| Attempt::Relayed {
        status,
        bytes,
        complete,
        reusable,
        keep_client,
    };
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
            let complete = parsed.framing == Framing::Close;
            let ended = complete && client.send_body(&[], true).await;
            return relayed(bytes, ended, false);
        }
        let Ok((take, end)) = body(&rbuf[..n], &mut data) else {
            return relayed(bytes, false, false);
        };
        done = end;
        if take < n {
            reusable = false;
        }
        let out = if dechunked { &data[..] } else { &rbuf[..take] };
        if !client.send_body(out, done).await {
            return relayed(bytes, false, false);
        }
        bytes += out.len() as u64;
    }
    relayed(bytes, true, reusable)
}

/// The reason phrase and body text of a 502, 504 or 408 answer.
pub fn failure(status: u16) -> (&'static str, &'static str) {
    match status {
        408 => (
            "Request Timeout",
            "request timeout: the request body did not arrive in time\n",
        ),
        504 => (
            "Gateway Timeout",
            "gateway timeout: the upstream did not answer in time\n",
        ),
        _ => ("Bad Gateway", "bad gateway: the upstream failed\n"),
    }
}

/// Answers the client with a short error (the connection then closes, as
/// on Pingora's path); returns the status.
pub(super) async fn fail(
    io: &mut HeadDeadline,
    head_method: bool,
    status: u16,
    timeout: std::time::Duration,
) {
    let (reason, body) = failure(status);
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
    if !head_method {
        out.extend_from_slice(body.as_bytes());
    }
    let _ = tokio::time::timeout(timeout, async {
        io.write_all(&out).await?;
        io.flush().await
    })
    .await;
}
