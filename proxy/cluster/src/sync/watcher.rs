//! Keeps this node on the shared state: resync (read `state`) at start and
//! after every reconnect, then watch `state` and `reload` from the resync's
//! revision on, applying each change. While etcd is away the node serves
//! its last applied state; the loop reconnects with a backoff (≤ 2 s).

use super::{parse_state, StateSync};
use etcd_client::{Compare, CompareOp, EventType, Txn, TxnOp, WatchOptions};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often a connected node checks that its etcd member has a leader.
const LEADER_CHECK: Duration = Duration::from_secs(2);

/// Runs forever on the sync's runtime.
pub(crate) async fn run(sync: Arc<StateSync>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut resynced = false;
        let why = session(&sync, &mut resynced).await;
        if resynced {
            backoff = Duration::from_millis(100);
        }
        let applied = sync.status.applied.load(Ordering::Relaxed);
        if sync.status.connected.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                revision = applied,
                "cluster: lost etcd ({why}); serving the last applied state, changes are refused until it is back"
            );
            sync.report_now.notify_one();
        } else {
            tracing::debug!("cluster: etcd still unavailable: {why}");
        }
        sync.cluster.reset().await;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: resync, then watch until something fails. Returns why.
async fn session(sync: &Arc<StateSync>, resynced: &mut bool) -> String {
    let keys = sync.cluster.keys().clone();
    let t = sync.cluster.request_timeout();
    let mut client = match sync.cluster.client().await {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    // Resync: the state as of now, created from this node's cache when absent.
    let (state, header) = loop {
        let resp = match tokio::time::timeout(t, client.get(keys.state(), None)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return crate::brief(&e),
            Err(_) => return "resync timed out".into(),
        };
        let header = resp.header().map_or(0, |h| h.revision());
        if let Some(kv) = resp.kvs().first() {
            match parse_state(&keys.state(), kv.value()) {
                Ok(s) => break (s, header),
                Err(e) => {
                    tracing::error!("cluster: {e}; keeping the local state");
                    return e.to_string();
                }
            }
        }
        let local = sync.node.local_state();
        let bytes = match serde_json::to_vec(&local) {
            Ok(b) => b,
            Err(e) => return e.to_string(),
        };
        let seed = Txn::new()
            .when([Compare::mod_revision(keys.state(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(keys.state(), bytes, None)]);
        match tokio::time::timeout(t, client.txn(seed)).await {
            Ok(Ok(r)) if r.succeeded() => {
                tracing::info!(
                    "cluster: no shared state yet: seeded it from this node's local state"
                )
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return crate::brief(&e),
            Err(_) => return "seeding timed out".into(),
        }
    };
    sync.apply_at(Some(state), header, "resync");
    sync.status.connected.store(true, Ordering::Relaxed);
    *resynced = true;
    tracing::info!(revision = header, "cluster: connected to etcd, resynced");
    sync.report_now.notify_one();

    let from = WatchOptions::new().with_start_revision(header + 1);
    let mut stream = match client.watch(keys.state(), Some(from.clone())).await {
        Ok(s) => s,
        Err(e) => return crate::brief(&e),
    };
    if let Err(e) = stream.watch(keys.reload(), Some(from)).await {
        return crate::brief(&e);
    }
    // A member cut off from the others keeps an idle watch open: check
    // that it still has a leader every few seconds.
    let mut check = tokio::time::interval(LEADER_CHECK);
    check.tick().await;
    loop {
        let next = tokio::select! {
            next = stream.message() => next,
            _ = check.tick() => {
                match tokio::time::timeout(t, client.status()).await {
                    Ok(Ok(s)) if s.leader() != 0 => continue,
                    Ok(Ok(_)) => return "the etcd member lost its leader (no quorum)".into(),
                    Ok(Err(e)) => return crate::brief(&e),
                    Err(_) => return "the etcd member did not answer a status check".into(),
                }
            }
        };
        let msg = match next {
            Ok(Some(m)) => m,
            Ok(None) => return "watch ended".into(),
            Err(e) => return crate::brief(&e),
        };
        if msg.canceled() {
            return format!("watch canceled: {}", msg.cancel_reason());
        }
        for ev in msg.events() {
            let Some(kv) = ev.kv() else { continue };
            let rev = kv.mod_revision();
            if kv.key() == keys.state().as_bytes() {
                if ev.event_type() != EventType::Put {
                    tracing::warn!(
                        "cluster: the shared state was deleted; keeping the current one"
                    );
                    continue;
                }
                match parse_state(&keys.state(), kv.value()) {
                    Ok(s) => sync.apply_at(Some(s), rev, "watch"),
                    Err(e) => tracing::error!("cluster: {e}; ignored"),
                }
            } else if kv.key() == keys.reload().as_bytes()
                && sync.reloaded.fetch_max(rev, Ordering::Relaxed) < rev
            {
                let node = sync.node.clone();
                let result = tokio::task::spawn_blocking(move || node.reload()).await;
                match result {
                    Ok(Ok(())) => {
                        tracing::info!(revision = rev, "cluster: config reloaded (asked by a node)")
                    }
                    Ok(Err(e)) => tracing::warn!("cluster: reload refused, old config stays:\n{e}"),
                    Err(e) => tracing::error!("cluster: reload failed: {e}"),
                }
                sync.apply_at(None, rev, "reload");
            }
        }
    }
}
