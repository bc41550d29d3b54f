//! The shared deploy state: one JSON [`LiveState`] at the `state` key.
//!
//! A change on any node reads `state` (its mod revision R), applies the
//! change with the same pure code a single node uses, and writes it back
//! in a transaction that only succeeds while `state` is still at R (no
//! lock). Every node watches `state` and `reload` ([`watcher`]) and applies
//! each new state atomically to its routing table; each reports its applied
//! revision and in-flight requests under a short lease ([`report`]), so the
//! node that made a change can wait until every live node applied it.
//!
//! All etcd work runs on a small runtime of its own: the admin API and
//! the proxy's runtimes are never blocked by etcd, and the blocking calls
//! here may be made from any plain thread.

pub mod report;
pub mod watcher;

use crate::{Cluster, ClusterError};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use routes::LiveState;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use report::NodeReport;

/// How many times a change re-reads and retries after a concurrent change
/// won the compare-and-swap.
const MAX_TRIES: u32 = 5;

/// What the node running the sync does with the shared state.
pub trait Node: Send + Sync + 'static {
    /// This node's own saved state (its local cache): it seeds an empty
    /// cluster.
    fn local_state(&self) -> LiveState;
    /// Applies `state` atomically to the routing table and saves it locally.
    fn apply(&self, state: LiveState) -> Result<(), String>;
    /// Re-reads the config file.
    fn reload(&self) -> Result<(), String>;
    /// Requests in flight now, per service and color.
    fn in_flight(&self) -> BTreeMap<String, BTreeMap<String, i64>>;
}

/// Why a change through the cluster did not happen.
#[derive(Debug)]
pub enum ChangeFailure<E> {
    /// The change itself was refused (unknown service, unhealthy color, …).
    Refused(E),
    /// etcd is unreachable or has no quorum.
    Unavailable(ClusterError),
    /// Other nodes kept changing the state meanwhile.
    Conflict(u32),
}

/// A change committed to etcd and how far it got.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    /// The etcd revision of the change.
    pub revision: i64,
    /// Live nodes that applied it.
    pub applied: Vec<String>,
    /// Live nodes that had not applied it when the wait ended.
    pub pending: Vec<String>,
}

/// What the sync's state is now (for metrics and the admin API).
#[derive(Debug, Default)]
pub struct Status {
    /// Whether the watch on etcd is up.
    pub connected: AtomicBool,
    /// The etcd revision this node has applied up to.
    pub applied: AtomicI64,
    /// The mod revision of the shared state this node applied last.
    pub state_revision: AtomicI64,
    /// Changes refused because etcd was unavailable.
    pub refused: AtomicU64,
}

/// One node's link to the shared deploy state.
pub struct StateSync {
    cluster: Arc<Cluster>,
    node: Arc<dyn Node>,
    rt: tokio::runtime::Handle,
    status: Status,
    /// Serializes applies, so the applied revision only grows.
    applying: Mutex<()>,
    /// Wakes the reporter to report at once.
    report_now: tokio::sync::Notify,
    /// The revision of the last `reload` this node has done.
    reloaded: AtomicI64,
}

