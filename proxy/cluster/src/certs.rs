//! [`EtcdCerts`]: ACME accounts, certificates, order locks and challenges
//! shared by every node through etcd ([`acme::SharedCerts`]).
//!
//! - Account keys and certificates (with their private keys) are sealed
//!   with the cluster's `secret_key` ([`crate::seal`]); without one nothing
//!   private is ever written.
//! - The order lock of a certificate is the oldest of the keys
//!   `acme/locks/{id}/{lease}`, each under its node's lease (6 s, kept
//!   alive every 2 s): the next in line watches the deletion of the key just
//!   ahead of its own, so a dead holder's lease ends its turn within 6 s.
//! - Challenges are written under the lock's lease, so they vanish with a
//!   dead holder too.
//! - One watch of the `acme/` prefix feeds every node's view (certificates
//!   are served, challenges answered, within milliseconds); it resyncs with
//!   a read of the whole prefix after every reconnect.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use acme::{ChallengeId, HeldLock, SharedCerts, SharedError, SharedEvent};
use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::seal;
use crate::Cluster;

/// Time to live of an order lock's lease: a dead holder's turn ends
/// within this time.
pub const LOCK_TTL_SECS: i64 = 6;
/// How often a held lease is kept alive.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(2);

/// The shared certificate store over etcd.
pub struct EtcdCerts {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: Arc<Cluster>,
    secret: Option<[u8; 32]>,
    subscribers: Mutex<Vec<UnboundedSender<SharedEvent>>>,
    watching: AtomicBool,
}

impl std::fmt::Debug for EtcdCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCerts")
            .field("cluster", &self.inner.cluster)
            .field("sealed", &self.inner.secret.is_some())
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> SharedError {
    SharedError::Unavailable(e.to_string())
}

impl EtcdCerts {
    /// The store of `cluster`, sealing private keys with `secret` (the
    /// `[cluster] secret_key`; without it, storing a key fails).
    pub fn new(cluster: Arc<Cluster>, secret: Option<[u8; 32]>) -> EtcdCerts {
        EtcdCerts {
            inner: Arc::new(Inner {
                cluster,
                secret,
                subscribers: Mutex::new(Vec::new()),
                watching: AtomicBool::new(false),
            }),
        }
    }
}

impl Inner {
    async fn client(&self) -> Result<Client, SharedError> {
        self.cluster.client().await.map_err(unavailable)
    }

    /// Maps an etcd failure, dropping the connection so that the next call
    /// connects again.
    async fn failed(&self, e: etcd_client::Error) -> SharedError {
        self.cluster.reset().await;
        unavailable(e)
    }

    fn secret(&self) -> Result<&[u8; 32], SharedError> {
        self.secret.as_ref().ok_or(SharedError::NoSecretKey)
    }

