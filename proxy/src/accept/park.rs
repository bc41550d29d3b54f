//! Parked connections: a plain HTTP/1.1 keep-alive connection idle past
//! the lane's grace waits for its next request here, as nginx's do, with
//! no task, future, timer or Tokio registration of its own: its socket
//! leaves Tokio and joins an epoll set of its worker's parker, and what
//! the next request needs (the peer's address, the connection's counts,
//! whether its last event was an answer) waits in a slot of the parker's
//! table (≈ 80 bytes; a connection idle in its task held ≈ 1.4 KiB).
//!
//! One parker per worker thread, made by the first connection parked
//! there (its app, the accept service's one, is what resumes them all), in
//! one task that waits on the epoll set (itself registered with
//! Tokio), on the earliest keep-alive deadline, and on the shutdown signal:
//! - input (a request, the client's end, an error): the socket leaves the
//!   set, goes back to Tokio, and the parker's `resume` serves it again in
//!   a new task, as a connection whose first bytes came;
//! - the keep-alive deadline (kept in one-second buckets: it is never
//!   early, and at most a second late): closed, as the idle wait closes it
//!   (its counts released first, then the write side shut, and a lingering
//!   close after an answer);
//! - a graceful shutdown: each gets its last call (as an idle connection
//!   in its task does), then is closed.
//!
//! A parked connection keeps its places in the open-connection counts
//! (`max_connections`, the gauges, the spreading over workers).

use super::spread;
use crate::net::stream;
use pingora::server::ShutdownWatch;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio::time::Instant;

/// At most this many ready connections are resumed in one turn of the
/// parker's task, before the worker's other tasks run again.
const BATCH: usize = 256;

/// A parked connection: its socket out of Tokio, and what serving it again
/// needs.
#[derive(Debug)]
pub struct Parked {
    /// The socket (non-blocking, registered with no reactor).
    pub tcp: std::net::TcpStream,
    /// The peer (the client, or the source its PROXY header named).
    pub peer: SocketAddr,
    /// Its place in the workers' open-connection counts.
    pub load: Option<spread::Open>,
    /// Its place in the open-connection gauges and `max_connections`.
    pub conns: Option<stream::Open>,
    /// Whether the last thing on the connection was an answer (a close
    /// then lingers: [`super::linger`]).
    pub answered: bool,
}

/// Serves a parked connection again once input came (spawns its task).
pub type Resume = Arc<dyn Fn(Parked) + Send + Sync>;

/// Parks `conn` on this worker's parker (made, with `shutdown` and the
/// `resume` that `make_resume` gives, if there is none yet on this thread)
/// for at most `within`, or `last_call` once a graceful shutdown has begun.
/// Must be called within a Tokio runtime. If the socket cannot be parked,
/// it is closed.
pub fn park(
    conn: Parked,
    within: Duration,
    last_call: Duration,
    shutdown: &ShutdownWatch,
    make_resume: impl FnOnce() -> Resume,
) {
    let parker = match HERE.with(|h| h.borrow().clone()) {
        Some(p) => p,
        None => match Parker::start(shutdown.clone(), make_resume()) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("parking a connection failed: {e}");
                close(conn);
                return;
            }
        },
    };
    parker.add(conn, within, last_call);
}

/// Connections parked on this thread's parker now.
pub fn parked_here() -> usize {
    HERE.with(|h| h.borrow().as_ref().map_or(0, |p| p.lock().len))
}

