//! `[cluster]`: etcd endpoints, key prefix, node name, etcd auth, and the
//! key that encrypts private keys at rest.

use crate::config::{Cluster, ClusterAuth, ClusterTls, SecretKey};
use crate::raw::RawCluster;
use crate::validate::Checker;
use crate::KeyPath;
use std::time::Duration;

/// Checks `[cluster]`. `acme`: whether any certificate comes from ACME
/// (then certificates are shared, and `secret_key` is required).
pub(crate) fn check(c: &mut Checker, r: &RawCluster, acme: bool) -> Cluster {
    let at = KeyPath::root("cluster");
    if r.endpoints.is_empty() {
        c.err(
            at.key("endpoints"),
            "no etcd endpoint: list the etcd client URLs, e.g. [\"http://10.0.0.1:2379\"]",
        );
    }
    let mut endpoints = Vec::new();
    for (i, e) in r.endpoints.iter().enumerate() {
        let e = e.trim();
        let rest = e
            .strip_prefix("http://")
            .or_else(|| e.strip_prefix("https://"));
        match rest {
            Some(hp) if !hp.is_empty() && !hp.contains('/') && hp.contains(':') => {
                endpoints.push(e.to_string())
            }
            _ => c.err(
                at.key("endpoints").index(i),
                format!("{e:?} is not an etcd client URL like \"http://10.0.0.1:2379\""),
            ),
        }
    }
    let prefix = match r.prefix.as_deref().map(str::trim) {
        None => "/duotone/".to_string(),
        Some(p) if p.is_empty() || p.bytes().any(|b| b.is_ascii_whitespace()) => {
            c.err(
                at.key("prefix"),
                "the key prefix must be non-empty, without spaces",
            );
            "/duotone/".to_string()
        }
        Some(p) if p.ends_with('/') => p.to_string(),
        Some(p) => format!("{p}/"),
    };
    let node = match r.node.as_deref().map(str::trim) {
        None => None,
        Some(n) if is_node_name(n) => Some(n.to_string()),
        Some(n) => {
            c.err(
                at.key("node"),
                format!("{n:?} is not a node name (1-64 letters, digits, '.', '-' or '_')"),
            );
            None
        }
    };
    let auth = match (&r.user, &r.password) {
        (None, None) => None,
        (Some(u), Some(p)) if !u.trim().is_empty() => Some(ClusterAuth {
            user: u.trim().to_string(),
            password: p.clone(),
        }),
        (Some(_), Some(_)) => {
            c.err(at.key("user"), "empty etcd user name");
            None
        }
        (Some(_), None) => {
            c.err(at.key("password"), "an etcd user needs a password");
            None
        }
        (None, Some(_)) => {
            c.err(at.key("user"), "an etcd password needs a user");
            None
        }
    };
    let https = endpoints.iter().any(|e| e.starts_with("https://"));
    let identity = match (&r.cert, &r.key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((c.path(cert), c.path(key))),
        (Some(_), None) => {
            c.err(at.key("key"), "a client certificate needs its key");
            None
        }
        (None, Some(_)) => {
            c.err(at.key("cert"), "a client key needs its certificate");
            None
        }
    };
    let ca = r.ca.as_deref().map(|p| c.path(p));
    let tls = if ca.is_some() || identity.is_some() || https {
        if !https && !endpoints.is_empty() {
            c.err(
                at.key("endpoints"),
                "ca, cert and key are for TLS to etcd: use https:// endpoints",
            );
        }
        Some(ClusterTls { ca, identity })
    } else {
        None
    };
    let secret_key = match r.secret_key.as_deref().map(str::trim) {
        None => {
            if acme {
                c.err(
                    at.key("secret_key"),
                    "shared ACME certificates need a secret_key to encrypt their private keys \
                     in etcd: 64 hex digits, e.g. secret_key = \"${DUOTONE_CLUSTER_KEY}\" with \
                     the value from `openssl rand -hex 32`",
                );
            }
            None
        }
        Some(k) => match parse_key(k) {
            Some(k) => Some(k),
            None => {
                c.err(
                    at.key("secret_key"),
                    "must be 64 hex digits (32 bytes), e.g. from `openssl rand -hex 32`",
                );
                None
            }
        },
    };
    Cluster {
        endpoints,
        prefix,
        node,
        auth,
        tls,
        secret_key,
        apply_timeout: c.duration(
            at.key("apply_timeout"),
            &r.apply_timeout,
            Duration::from_secs(5),
        ),
        request_timeout: c.duration(
            at.key("request_timeout"),
            &r.request_timeout,
            Duration::from_secs(2),
        ),
    }
}

/// 1–64 of `[A-Za-z0-9._-]`: a name that fits in an etcd key and a log line.
pub(crate) fn is_node_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

fn parse_key(k: &str) -> Option<SecretKey> {
    if k.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in k.as_bytes().chunks(2).enumerate() {
        let hex = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(SecretKey(out))
}

#[cfg(test)]
mod tests {
    use crate::load;

    fn cluster(body: &str) -> Result<crate::config::Cluster, String> {
        let text = format!("[server]\nhttp = \"127.0.0.1:80\"\n[cluster]\n{body}\n");
        load("t.toml", &text, |_| None)
            .map(|c| c.cluster.expect("cluster"))
            .map_err(|d| d.to_string())
    }

    #[test]
    fn defaults_and_errors_name_the_key() {
        let c = cluster("endpoints = [\"http://127.0.0.1:2379\"]").unwrap();
        assert_eq!(c.prefix, "/duotone/");
        assert_eq!(c.node, None);
        assert_eq!(c.apply_timeout, std::time::Duration::from_secs(5));
        let e = cluster("endpoints = []").unwrap_err();
        assert!(e.contains("cluster.endpoints"), "{e}");
        let e = cluster("endpoints = [\"127.0.0.1:2379\"]").unwrap_err();
        assert!(e.contains("cluster.endpoints[0]"), "{e}");
        let e = cluster("endpoints = [\"http://a:1\"]\nnode = \"a b\"").unwrap_err();
        assert!(e.contains("cluster.node"), "{e}");
        let e = cluster("endpoints = [\"http://a:1\"]\nuser = \"u\"").unwrap_err();
        assert!(e.contains("cluster.password"), "{e}");
        let e = cluster("endpoints = [\"http://a:1\"]\nsecret_key = \"abc\"").unwrap_err();
        assert!(e.contains("cluster.secret_key"), "{e}");
        let e = cluster("endpoints = [\"http://a:1\"]\nca = \"ca.pem\"").unwrap_err();
        assert!(e.contains("https://"), "{e}");
        let k = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let c = cluster(&format!(
            "endpoints = [\"https://a:1\"]\nprefix = \"/x\"\nsecret_key = \"{k}\""
        ))
        .unwrap();
        assert_eq!(c.prefix, "/x/");
        assert_eq!(c.secret_key.unwrap().0[1], 0x11);
        assert!(c.tls.is_some());
    }

    #[test]
    fn shared_acme_needs_a_secret_key() {
        let text = "[server]\nhttp = \"127.0.0.1:80\"\nhttps = \"127.0.0.1:443\"\n\
                    [acme]\nemail = \"a@b.c\"\n[[sites]]\nhosts = [\"a.test\"]\ntls = \"acme\"\n\
                    [cluster]\nendpoints = [\"http://a:1\"]\n";
        let e = load("t.toml", text, |_| None).unwrap_err().to_string();
        assert!(e.contains("cluster.secret_key"), "{e}");
    }
}