impl std::fmt::Debug for StateSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateSync")
            .field("cluster", &self.cluster)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl StateSync {
    /// Starts the sync of `node` through `cluster`: its runtime, the
    /// watcher and the reporter. Never fails on etcd being down: the node
    /// keeps its local state and connects when etcd is back.
    pub fn start(cluster: Arc<Cluster>, node: Arc<dyn Node>) -> std::io::Result<Arc<StateSync>> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("duotone-cluster")
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        // Lives as long as the process (dropping a runtime inside another
        // one's context would panic).
        std::mem::forget(rt);
        let sync = Arc::new(StateSync {
            cluster,
            node,
            rt: handle,
            status: Status::default(),
            applying: Mutex::new(()),
            report_now: tokio::sync::Notify::new(),
            reloaded: AtomicI64::new(0),
        });
        sync.rt.spawn(watcher::run(sync.clone()));
        sync.rt.spawn(report::run(sync.clone()));
        Ok(sync)
    }

    /// The cluster handle.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The sync's state now.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// Counts a change refused because etcd was unavailable.
    pub fn count_refused(&self) {
        self.status.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs `fut` on the sync's runtime and waits for it. Call from a plain
    /// thread (e.g. `spawn_blocking`), never from an async task.
    fn block<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        match rx.recv() {
            Ok(v) => v,
            // Only if the runtime were gone: nothing sensible to return.
            Err(_) => {
                tracing::error!("cluster runtime gone");
                std::process::abort()
            }
        }
    }

    /// Runs an etcd call, once more on another member after a failure.
    async fn with_retry<T, F, Fut>(&self, op: F) -> Result<T, ClusterError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let t = self.cluster.request_timeout();
        let mut last: Option<ClusterError> = None;
        for _ in 0..2 {
            let client = match self.cluster.client().await {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            match tokio::time::timeout(t, op(client)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => last = Some(self.cluster.unavailable(crate::brief(&e))),
                Err(_) => last = Some(self.cluster.unavailable(format!("no answer within {t:?}"))),
            }
            self.cluster.reset().await;
        }
        Err(last.unwrap_or_else(|| self.cluster.unavailable("not tried")))
    }

    /// The shared state and its mod revision (0: absent, then this node's
    /// local state stands in, and the first write creates the key).
    async fn read(self: Arc<Self>) -> Result<(LiveState, i64), ClusterError> {
        let key = self.cluster.keys().state();
        let resp = self
            .with_retry(|mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        match resp.kvs().first() {
            None => Ok((self.node.local_state(), 0)),
            Some(kv) => Ok((parse_state(&key, kv.value())?, kv.mod_revision())),
        }
    }

    /// Writes `next` if `state` is still at `expected` (0: absent). Returns
    /// the new revision, or `None` when someone else changed it first.
    async fn cas(
        self: Arc<Self>,
        expected: i64,
        next: Vec<u8>,
    ) -> Result<Option<i64>, ClusterError> {
        let key = self.cluster.keys().state();
        let resp = self
            .with_retry(|mut c| {
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        expected,
                    )])
                    .and_then([TxnOp::put(key.clone(), next.clone(), None)]);
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map_or(0, |h| h.revision())))
    }

    /// Changes the shared state with `plan` (the same pure change a single
    /// node makes), compare-and-swap on the state's revision, re-reading
    /// and retrying when another node changed it meanwhile. Applies the
    /// result here at once, then waits until every live node has applied
    /// it (at most `apply_timeout`). Blocking: call from a plain thread.
    pub fn change<E>(
        self: &Arc<Self>,
        mut plan: impl FnMut(&LiveState) -> Result<LiveState, E>,
    ) -> Result<Applied, ChangeFailure<E>> {
        for _ in 0..MAX_TRIES {
            let (current, rev) = self
                .block(self.clone().read())
                .map_err(ChangeFailure::Unavailable)?;
            let next = plan(&current).map_err(ChangeFailure::Refused)?;
            if next == current && rev != 0 {
                return Ok(self.wait_applied(rev));
            }
            let bytes = serde_json::to_vec(&next).map_err(|e| {
                ChangeFailure::Unavailable(ClusterError::Corrupt {
                    key: self.cluster.keys().state(),
                    reason: e.to_string(),
                })
            })?;
            match self
                .block(self.clone().cas(rev, bytes))
                .map_err(ChangeFailure::Unavailable)?
            {
                Some(new) => {
                    self.apply_at(Some(next), new, "change made here");
                    return Ok(self.wait_applied(new));
                }
                None => {
                    tracing::info!("cluster: state changed by another node meanwhile; retrying")
                }
            }
        }
        Err(ChangeFailure::Conflict(MAX_TRIES))
    }

    /// Asks every node to re-read its config file (bumps `reload`); this
    /// node has reloaded already. Waits like [`StateSync::change`].
    pub fn reload_all(self: &Arc<Self>) -> Result<Applied, ClusterError> {
        let me = self.clone();
        let rev = self.block(async move {
            let key = me.cluster.keys().reload();
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
                .to_string();
            me.with_retry(|mut c| {
                let (key, stamp) = (key.clone(), stamp.clone());
                async move { c.put(key, stamp, None).await }
            })
            .await
            .map(|r| r.header().map_or(0, |h| h.revision()))
        })?;
        self.reloaded.fetch_max(rev, Ordering::Relaxed);
        self.apply_at(None, rev, "reload made here");
        Ok(self.wait_applied(rev))
    }

    /// Applies `state` (or, for `None`, a reload already done) at etcd
    /// revision `rev`, unless this node has applied that far already.
    pub(crate) fn apply_at(&self, state: Option<LiveState>, rev: i64, why: &str) {
        let _one = self.applying.lock().unwrap_or_else(PoisonError::into_inner);
        if rev <= self.status.applied.load(Ordering::Relaxed) {
            return;
        }
        if let Some(state) = state {
            if let Err(e) = self.node.apply(state) {
                tracing::error!(
                    revision = rev,
                    "cluster: cannot apply the shared state: {e}"
                );
                return;
            }
            self.status.state_revision.store(rev, Ordering::Relaxed);
        }
        self.status.applied.store(rev, Ordering::Relaxed);
        tracing::info!(revision = rev, "cluster: applied ({why})");
        self.report_now.notify_one();
    }

    /// Waits until every live node reports revision `rev` applied, at most
    /// the configured `apply_timeout`. Blocking.
    pub fn wait_applied(self: &Arc<Self>, rev: i64) -> Applied {
        let me = self.clone();
        let limit = self.cluster.settings().apply_timeout;
        self.block(async move { me.wait_applied_async(rev, limit).await })
    }

    async fn wait_applied_async(&self, rev: i64, limit: Duration) -> Applied {
        let deadline = Instant::now() + limit;
        let mut last = Applied {
            revision: rev,
            applied: Vec::new(),
            pending: vec![self.cluster.node().to_string()],
        };
        loop {
            if let Ok(nodes) = self.nodes_async().await {
                let (done, pending): (Vec<_>, Vec<_>) =
                    nodes.into_iter().partition(|n| n.applied >= rev);
                last.applied = done.into_iter().map(|n| n.node).collect();
                last.pending = pending.into_iter().map(|n| n.node).collect();
                if last.pending.is_empty() && !last.applied.is_empty() {
                    return last;
                }
            }
            if Instant::now() >= deadline {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Every live node's last report (a dead node's goes with its lease).
    pub fn nodes(self: &Arc<Self>) -> Result<Vec<NodeReport>, ClusterError> {
        let me = self.clone();
        self.block(async move { me.nodes_async().await })
    }

    async fn nodes_async(&self) -> Result<Vec<NodeReport>, ClusterError> {
        let prefix = self.cluster.keys().nodes();
        let resp = self
            .with_retry(|mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let mut out: Vec<NodeReport> = resp
            .kvs()
            .iter()
            .filter_map(|kv| match serde_json::from_slice(kv.value()) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!("cluster: unreadable node report: {e}");
                    None
                }
            })
            .collect();
        out.sort_by(|a: &NodeReport, b| a.node.cmp(&b.node));
        Ok(out)
    }
}

/// Parses the shared state read from `key`.
fn parse_state(key: &str, bytes: &[u8]) -> Result<LiveState, ClusterError> {
    serde_json::from_slice(bytes).map_err(|e| ClusterError::Corrupt {
        key: key.to_string(),
        reason: format!("not a deploy state: {e}"),
    })
}
