//! The accept service: Duotone's own Pingora [`Service`] in place of
//! Pingora's listening service.

use super::bind;
use super::endpoint::Endpoint;
use super::spread::Load;
use super::worker::Worker;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;
use std::sync::Arc;
use tokio::sync::mpsc::unbounded_channel;

/// Listens on its endpoints with one accept loop per endpoint on each of
/// `workers` worker threads (each its own single-threaded runtime), spreads
/// the accepted connections so the workers stay within one open connection
/// of each other, and hands each, after its handshake, to `app`.
pub struct AcceptService<A> {
    name: String,
    endpoints: Vec<Arc<Endpoint>>,
    app: Arc<A>,
    workers: usize,
}

impl<A> AcceptService<A> {
    /// A service named `name` (also its threads' name) serving `app` on
    /// `workers` worker threads (at least one).
    pub fn new(name: impl Into<String>, app: A, workers: usize) -> Self {
        AcceptService {
            name: name.into(),
            endpoints: Vec::new(),
            app: Arc::new(app),
            workers: workers.max(1),
        }
    }

    /// Adds a listening endpoint (bound when the service starts).
    pub fn add(&mut self, endpoint: Endpoint) {
        self.endpoints.push(Arc::new(endpoint));
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> Service for AcceptService<A> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let mut endpoints = Vec::with_capacity(self.endpoints.len());
        for endpoint in &self.endpoints {
            match bind::listen(&endpoint.addr, fds.as_ref()).await {
                Ok(socket) => endpoints.push((endpoint.clone(), socket)),
                Err(e) => {
                    tracing::error!("Failed to build listeners: {e}");
                    return;
                }
            }
        }
        // Kept by every worker, so the sockets stay open (the hand-over
        // table names them) for as long as the process runs.
        let endpoints: Arc<[_]> = endpoints.into();
        let load = Load::new(self.workers);
        let (peers, inboxes): (Vec<_>, Vec<_>) =
            (0..self.workers).map(|_| unbounded_channel()).unzip();
        let peers: Arc<[_]> = peers.into();
        let mut running = Vec::with_capacity(self.workers);
        for (me, inbox) in inboxes.into_iter().enumerate() {
            let worker = Worker {
                me,
                load: load.clone(),
                peers: peers.clone(),
                endpoints: endpoints.clone(),
                app: self.app.clone(),
                shutdown: shutdown.clone(),
            };
            match worker.start(&self.name, inbox) {
                Ok(done) => running.push(done),
                Err(e) => tracing::error!("starting worker {me} failed: {e}"),
            }
        }
        for done in running {
            let _ = done.await;
        }
        self.app.cleanup().await;
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// One thread: Pingora's runtime for this service only binds the
    /// sockets and starts the workers, which run on threads of their own.
    fn threads(&self) -> Option<usize> {
        Some(1)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(self.endpoints.iter().map(|e| e.addr.clone()).collect())
    }
}
