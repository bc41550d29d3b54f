//! Several Duotone edge nodes sharing one etcd cluster: each node is a
//! [`Proxy`] on its own loopback address (127.0.0.2, .3, …), named
//! `node-1`, `node-2`, …

use crate::etcd::EtcdCluster;
use crate::proxy::Proxy;
use std::net::Ipv4Addr;

/// The loopback address of node `i` (0-based): 127.0.0.(i+2).
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, (i + 2) as u8)
}

/// The name of node `i` (0-based): `node-{i+1}`.
pub fn node_name(i: usize) -> String {
    format!("node-{}", i + 1)
}

/// A `[cluster]` table for `etcd` with `node = "{node}"` left for
/// [`node_template`] to fill, and the given extra lines (e.g. `secret_key`).
pub fn cluster_table(etcd: &EtcdCluster, extra: &str) -> String {
    format!(
        "[cluster]\nendpoints = {}\nnode = \"{{node}}\"\n{extra}\n",
        etcd.endpoints_toml()
    )
}

/// Fills the per-node placeholders `{node}` and `{ip}` of a template; the
/// rest (`{http}`, `{admin}`, `{state}`, …) is left to [`Proxy::render`].
pub fn node_template(template: &str, i: usize) -> String {
    template
        .replace("{node}", &node_name(i))
        .replace("{ip}", &node_ip(i).to_string())
}

/// Starts `n` nodes on `template` at once (concurrently, as a cluster
/// boots), each with `env`; waits until every one serves.
pub async fn start_nodes(n: usize, template: &str, env: &[(&str, &str)]) -> Vec<Proxy> {
    let starts = (0..n).map(|i| {
        let t = node_template(template, i);
        async move { Proxy::start_at(node_ip(i), &t, env).await }
    });
    futures_util::future::join_all(starts).await
}

/// Like [`start_nodes`], every node's plain and TLS listeners on the same
/// two ports (each on its own address), as an ACME CA dials one port for
/// whichever node a name resolves to.
pub async fn start_nodes_on(
    n: usize,
    ports: (u16, u16),
    template: &str,
    env: &[(&str, &str)],
) -> Vec<Proxy> {
    let starts = (0..n).map(|i| {
        let t = node_template(template, i);
        async move { Proxy::start_at_ports(node_ip(i), Some(ports), &t, env).await }
    });
    futures_util::future::join_all(starts).await
}