/// Connections parked now, on every worker (the
/// `duotone_parked_connections` gauge).
pub fn parked() -> i64 {
    PARKED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Connections parked now, in the whole process.
static PARKED: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

thread_local! {
    /// This worker thread's parker, while its task runs.
    static HERE: RefCell<Option<Arc<Parker>>> = const { RefCell::new(None) };
}

/// A worker's parked connections.
struct Parker {
    /// The epoll set of the parked sockets; each event's data is its key.
    epoll: AsyncFd<OwnedFd>,
    state: Mutex<State>,
    resume: Resume,
    /// Wakes the task when a deadline earlier than its timer's is added.
    earlier: Notify,
    /// Bucket `n` ends `n` seconds after this.
    epoch: Instant,
}

/// The table of parked connections and their deadlines.
#[derive(Default)]
struct State {
    slots: Vec<Slot>,
    /// Free slots.
    free: Vec<u32>,
    /// Keys by deadline bucket (keys of connections gone since, or moved
    /// to an earlier bucket, are skipped).
    wheel: BTreeMap<u64, Vec<u64>>,
    /// Connections parked.
    len: usize,
    /// The latest last call given (the keep-alive timeout may be reloaded).
    last_call: Duration,
    /// A graceful shutdown has begun.
    stopping: bool,
}

/// One slot of the table; `gen` tells a reused slot's keys apart.
#[derive(Default)]
struct Slot {
    gen: u32,
    entry: Option<Entry>,
}

/// A parked connection and its deadline bucket.
struct Entry {
    conn: Parked,
    bucket: u64,
}

impl State {
    /// Stores `entry`; returns its key (slot and generation).
    fn insert(&mut self, entry: Entry) -> u64 {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::default());
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let slot = &mut self.slots[idx as usize];
        slot.gen = slot.gen.wrapping_add(1);
        slot.entry = Some(entry);
        self.len += 1;
        PARKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (u64::from(slot.gen) << 32) | u64::from(idx)
    }

    /// The entry of `key`, if it is still there.
    fn get_mut(&mut self, key: u64) -> Option<&mut Entry> {
        let slot = self.slots.get_mut((key & 0xffff_ffff) as usize)?;
        if u64::from(slot.gen) != key >> 32 {
            return None;
        }
        slot.entry.as_mut()
    }

    /// Takes the entry of `key` out, if it is still there.
    fn remove(&mut self, key: u64) -> Option<Entry> {
        let idx = (key & 0xffff_ffff) as u32;
        let slot = self.slots.get_mut(idx as usize)?;
        if u64::from(slot.gen) != key >> 32 {
            return None;
        }
        let entry = slot.entry.take()?;
        self.free.push(idx);
        self.len -= 1;
        PARKED.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        Some(entry)
    }

    /// Files `key` under `bucket`.
    fn file(&mut self, key: u64, bucket: u64) {
        self.wheel.entry(bucket).or_default().push(key);
    }
}

impl Parker {
    /// Makes this thread's parker and starts its task.
    fn start(shutdown: ShutdownWatch, resume: Resume) -> std::io::Result<Arc<Parker>> {
        let epoll = register(epoll_create()?)?;
        let parker = Arc::new(Parker {
            epoll,
            state: Mutex::new(State::default()),
            resume,
            earlier: Notify::new(),
            epoch: Instant::now(),
        });
        HERE.with(|h| *h.borrow_mut() = Some(parker.clone()));
        drop(tokio::spawn(parker.clone().run(shutdown)));
        Ok(parker)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; if something did, the table is
        // still consistent (each step leaves it so).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bucket `at` falls in: the first that ends at or after it.
    fn bucket(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.epoch);
        d.as_secs() + u64::from(d.subsec_nanos() > 0)
    }

    /// When `bucket` ends.
    fn bucket_end(&self, bucket: u64) -> Instant {
        self.epoch + Duration::from_secs(bucket)
    }

