//! One worker: its own thread and single-threaded runtime, one accept loop
//! per endpoint on its own `dup` of the socket, and an inbox for the
//! connections other workers hand to it. Every connection is served on the
//! worker that takes it, from handshake to close.

use super::bind;
use super::endpoint::{self, Endpoint};
use super::spread::{Load, Open};
use pingora::apps::ServerApp;
use pingora::server::ShutdownWatch;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

/// At most this many connections are taken from the accept queue in one go
/// (one turn of the accept loop), before the worker's other tasks run again.
/// Tokio's cooperative budget alone would stop at 128 per turn and send the
/// loop to the back of the worker's queue, behind every connection it just
/// started, while 10 000 clients connecting at once fill the kernel's accept
/// queue (`net.core.somaxconn`, 4 096 on current kernels; past it SYNs are
/// dropped and clients wait for a retransmit, 1 s, 3 s, …). With 1 024,
/// Duotone's own queue stayed under 100 in `benches/load/c10k.py`. The
/// handshakes still run in each connection's own task, so a batch costs the
/// other tasks one accept() per connection.
const ACCEPT_BATCH: usize = 1024;

/// Once a second on each worker, for ever: idle upstream connections past
/// their time or closed by the upstream are closed ([`crate::lane::sweep`]),
/// and the allocator's due purges run ([`crate::ops::heap::collect`]).
async fn housekeeping() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        crate::lane::sweep();
        crate::ops::heap::collect();
    }
}

/// A connection on its way from the worker that accepted it to the one that
/// serves it, already counted there.
pub struct Handoff {
    /// The endpoint that accepted it.
    endpoint: Arc<Endpoint>,
    /// The socket, registered with no reactor.
    stream: std::net::TcpStream,
    /// The client's address.
    peer: SocketAddr,
    /// Its place in the receiving worker's count.
    open: Open,
}

/// What one worker needs, shared by its accept loops.
pub struct Worker<A> {
    /// This worker's number (its place in [`Load`] and in `peers`).
    pub me: usize,
    /// Open connections per worker, across the endpoints.
    pub load: Arc<Load>,
    /// Every worker's inbox.
    pub peers: Arc<[UnboundedSender<Handoff>]>,
    /// The endpoints, and their listening sockets in the same order.
    pub endpoints: Arc<[(Arc<Endpoint>, StdListener)]>,
    /// The app each connection is handed to after its handshake.
    pub app: Arc<A>,
    /// Pingora's shutdown signal.
    pub shutdown: ShutdownWatch,
}