    fn open(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, SharedError> {
        seal::open(self.secret()?, key, value).map_err(|e| SharedError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }

    async fn get_sealed(&self, key: String) -> Result<Option<Vec<u8>>, SharedError> {
        let mut c = self.client().await?;
        let resp = match c.get(key.as_str(), None).await {
            Ok(r) => r,
            Err(e) => return Err(self.failed(e).await),
        };
        match resp.kvs().first() {
            Some(kv) => self.open(&key, kv.value()).map(Some),
            None => Ok(None),
        }
    }

    fn send(&self, event: SharedEvent) {
        if let Ok(mut subs) = self.subscribers.lock() {
            subs.retain(|s| s.send(event.clone()).is_ok());
        }
    }

    /// The event of a put (`value` given) or delete under `acme/`.
    fn event_of(&self, key: &str, value: Option<&[u8]>) -> Option<SharedEvent> {
        let keys = self.cluster.keys();
        if let Some(id) = key.strip_prefix(&keys.certs()) {
            let value = value?;
            return match self.open(key, value) {
                Ok(pem) => Some(SharedEvent::Cert {
                    id: id.to_string(),
                    pem,
                }),
                Err(e) => {
                    tracing::warn!(key, error = %e, "cannot open a shared certificate (another secret_key?)");
                    None
                }
            };
        }
        let id = ChallengeId::from_key(key.strip_prefix(&keys.challenges())?)?;
        Some(match value {
            Some(v) => SharedEvent::Challenge {
                id,
                key_auth: String::from_utf8_lossy(v).into_owned(),
            },
            None => SharedEvent::ChallengeGone(id),
        })
    }

    /// Follows `acme/` forever: a full read, then the watch from there;
    /// after a failure, again (1 s apart).
    async fn watch_loop(self: Arc<Self>) {
        let mut up = false;
        loop {
            if let Err(e) = self.watch_once(&mut up).await {
                if up {
                    tracing::warn!(error = %e, "shared certificates: etcd watch lost; serving what this node has");
                    self.send(SharedEvent::Down);
                } else {
                    tracing::debug!(error = %e, "shared certificates: etcd unreachable");
                    self.send(SharedEvent::Down);
                }
                up = false;
                self.cluster.reset().await;
            }
            if self
                .subscribers
                .lock()
                .map(|s| s.is_empty())
                .unwrap_or(true)
            {
                self.watching.store(false, Ordering::Relaxed);
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn watch_once(&self, up: &mut bool) -> Result<(), String> {
        let prefix = format!("{}acme/", self.cluster.keys().prefix());
        let mut c = self.cluster.client().await.map_err(|e| e.to_string())?;
        let all = c
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| e.to_string())?;
        let rev = all.header().map_or(0, |h| h.revision());
        let mut stream = c
            .watch(
                prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1),
                ),
            )
            .await
            .map_err(|e| e.to_string())?;
        *up = true;
        tracing::info!(revision = rev, "shared certificates: watching etcd");
        self.send(SharedEvent::Up);
        for kv in all.kvs() {
            if let Some(ev) = self.event_of(&String::from_utf8_lossy(kv.key()), Some(kv.value())) {
                self.send(ev);
            }
        }
        loop {
            let msg = stream.message().await.map_err(|e| e.to_string())?;
            let Some(resp) = msg else {
                return Err("watch ended".into());
            };
            if resp.canceled() {
                return Err(format!("watch canceled: {}", resp.cancel_reason()));
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key());
                let value = match ev.event_type() {
                    EventType::Put => Some(kv.value()),
                    EventType::Delete => None,
                };
                if let Some(e) = self.event_of(&key, value) {
                    self.send(e);
                }
            }
        }
    }
}

/// Keeps a lease alive while held; revokes it when dropped.
struct LeaseGuard {
    lease: i64,
    task: tokio::task::JoinHandle<()>,
    client: Client,
}

impl LeaseGuard {
    fn start(client: Client, lease: i64) -> LeaseGuard {
        let mut c = client.clone();
        let task = tokio::spawn(async move {
            let Ok((mut keeper, mut stream)) = c.lease_keep_alive(lease).await else {
                tracing::warn!(lease, "cannot keep the order lock's lease alive");
                return;
            };
            loop {
                tokio::time::sleep(KEEP_ALIVE_EVERY).await;
                if keeper.keep_alive().await.is_err() {
                    tracing::warn!(lease, "order lock lease: keep-alive failed");
                    return;
                }
                match stream.message().await {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    _ => {
                        tracing::warn!(lease, "order lock lease lost");
                        return;
                    }
                }
            }
        });
        LeaseGuard {
            lease,
            task,
            client,
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.task.abort();
        let (mut c, lease) = (self.client.clone(), self.lease);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = c.lease_revoke(lease).await;
            });
        }
    }
}

#[async_trait]
impl SharedCerts for EtcdCerts {
    async fn get_account(&self, id: &str) -> Result<Option<Vec<u8>>, SharedError> {
        let key = self.inner.cluster.keys().account(id);
        self.inner.get_sealed(key).await
    }