    /// Parks `conn` until input comes or `within` passes.
    fn add(&self, conn: Parked, within: Duration, last_call: Duration) {
        let fd = conn.tcp.as_raw_fd();
        let mut st = self.lock();
        st.last_call = last_call;
        let within = if st.stopping {
            within.min(last_call)
        } else {
            within
        };
        let bucket = self.bucket(Instant::now() + within);
        let key = st.insert(Entry { conn, bucket });
        if let Err(e) = epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, key) {
            tracing::error!("parking a connection failed: {e}");
            if let Some(entry) = st.remove(key) {
                drop(st);
                close(entry.conn);
            }
            return;
        }
        let earliest = st.wheel.keys().next().copied();
        st.file(key, bucket);
        if earliest.is_none_or(|b| bucket < b) {
            self.earlier.notify_one();
        }
    }

    /// The task: resumes connections with input, closes those past their
    /// deadline, and gives each its last call at shutdown, until the
    /// runtime ends (which closes the connections still parked).
    async fn run(self: Arc<Self>, mut shutdown: ShutdownWatch) {
        let _leave = Leave(self.clone());
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; BATCH];
        let mut watching = true;
        loop {
            if watching && *shutdown.borrow() {
                self.stop();
                watching = false;
            }
            let next = self.lock().wheel.keys().next().copied();
            let timer = async {
                match next {
                    Some(b) => tokio::time::sleep_until(self.bucket_end(b)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ready = self.epoll.readable() => match ready {
                    Ok(mut guard) => {
                        if self.wake_ready(&mut events) < events.len() {
                            guard.clear_ready();
                        } else {
                            // More may be ready: the worker's other tasks
                            // run first.
                            drop(guard);
                            tokio::task::yield_now().await;
                        }
                    }
                    Err(e) => {
                        tracing::error!("the parker's epoll set failed: {e}");
                        return;
                    }
                },
                () = timer => self.expire(),
                () = self.earlier.notified() => {}
                changed = shutdown.changed(), if watching => {
                    if changed.is_err() {
                        // No one can signal a shutdown any more.
                        watching = false;
                    }
                }
            }
        }
    }

    /// Resumes the connections with input (up to `events.len()` of them);
    /// returns how many epoll reported.
    fn wake_ready(&self, events: &mut [libc::epoll_event]) -> usize {
        let n = match epoll_wait(self.epoll.as_raw_fd(), events) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("epoll_wait: {e}");
                return 0;
            }
        };
        let mut woken = Vec::with_capacity(n);
        {
            let mut st = self.lock();
            for ev in &events[..n] {
                if let Some(entry) = st.remove(ev.u64) {
                    self.leave_set(&entry.conn);
                    woken.push(entry.conn);
                }
            }
        }
        for conn in woken {
            (self.resume)(conn);
        }
        n
    }

    /// Closes the connections whose deadline bucket has ended.
    fn expire(&self) {
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut st = self.lock();
            while let Some(entry) = st.wheel.first_entry() {
                if self.bucket_end(*entry.key()) > now {
                    break;
                }
                let bucket = *entry.key();
                for key in entry.remove() {
                    // Skipped: gone, or moved to an earlier bucket.
                    if st.get_mut(key).is_some_and(|e| e.bucket == bucket) {
                        if let Some(entry) = st.remove(key) {
                            self.leave_set(&entry.conn);
                            due.push(entry.conn);
                        }
                    }
                }
            }
        }
        for conn in due {
            close(conn);
        }
    }

    /// A graceful shutdown began: each parked connection gets its last
    /// call, then closes.
    fn stop(&self) {
        let mut st = self.lock();
        st.stopping = true;
        let last = self.bucket(Instant::now() + st.last_call);
        let mut moved = Vec::new();
        for (idx, slot) in st.slots.iter_mut().enumerate() {
            if let Some(entry) = slot.entry.as_mut() {
                if entry.bucket > last {
                    entry.bucket = last;
                    moved.push((u64::from(slot.gen) << 32) | idx as u64);
                }
            }
        }
        for key in moved {
            st.file(key, last);
        }
    }

    /// Takes `conn`'s socket out of the epoll set.
    fn leave_set(&self, conn: &Parked) {
        let fd = conn.tcp.as_raw_fd();
        if let Err(e) = epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, 0) {
            tracing::debug!("epoll_ctl(DEL): {e}");
        }
    }
}

/// Clears this thread's parker as its task ends (its runtime shuts down):
/// the connections still parked then close, and a later runtime on the
/// thread makes a new parker.
struct Leave(Arc<Parker>);

