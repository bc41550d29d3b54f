//! Each node's report at `nodes/{node}`, under a 3 s lease kept alive every
//! second: its applied revision, in-flight requests per service and color,
//! whether its watch is up. Written on every change and at least every 5 s,
//! so the node making a change sees who applied it, and a node that died
//! drops out when its lease expires.

use super::StateSync;
use etcd_client::PutOptions;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Lease of a node's report, seconds.
const LEASE_TTL: i64 = 3;
/// Longest time between two reports.
const REFRESH: Duration = Duration::from_secs(5);

/// One node's report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeReport {
    /// The node's name.
    pub node: String,
    /// The etcd revision it has applied up to.
    pub applied: i64,
    /// Whether its watch on etcd is up.
    pub connected: bool,
    /// Requests in flight, per service and color.
    pub in_flight: BTreeMap<String, BTreeMap<String, i64>>,
    /// Duotone's version.
    pub version: String,
    /// When it was written (Unix ms).
    pub at_ms: u64,
}

impl NodeReport {
    /// Milliseconds since the report was written.
    pub fn age_ms(&self) -> u64 {
        now_ms().saturating_sub(self.at_ms)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl StateSync {
    /// This node's report now.
    pub fn report(&self) -> NodeReport {
        NodeReport {
            node: self.cluster.node().to_string(),
            applied: self.status.applied.load(Ordering::Relaxed),
            connected: self.status.connected.load(Ordering::Relaxed),
            in_flight: self.node.in_flight(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            at_ms: now_ms(),
        }
    }
}

/// Runs forever on the sync's runtime.
pub(crate) async fn run(sync: Arc<StateSync>) {
    loop {
        let why = session(&sync).await;
        tracing::debug!("cluster: node report interrupted: {why}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// One lease: report until something fails. Returns why.
async fn session(sync: &Arc<StateSync>) -> String {
    let t = sync.cluster.request_timeout();
    let key = sync.cluster.keys().node(sync.cluster.node());
    let mut client = match sync.cluster.client().await {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    let lease = match tokio::time::timeout(t, client.lease_grant(LEASE_TTL, None)).await {
        Ok(Ok(l)) => l.id(),
        Ok(Err(e)) => return crate::brief(&e),
        Err(_) => return "lease grant timed out".into(),
    };
    let (mut keeper, mut alive) = match client.lease_keep_alive(lease).await {
        Ok(k) => k,
        Err(e) => return crate::brief(&e),
    };
    let mut last: Option<(NodeReport, Instant)> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let mut report = sync.report();
        let due = match &last {
            None => true,
            Some((r, at)) => {
                let mut same = r.clone();
                same.at_ms = report.at_ms;
                same != report || at.elapsed() >= REFRESH
            }
        };
        if due {
            report.at_ms = now_ms();
            let bytes = match serde_json::to_vec(&report) {
                Ok(b) => b,
                Err(e) => return e.to_string(),
            };
            let put = client.put(
                key.clone(),
                bytes,
                Some(PutOptions::new().with_lease(lease)),
            );
            match tokio::time::timeout(t, put).await {
                Ok(Ok(_)) => last = Some((report, Instant::now())),
                Ok(Err(e)) => return crate::brief(&e),
                Err(_) => return "report timed out".into(),
            }
        }
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = keeper.keep_alive().await {
                    return e.to_string();
                }
                match tokio::time::timeout(t, alive.message()).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                    Ok(Ok(Some(_))) => return "lease expired".into(),
                    Ok(Ok(None)) => return "keep-alive stream ended".into(),
                    Ok(Err(e)) => return crate::brief(&e),
                    Err(_) => return "keep-alive timed out".into(),
                }
            }
            () = sync.report_now.notified() => {}
        }
    }
}
