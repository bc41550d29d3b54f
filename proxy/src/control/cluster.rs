//! Several edge nodes (`[cluster]`): the control plane's side of the
//! shared deploy state ([`cluster::sync`]). Changes (flip, weights,
//! maintenance, pause) go through etcd, each node applies what its watch
//! sees, and the node that made a change answers once every live node has
//! applied it. Without etcd (or its quorum) changes are refused with 503
//! and every node keeps serving its last applied state.

use super::{Ack, ChangeError, Control};
use ::cluster::sync::{ChangeFailure, Node, StateSync};
use routes::LiveState;
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

/// Why a change is refused while etcd is away, in words.
fn refused(reason: impl std::fmt::Display) -> ChangeError {
    ChangeError::Unavailable(format!(
        "cluster unavailable: {reason}, change refused (nodes keep serving their last state)"
    ))
}

/// Makes a change through the shared state (see [`Control::commit`]).
pub(super) fn commit(
    control: &Control,
    plan: impl FnMut(&LiveState) -> Result<LiveState, ChangeError>,
) -> Result<::cluster::sync::Applied, ChangeError> {
    let Some(sync) = control.sync.get() else {
        return Err(refused("the node has not started its etcd sync yet"));
    };
    match sync.change(plan) {
        Ok(applied) => {
            if !applied.pending.is_empty() {
                tracing::warn!(revision = applied.revision, pending = ?applied.pending, "cluster: change not applied by every node in time");
            }
            Ok(applied)
        }
        Err(ChangeFailure::Refused(e)) => Err(e),
        Err(ChangeFailure::Unavailable(e)) => {
            sync.count_refused();
            tracing::warn!("cluster: change refused: {e}");
            Err(refused(e))
        }
        Err(ChangeFailure::Conflict(n)) => Err(ChangeError::Conflict(format!(
            "the deploy state kept changing on other nodes ({n} tries): try again"
        ))),
    }
}

/// The control plane as the sync sees it.
struct ControlNode(Weak<Control>);

impl Node for ControlNode {
    fn local_state(&self) -> LiveState {
        self.0
            .upgrade()
            .map(|c| c.lock().clone())
            .unwrap_or_default()
    }

    fn apply(&self, state: LiveState) -> Result<(), String> {
        let Some(c) = self.0.upgrade() else {
            return Ok(());
        };
        c.apply_shared(state).map_err(|e| e.to_string())
    }

    fn reload(&self) -> Result<(), String> {
        let Some(c) = self.0.upgrade() else {
            return Ok(());
        };
        c.reload().map(drop).map_err(|e| e.to_string())
    }

    fn in_flight(&self) -> BTreeMap<String, BTreeMap<String, i64>> {
        self.0.upgrade().map(|c| c.in_flight()).unwrap_or_default()
    }
}

impl Control {
    /// Starts the shared deploy state's sync (once; with `[cluster]`).
    pub fn start_cluster(self: &Arc<Self>, cluster: Arc<::cluster::Cluster>) -> anyhow::Result<()> {
        if self.sync.get().is_some() {
            return Ok(());
        }
        let node = Arc::new(ControlNode(Arc::downgrade(self)));
        let sync = StateSync::start(cluster, node)?;
        let _ = self.sync.set(sync);
        Ok(())
    }

    /// The sync, with `[cluster]` once started.
    pub fn cluster_sync(&self) -> Option<&Arc<StateSync>> {
        self.sync.get()
    }

    /// Whether the config has `[cluster]`.
    pub fn clustered(&self) -> bool {
        self.clustered
    }

    /// Applies a shared state seen in etcd: compiles it, saves it locally
    /// (a restart with etcd down starts from it) and swaps it in.
    pub fn apply_shared(&self, next: LiveState) -> Result<(), ChangeError> {
        let mut live = self.lock();
        if *live == next {
            return Ok(());
        }
        let config = self.load().table.config.clone();
        self.apply(&mut live, next, config)
    }

    /// Requests in flight now, per service and color.
    pub fn in_flight(&self) -> BTreeMap<String, BTreeMap<String, i64>> {
        let snap = self.load();
        snap.table
            .services
            .iter()
            .map(|s| {
                let colors = s
                    .pools
                    .iter()
                    .map(|p| (p.color.to_string(), p.stats.in_flight().max(0)))
                    .collect();
                (s.name.clone(), colors)
            })
            .collect()
    }

    /// `POST /v1/reload`: reloads here; with `[cluster]`, then asks every
    /// node to reload (an invalid config is refused here first).
    pub fn reload_all(&self) -> Result<(Vec<String>, Ack), ChangeError> {
        let warnings = self.reload()?;
        if !self.clustered {
            return Ok((warnings, None));
        }
        let Some(sync) = self.sync.get() else {
            return Err(refused("the node has not started its etcd sync yet"));
        };
        match sync.reload_all() {
            Ok(a) => Ok((warnings, Some(a))),
            Err(e) => {
                sync.count_refused();
                Err(ChangeError::Unavailable(format!(
                    "cluster unavailable: {e}; reloaded on this node only"
                )))
            }
        }
    }

    /// `GET /v1/cluster`: this node and every live node's last report (its
    /// own in-flight figures are live).
    pub fn cluster_view(&self) -> Result<serde_json::Value, ChangeError> {
        let Some(sync) = self.sync.get() else {
            return Err(ChangeError::Invalid(
                "this node is not in a cluster (no [cluster] in its config)".into(),
            ));
        };
        let me = sync.report();
        let status = sync.status();
        let nodes = match sync.nodes() {
            Ok(n) => n,
            Err(e) => {
                sync.count_refused();
                return Err(refused(e));
            }
        };
        let nodes: Vec<serde_json::Value> = nodes
            .into_iter()
            .map(|mut n| {
                let age = n.age_ms();
                if n.node == me.node {
                    n.in_flight = me.in_flight.clone();
                }
                serde_json::json!({
                    "name": n.node,
                    "applied": n.applied,
                    "connected": n.connected,
                    "report_age_ms": age,
                    "in_flight": n.in_flight,
                    "version": n.version,
                })
            })
            .collect();
        use std::sync::atomic::Ordering::Relaxed;
        Ok(serde_json::json!({
            "node": me.node,
            "connected": status.connected.load(Relaxed),
            "applied": status.applied.load(Relaxed),
            "state_revision": status.state_revision.load(Relaxed),
            "nodes": nodes,
        }))
    }

    /// The cluster gauges (none without `[cluster]`).
    pub fn cluster_gauges(&self) -> Vec<crate::metrics::StateGauge> {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(sync) = self.sync.get() else {
            return Vec::new();
        };
        let s = sync.status();
        let node = sync.cluster().node().to_string();
        let g = |name, value: f64| crate::metrics::StateGauge {
            name,
            labels: vec![("node", node.clone())],
            value,
        };
        vec![
            g(
                "duotone_cluster_connected",
                if s.connected.load(Relaxed) { 1.0 } else { 0.0 },
            ),
            g(
                "duotone_cluster_applied_revision",
                s.applied.load(Relaxed) as f64,
            ),
            g(
                "duotone_cluster_state_revision",
                s.state_revision.load(Relaxed) as f64,
            ),
            g(
                "duotone_cluster_changes_refused_total",
                s.refused.load(Relaxed) as f64,
            ),
        ]
    }
}