impl<A: ServerApp + Send + Sync + 'static> Worker<A> {
    /// Starts the worker's thread, named `name`. The receiver completes when
    /// its accept loops have ended (at shutdown); the thread and its
    /// connections live on until the process exits.
    pub fn start(
        self,
        name: &str,
        inbox: UnboundedReceiver<Handoff>,
    ) -> std::io::Result<oneshot::Receiver<()>> {
        let (done, finished) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                crate::lane::set_workers(self.load.workers());
                runtime.block_on(async move {
                    drop(tokio::spawn(housekeeping()));
                    Arc::new(self).run(inbox).await;
                    let _ = done.send(());
                    // Connections still open finish here, within the grace
                    // period; Pingora then ends the process.
                    std::future::pending::<()>().await
                })
            })?;
        Ok(finished)
    }

    /// Accepts on every endpoint and takes handed-over connections until
    /// shutdown.
    async fn run(self: Arc<Self>, inbox: UnboundedReceiver<Handoff>) {
        let mut loops = Vec::with_capacity(self.endpoints.len() + 1);
        for (endpoint, socket) in self.endpoints.iter() {
            match bind::per_worker(socket) {
                Ok(listener) => {
                    let (me, endpoint) = (self.clone(), endpoint.clone());
                    loops.push(tokio::spawn(me.accept_loop(endpoint, listener)));
                }
                // This worker still gets its share through hand-overs.
                Err(e) => tracing::error!(
                    "listener {} on worker {}: dup failed: {e}",
                    endpoint.addr,
                    self.me
                ),
            }
        }
        loops.push(tokio::spawn(self.clone().take_handoffs(inbox)));
        for l in loops {
            let _ = l.await;
        }
    }

    /// Accepts connections on `listener` until shutdown.
    async fn accept_loop(self: Arc<Self>, endpoint: Arc<Endpoint>, listener: TcpListener) {
        let mut shutdown = self.shutdown.clone();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = stopped(&mut shutdown) => {
                    tracing::info!("Shutting down {}", endpoint.addr);
                    break;
                }
            };
            let mut accepted = Some(accepted);
            let mut taken = 0;
            while let Some(result) = accepted.take() {
                taken += 1;
                match result {
                    Ok((tcp, peer)) => self.dispatch(&endpoint, tcp, peer),
                    Err(e) => {
                        tracing::error!("Accept() failed {e}");
                        if e.raw_os_error() == Some(libc::EMFILE) {
                            // Too many open files: accept() fails again at
                            // once until others close; give them a moment.
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        break;
                    }
                }
                if taken < ACCEPT_BATCH {
                    accepted = accept_now(&listener).await;
                }
            }
            if taken >= ACCEPT_BATCH {
                // More may be waiting: let the connections just started run
                // first (as Tokio's budget would have, 1 024 instead of 128).
                tokio::task::yield_now().await;
            }
        }
    }

    /// Serves a connection this worker accepted here, or hands it to the
    /// worker with fewer open connections.
    fn dispatch(&self, endpoint: &Arc<Endpoint>, tcp: TcpStream, peer: SocketAddr) {
        let (to, open) = self.load.assign(self.me);
        if to == self.me {
            let (app, shutdown) = (self.app.clone(), self.shutdown.clone());
            endpoint::serve(endpoint.clone(), tcp, peer, open, app, shutdown);
            return;
        }
        let handed = tcp
            .into_std()
            .map_err(|e| e.to_string())
            .and_then(|stream| {
                let handoff = Handoff {
                    endpoint: endpoint.clone(),
                    stream,
                    peer,
                    open,
                };
                self.peers[to]
                    .send(handoff)
                    .map_err(|_| "the worker has stopped".to_string())
            });
        if let Err(e) = handed {
            tracing::error!("handing a connection to another worker failed: {e}");
        }
    }

    /// Serves the connections other workers hand over, until shutdown.
    ///
    /// Up to [`ACCEPT_BATCH`] at a time, like the accept loop: a receive
    /// from the inbox counts against Tokio's cooperative budget, so one at
    /// a time this task would take 128 per turn and then wait behind every
    /// other task of the worker for the next 128. Under 10 000 clients
    /// connecting at once (`benches/load/c10k.py`) the last hand-overs
    /// waited ~40 such turns: their first requests sat unread for up to 8 s
    /// after the accept (the sockets' `ss -ti` ages), and made the p99.
    async fn take_handoffs(self: Arc<Self>, mut inbox: UnboundedReceiver<Handoff>) {
        let mut shutdown = self.shutdown.clone();
        loop {
            let handoff = tokio::select! {
                handoff = inbox.recv() => match handoff {
                    Some(h) => h,
                    None => break,
                },
                () = stopped(&mut shutdown) => break,
            };
            let mut next = Some(handoff);
            let mut taken = 0;
            while let Some(handoff) = next.take() {
                self.take_over(handoff);
                taken += 1;
                if taken < ACCEPT_BATCH {
                    // Outside the budget: `try_recv` does not count.
                    next = inbox.try_recv().ok();
                }
            }
            if taken >= ACCEPT_BATCH {
                // More may be waiting: let the connections just started
                // run first.
                tokio::task::yield_now().await;
            }
        }
    }

    /// Serves one connection another worker handed over.
    fn take_over(&self, handoff: Handoff) {
        match TcpStream::from_std(handoff.stream) {
            Ok(tcp) => {
                let (app, shutdown) = (self.app.clone(), self.shutdown.clone());
                let (endpoint, peer) = (handoff.endpoint, handoff.peer);
                endpoint::serve(endpoint, tcp, peer, handoff.open, app, shutdown);
            }
            Err(e) => tracing::error!("taking over a connection failed: {e}"),
        }
    }
}

/// The next connection waiting in `listener`'s accept queue, or `None` if
/// there is none right now. Outside Tokio's cooperative budget, so a batch
/// of [`ACCEPT_BATCH`] is not cut at 128.
async fn accept_now(listener: &TcpListener) -> Option<std::io::Result<(TcpStream, SocketAddr)>> {
    tokio::task::unconstrained(std::future::poll_fn(|cx| match listener.poll_accept(cx) {
        Poll::Ready(accepted) => Poll::Ready(Some(accepted)),
        Poll::Pending => Poll::Ready(None),
    }))
    .await
}

/// Completes once Pingora signals shutdown (or can no longer signal it).
async fn stopped(shutdown: &mut ShutdownWatch) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}
