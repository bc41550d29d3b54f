//! [`Cluster`]: this node's name, the key layout, and one etcd client,
//! connected on first use and again after a failure, so that a node starts
//! (from its local cache) while etcd is down.

use crate::Keys;
use etcd_client::{Client, ConnectOptions};
use routes::config::Cluster as Settings;
use std::time::Duration;

/// Why talking to etcd failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd cannot be reached, has no quorum, or did not answer in time.
    #[error("etcd unavailable: {reason}")]
    Unavailable {
        /// The configured endpoints.
        endpoints: String,
        /// What failed.
        reason: String,
    },
    /// A TLS file for etcd cannot be read.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
    /// A value in etcd is not what this version writes.
    #[error("{key}: {reason}")]
    Corrupt {
        /// The etcd key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// An etcd client error in a few words (a gRPC status's message, e.g.
/// `etcdserver: no leader` or `tcp connect error`, without tonic's chain).
pub fn brief(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => match s.message() {
            "" => format!("{:?}", s.code()),
            m => m.to_string(),
        },
        etcd_client::Error::TransportError(t) => format!("cannot connect ({t})"),
        other => other.to_string(),
    }
}

/// One node's handle on the cluster; cheap to share as `Arc<Cluster>`.
pub struct Cluster {
    settings: Settings,
    node: String,
    keys: Keys,
    client: tokio::sync::Mutex<Option<Client>>,
    /// The member tried first on the next connect; [`Cluster::reset`]
    /// moves it on.
    next: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("endpoints", &self.settings.endpoints)
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A handle for `settings`, as node `node` (the configured name, else
    /// the host name). Does not contact etcd.
    pub fn new(settings: Settings, node: String) -> Cluster {
        Cluster {
            keys: Keys::new(&settings.prefix),
            settings,
            node,
            client: tokio::sync::Mutex::new(None),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The node name from the config, else this machine's host name.
    pub fn node_name(settings: &Settings) -> String {
        if let Some(n) = &settings.node {
            return n.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let clean: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        if clean.is_empty() {
            "node".to_string()
        } else {
            clean
        }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The `[cluster]` settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// How long one etcd request may take.
    pub fn request_timeout(&self) -> Duration {
        self.settings.request_timeout
    }

    /// An error saying etcd is unavailable because of `reason`.
    pub fn unavailable(&self, reason: impl std::fmt::Display) -> ClusterError {
        ClusterError::Unavailable {
            endpoints: self.settings.endpoints.join(","),
            reason: reason.to_string(),
        }
    }

    /// The etcd client, connecting first if needed. Requests on it fail
    /// after `request_timeout` and without a leader (no quorum), rather
    /// than hang.
    ///
    /// The client talks to ONE member at a time, one that has a leader
    /// (checked with a status call on connect): with every endpoint in one
    /// client, tonic's balancer kept sending requests to a dead or
    /// quorum-less member. [`Cluster::reset`] moves on to the next member.
    pub async fn client(&self) -> Result<Client, ClusterError> {
        use std::sync::atomic::Ordering;
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let options = self.options()?;
        let n = self.settings.endpoints.len().max(1);
        let first = self.next.load(Ordering::Relaxed);
        let mut why: Vec<String> = Vec::new();
        for k in 0..n {
            let i = (first + k) % n;
            let Some(endpoint) = self.settings.endpoints.get(i) else {
                break;
            };
            match self.connect_one(endpoint, options.clone()).await {
                Ok(client) => {
                    self.next.store(i, Ordering::Relaxed);
                    tracing::debug!(member = %endpoint, "etcd: connected");
                    *slot = Some(client.clone());
                    return Ok(client);
                }
                Err(e) => why.push(format!("{endpoint}: {e}")),
            }
        }
        self.next.store((first + 1) % n, Ordering::Relaxed);
        Err(self.unavailable(match why.is_empty() {
            true => "no endpoints".to_string(),
            false => why.join("; "),
        }))
    }

    /// Connects to one member and checks that it has a leader.
    async fn connect_one(&self, endpoint: &str, options: ConnectOptions) -> Result<Client, String> {
        let t = self.settings.request_timeout;
        let connect = Client::connect([endpoint], Some(options));
        let mut client = tokio::time::timeout(t, connect)
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| brief(&e))?;
        let status = tokio::time::timeout(t, client.status())
            .await
            .map_err(|_| "status timed out".to_string())?
            .map_err(|e| brief(&e))?;
        if status.leader() == 0 {
            return Err("member has no leader (no quorum)".into());
        }
        Ok(client)
    }

    /// Drops the client after a failure (a dead or quorum-less member, an
    /// expired auth token); the next [`Cluster::client`] connects to the
    /// next member first. A no-op when the client was already dropped (two
    /// parts seeing the same failure move on once).
    pub async fn reset(&self) {
        let mut slot = self.client.lock().await;
        if slot.take().is_some() {
            let n = self.settings.endpoints.len().max(1);
            let i = self.next.load(std::sync::atomic::Ordering::Relaxed);
            self.next
                .store((i + 1) % n, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn options(&self) -> Result<ConnectOptions, ClusterError> {
        let t = self.settings.request_timeout;
        let mut o = ConnectOptions::new()
            .with_connect_timeout(t)
            .with_timeout(t)
            // etcd drops a client whose keep-alive pings come more often
            // than every 5 s (its default enforcement policy), and watches
            // die with it after ~20 s: 10 s stays clear of that.
            .with_keep_alive(Duration::from_secs(10), t)
            .with_require_leader(true);
        if let Some(a) = &self.settings.auth {
            o = o.with_user(a.user.clone(), a.password.clone());
        }
        if let Some(tls) = &self.settings.tls {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| ClusterError::File {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                })
            };
            let mut t = etcd_client::TlsOptions::new();
            if let Some(ca) = &tls.ca {
                t = t.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
            }
            if let Some((cert, key)) = &tls.identity {
                t = t.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
            }
            o = o.with_tls(t);
        }
        Ok(o)
    }
}
