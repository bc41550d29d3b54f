//! The key layout in etcd, all under the configured prefix:
//!
//! | key | value |
//! |---|---|
//! | `state` | the shared `LiveState` (JSON); its mod revision is the state's version |
//! | `reload` | a counter: every node re-reads its config file when it changes |
//! | `nodes/{node}` | a node's report (JSON), under the node's lease |
//! | `acme/account/{id}` | the ACME account key, sealed |
//! | `acme/certs/{id}` | a certificate with its private key, sealed |
//! | `acme/locks/{id}/{lease}` | a node in line for the order of `{id}`, under its lease; the oldest holds the lock |
//! | `acme/challenges/{token}`, `acme/challenges/tls-alpn-01/{domain}` | a pending challenge's key authorization, under the lock's lease |

/// Names the keys of one cluster (one prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (ends in `/`, as validated config gives it).
    pub fn new(prefix: &str) -> Keys {
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Keys { prefix }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The shared deploy state.
    pub fn state(&self) -> String {
        format!("{}state", self.prefix)
    }

    /// The reload counter.
    pub fn reload(&self) -> String {
        format!("{}reload", self.prefix)
    }

    /// Prefix of every node's report.
    pub fn nodes(&self) -> String {
        format!("{}nodes/", self.prefix)
    }

    /// One node's report.
    pub fn node(&self, node: &str) -> String {
        format!("{}nodes/{node}", self.prefix)
    }

    /// The ACME account key for `id` (a hash of contact and directory).
    pub fn account(&self, id: &str) -> String {
        format!("{}acme/account/{id}", self.prefix)
    }

    /// Prefix of every certificate.
    pub fn certs(&self) -> String {
        format!("{}acme/certs/", self.prefix)
    }

    /// The certificate for `id` (a hash of its domains and directory).
    pub fn cert(&self, id: &str) -> String {
        format!("{}acme/certs/{id}", self.prefix)
    }

    /// The lock name of the order for `id`.
    pub fn lock(&self, id: &str) -> String {
        format!("{}acme/locks/{id}", self.prefix)
    }

    /// Prefix of every pending challenge.
    pub fn challenges(&self) -> String {
        format!("{}acme/challenges/", self.prefix)
    }

    /// A pending challenge: an HTTP-01 token, or `tls-alpn-01/{domain}`.
    pub fn challenge(&self, id: &str) -> String {
        format!("{}acme/challenges/{id}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_prefix() {
        let k = Keys::new("/duotone");
        assert_eq!(k.prefix(), "/duotone/");
        assert_eq!(k.state(), "/duotone/state");
        assert_eq!(k.node("a"), "/duotone/nodes/a");
        assert!(k.node("a").starts_with(&k.nodes()));
        assert!(k.cert("x").starts_with(&k.certs()));
        assert!(k.challenge("t").starts_with(&k.challenges()));
    }
}