    async fn put_account(&self, id: &str, pkcs8: &[u8]) -> Result<Vec<u8>, SharedError> {
        let inner = &self.inner;
        let key = inner.cluster.keys().account(id);
        let sealed =
            seal::seal(inner.secret()?, &key, pkcs8).map_err(|e| SharedError::Corrupt {
                key: key.clone(),
                reason: e.to_string(),
            })?;
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                key.as_str(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(key.as_str(), sealed, None)])
            .or_else(vec![TxnOp::get(key.as_str(), None)]);
        let mut c = inner.client().await?;
        let resp = match c.txn(txn).await {
            Ok(r) => r,
            Err(e) => return Err(inner.failed(e).await),
        };
        if resp.succeeded() {
            return Ok(pkcs8.to_vec());
        }
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(g) = op {
                if let Some(kv) = g.kvs().first() {
                    return inner.open(&key, kv.value());
                }
            }
        }
        Err(unavailable("account vanished while stored"))
    }

    async fn get_cert(&self, id: &str) -> Result<Option<Vec<u8>>, SharedError> {
        let key = self.inner.cluster.keys().cert(id);
        self.inner.get_sealed(key).await
    }

    async fn put_cert(&self, id: &str, pem: &[u8]) -> Result<(), SharedError> {
        let inner = &self.inner;
        let key = inner.cluster.keys().cert(id);
        let sealed = seal::seal(inner.secret()?, &key, pem).map_err(|e| SharedError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        let mut c = inner.client().await?;
        match c.put(key.as_str(), sealed, None).await {
            Ok(_) => Ok(()),
            Err(e) => Err(inner.failed(e).await),
        }
    }

    async fn lock(&self, id: &str) -> Result<HeldLock, SharedError> {
        let inner = &self.inner;
        let mut c = inner.client().await?;
        let lease = match c.lease_grant(LOCK_TTL_SECS, None).await {
            Ok(r) => r.id(),
            Err(e) => return Err(inner.failed(e).await),
        };
        // From here on, dropping the guard (an error, or this future being
        // dropped) ends this node's place in line.
        let guard = LeaseGuard::start(c.clone(), lease);
        let prefix = format!("{}/", inner.cluster.keys().lock(id));
        let mine = format!("{prefix}{lease:x}");
        let put = PutOptions::new().with_lease(lease);
        if let Err(e) = c.put(mine.as_str(), inner.cluster.node(), Some(put)).await {
            return Err(inner.failed(e).await);
        }
        let sorted = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend);
        loop {
            let line = match c.get(prefix.as_str(), Some(sorted.clone())).await {
                Ok(r) => r,
                Err(e) => return Err(inner.failed(e).await),
            };
            let keys: Vec<&[u8]> = line.kvs().iter().map(|kv| kv.key()).collect();
            let Some(pos) = keys.iter().position(|k| *k == mine.as_bytes()) else {
                return Err(unavailable("the order lock's lease expired while waiting"));
            };
            if pos == 0 {
                return Ok(HeldLock {
                    lease,
                    guard: Box::new(guard),
                });
            }
            let ahead = keys[pos - 1].to_vec();
            let holder = line.kvs()[pos - 1].value_str().unwrap_or("?").to_string();
            tracing::info!(id, holder = %holder, "order lock held by another node: waiting for its turn to end");
            let rev = line.header().map_or(0, |h| h.revision());
            let mut w = match c
                .watch(
                    ahead,
                    Some(WatchOptions::new().with_start_revision(rev + 1)),
                )
                .await
            {
                Ok(w) => w,
                Err(e) => return Err(inner.failed(e).await),
            };
            'wait: loop {
                match w.message().await {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            return Err(unavailable("lock watch canceled"));
                        }
                        if resp
                            .events()
                            .iter()
                            .any(|e| e.event_type() == EventType::Delete)
                        {
                            break 'wait;
                        }
                    }
                    Ok(None) => return Err(unavailable("lock watch ended")),
                    Err(e) => return Err(inner.failed(e).await),
                }
            }
        }
    }

    async fn put_challenge(
        &self,
        lock: &HeldLock,
        id: &ChallengeId,
        key_auth: &str,
    ) -> Result<(), SharedError> {
        let inner = &self.inner;
        let key = inner.cluster.keys().challenge(&id.key());
        let mut c = inner.client().await?;
        let put = PutOptions::new().with_lease(lock.lease);
        match c.put(key.as_str(), key_auth, Some(put)).await {
            Ok(_) => Ok(()),
            Err(e) => Err(inner.failed(e).await),
        }
    }

    async fn get_challenge(&self, id: &ChallengeId) -> Result<Option<String>, SharedError> {
        let inner = &self.inner;
        let key = inner.cluster.keys().challenge(&id.key());
        let mut c = inner.client().await?;
        match c.get(key.as_str(), None).await {
            Ok(r) => Ok(r
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())),
            Err(e) => Err(inner.failed(e).await),
        }
    }

    async fn delete_challenge(&self, id: &ChallengeId) -> Result<(), SharedError> {
        let inner = &self.inner;
        let key = inner.cluster.keys().challenge(&id.key());
        let mut c = inner.client().await?;
        match c.delete(key.as_str(), None).await {
            Ok(_) => Ok(()),
            Err(e) => Err(inner.failed(e).await),
        }
    }

    fn subscribe(&self) -> UnboundedReceiver<SharedEvent> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        if let Ok(mut subs) = self.inner.subscribers.lock() {
            subs.push(tx);
        }
        if !self.inner.watching.swap(true, Ordering::Relaxed) {
            tokio::spawn(self.inner.clone().watch_loop());
        }
        rx
    }
}