impl Drop for Leave {
    fn drop(&mut self) {
        let _ = HERE.try_with(|h| {
            if let Ok(mut h) = h.try_borrow_mut() {
                if h.as_ref().is_some_and(|p| Arc::ptr_eq(p, &self.0)) {
                    *h = None;
                }
            }
        });
        let mut st = self.0.lock();
        PARKED.fetch_sub(st.len as i64, std::sync::atomic::Ordering::Relaxed);
        st.len = 0;
        let slots = std::mem::take(&mut st.slots);
        drop(st);
        for conn in slots.into_iter().filter_map(|s| s.entry) {
            self.0.leave_set(&conn.conn);
            drop(conn);
        }
    }
}

/// Closes a parked connection as the lane's idle wait does: its counts
/// released, the write side shut, and a lingering close after an answer.
fn close(conn: Parked) {
    let Parked {
        tcp,
        load,
        conns,
        answered,
        ..
    } = conn;
    drop((conns, load));
    let _ = tcp.shutdown(std::net::Shutdown::Write);
    if answered {
        super::linger::on_close(tcp.as_raw_fd());
    }
}

/// A new epoll set.
#[allow(unsafe_code)]
fn epoll_create() -> std::io::Result<OwnedFd> {
    // SAFETY: no pointers; the result is checked before use.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Registers the epoll set `fd` with this thread's Tokio reactor, for
/// input (a parked socket is ready).
#[allow(unsafe_code)]
fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` always returns the descriptor it owns, which
    // stays open until it drops, with the `AsyncFd`.
    let epoll = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
    Ok(epoll?)
}

/// Adds `fd` to (with `key` as its data, level-triggered, for input and
/// the peer's close) or deletes it from the epoll set `epfd`.
#[allow(unsafe_code)]
fn epoll_ctl(epfd: RawFd, op: libc::c_int, fd: RawFd, key: u64) -> std::io::Result<()> {
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
        u64: key,
    };
    // SAFETY: `epfd` and `fd` are open descriptors owned by the parker and
    // its parked connection for this call; `ev` is valid for it.
    let rc = unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The ready entries of the epoll set `epfd`, without waiting.
#[allow(unsafe_code)]
fn epoll_wait(epfd: RawFd, events: &mut [libc::epoll_event]) -> std::io::Result<usize> {
    let max = libc::c_int::try_from(events.len()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `events` is valid for `max` entries, which the kernel may
    // write; `epfd` is the parker's open epoll set.
    let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), max, 0) };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accept::spread::Load;
    use crate::net::stream::Connections;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;

    /// A bound on every wait below (none is expected to come near it).
    const BOUND: Duration = Duration::from_secs(10);

    /// A client and the server side of its connection, as the lane parks
    /// it: out of Tokio, counted once in each count.
    async fn parked(load: &Arc<Load>, conns: &Arc<Connections>) -> (tokio::net::TcpStream, Parked) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, peer) = listener.accept().await.expect("accept");
        let (_, load) = load.assign(0);
        let (_, counted) = conns.open();
        let conn = Parked {
            tcp: server.into_std().expect("into_std"),
            peer,
            load: Some(load),
            conns: Some(counted),
            answered: false,
        };
        (client, conn)
    }

    /// A resume that hands the woken connection to the test.
    fn to(tx: mpsc::UnboundedSender<Parked>) -> impl FnOnce() -> Resume {
        move || {
            Arc::new(move |conn| {
                let _ = tx.send(conn);
            })
        }
    }

    /// Whether the server closes `client` within [`BOUND`].
    async fn closed(client: &mut tokio::net::TcpStream) -> bool {
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(BOUND, client.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// What a parked connection holds in its worker's table (a connection
    /// idle in its task held ≈ 1.4 KiB):
    /// `cargo test -p duotone --lib accept::park -- --nocapture`.
    #[test]
    fn a_parked_connection_is_small() {
        let slot = std::mem::size_of::<Slot>();
        println!("a parked connection: {slot} bytes (its slot) + 8 (its deadline's key)");
        assert!(slot <= 128, "{slot} bytes");
    }

    #[tokio::test]
    async fn input_resumes_a_parked_connection_still_counted() {
        let (load, conns) = (Load::new(1), Connections::new(1));
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (mut client, conn) = parked(&load, &conns).await;
        park(conn, Duration::from_secs(60), BOUND, &shutdown, to(tx));
        assert_eq!(parked_here(), 1);
        assert_eq!((load.counts(), conns.total()), (vec![1], 1));
        client
            .write_all(b"GET / HTTP/1.1\r\n")
            .await
            .expect("write");
        let woken = tokio::time::timeout(BOUND, rx.recv())
            .await
            .expect("resumed in time")
            .expect("resumed");
        assert_eq!(parked_here(), 0);
        assert_eq!((load.counts(), conns.total()), (vec![1], 1));
        // Back in Tokio, with the input waiting.
        let mut server = tokio::net::TcpStream::from_std(woken.tcp).expect("from_std");
        let mut head = [0u8; 16];
        server.read_exact(&mut head).await.expect("read");
        assert_eq!(&head, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn the_clients_close_resumes_it_too() {
        let (load, conns) = (Load::new(1), Connections::new(1));
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (client, conn) = parked(&load, &conns).await;
        park(conn, Duration::from_secs(60), BOUND, &shutdown, to(tx));
        drop(client);
        let woken = tokio::time::timeout(BOUND, rx.recv())
            .await
            .expect("resumed in time")
            .expect("resumed");
        let mut server = tokio::net::TcpStream::from_std(woken.tcp).expect("from_std");
        let mut buf = [0u8; 16];
        assert_eq!(server.read(&mut buf).await.expect("read"), 0);
    }

    #[tokio::test]
    async fn closed_at_its_deadline_after_its_counts_are_released() {
        let (load, conns) = (Load::new(1), Connections::new(1));
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (mut client, conn) = parked(&load, &conns).await;
        let parked_at = Instant::now();
        park(conn, Duration::from_millis(300), BOUND, &shutdown, to(tx));
        assert!(closed(&mut client).await, "still open");
        // Never before its deadline.
        assert!(parked_at.elapsed() >= Duration::from_millis(300));
        assert_eq!((load.counts(), conns.total()), (vec![0], 0));
        assert_eq!(parked_here(), 0);
        assert!(rx.try_recv().is_err(), "a closed connection was resumed");
    }

    #[tokio::test]
    async fn a_shutdown_closes_parked_connections_after_their_last_call() {
        let (load, conns) = (Load::new(1), Connections::new(1));
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (mut idle, conn) = parked(&load, &conns).await;
        park(
            conn,
            Duration::from_secs(60),
            Duration::ZERO,
            &shutdown,
            to(tx.clone()),
        );
        let (mut busy, conn) = parked(&load, &conns).await;
        park(
            conn,
            Duration::from_secs(60),
            Duration::ZERO,
            &shutdown,
            to(tx),
        );
        assert_eq!(conns.total(), 2);
        stop.send(true).expect("signal");
        assert!(closed(&mut idle).await, "still open after the shutdown");
        assert!(closed(&mut busy).await, "still open after the shutdown");
        assert_eq!((load.counts(), conns.total()), (vec![0], 0));
        assert!(rx.try_recv().is_err(), "a closed connection was resumed");
    }

    #[tokio::test]
    async fn a_request_within_the_last_call_is_resumed() {
        let (load, conns) = (Load::new(1), Connections::new(1));
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (mut client, conn) = parked(&load, &conns).await;
        park(
            conn,
            Duration::from_secs(60),
            Duration::from_secs(60),
            &shutdown,
            to(tx),
        );
        stop.send(true).expect("signal");
        client
            .write_all(b"GET / HTTP/1.1\r\n")
            .await
            .expect("write");
        let woken = tokio::time::timeout(BOUND, rx.recv()).await;
        assert!(matches!(woken, Ok(Some(_))), "not resumed");
    }
}
