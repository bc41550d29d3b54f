//! Shared certificates across edge nodes (#23), end to end: a real
//! 3-member etcd, the real Pebble CA, three `duotone` nodes on 127.0.0.2-4
//! started at once, all on the same two ports (a CA dials one port).
//!
//! Which node validates is made certain, not left to chance: the test
//! holds the certificate's order lock itself before the nodes start, reads
//! the line of nodes behind it in etcd, points the domains (Pebble's DNS)
//! at a node that is NOT next in line, and only then lets go.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::client::admin;
use e2e::cluster::{cluster_table, node_ip, node_name, start_nodes_on};
use e2e::etcd::{etcd_or_skip, EtcdCluster};
use e2e::pebble::{pebble_or_skip, Pebble, PebbleOptions};
use e2e::proxy::Proxy;
use e2e::upstream::Upstream;
use rustls::pki_types::ServerName;
use rustls::RootCertStore;

const TOKEN: &str = "cluster-certs-token-0123456789";
const SECRET: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const HOSTS: [&str; 2] = ["a.test", "www.a.test"];
const NODES: usize = 3;

fn template(etcd: &EtcdCluster, pebble: &Pebble, app: &Upstream, challenge: &str) -> String {
    format!(
        r#"
[server]
http = "{{http}}"
https = "{{https}}"
admin = "{{admin}}"
state_dir = "{{state}}"
admin_token = "{TOKEN}"
threads = 1

[acme]
email = "ops@duotone.test"
directory = "{directory}"
challenge = "{challenge}"
ca_roots = "{ca_roots}"

[[sites]]
hosts = ["a.test", "www.a.test"]
tls = "acme"
  [[sites.routes]]
  path = "/"
  service = "app"

[services.app]
colors.blue = ["{app}"]

{cluster}
"#,
        directory = pebble.directory_url(),
        ca_roots = pebble.ca_bundle().display(),
        app = app.member(),
        cluster = cluster_table(etcd, &format!("secret_key = \"{SECRET}\"")),
    )
}

/// Two ports free on every node's address.
fn shared_ports() -> (u16, u16) {
    let free_everywhere =
        |p: u16| (0..NODES).all(|i| std::net::TcpListener::bind((node_ip(i), p)).is_ok());
    loop {
        let (a, b) = (e2e::free_port_at(node_ip(0)), e2e::free_port_at(node_ip(0)));
        if a != b && free_everywhere(a) && free_everywhere(b) {
            return (a, b);
        }
    }
}

/// The leaf a node serves for `host`, verified against Pebble's root.
async fn served_leaf(addr: SocketAddr, host: &str, roots: &RootCertStore) -> Option<Vec<u8>> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let work = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let name = ServerName::try_from(host.to_string()).ok()?;
        let tls = connector.connect(name, tcp).await.ok()?;
        let leaf = tls.get_ref().1.peer_certificates()?.first()?.to_vec();
        Some(leaf)
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .ok()
        .flatten()
}

/// Waits until every node serves a verified certificate for every host,
/// other than `old`; returns it (the same on every node and host).
async fn all_serve(nodes: &[Proxy], roots: &RootCertStore, old: Option<&[u8]>) -> Vec<u8> {
    let mut leaf = None;
    for p in nodes {
        for host in HOSTS {
            let got = e2e::eventually(Duration::from_secs(30), || async move {
                served_leaf(p.ports.https, host, roots)
                    .await
                    .filter(|l| Some(l.as_slice()) != old)
            })
            .await
            .unwrap_or_else(|| {
                panic!("{} does not serve {host}; log:\n{}", p.ports.https, p.log())
            });
            match &leaf {
                None => leaf = Some(got),
                Some(l) => assert_eq!(*l, got, "one certificate on every node and host"),
            }
        }
    }
    leaf.unwrap_or_default()
}

async fn metric(p: &Proxy, series: &str) -> Option<f64> {
    let m = admin("GET", &p.admin_url("/metrics"), Some(TOKEN), None)
        .await
        .ok()?
        .text();
    m.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The `at_ms=` fields of the log lines containing `needle`.
fn at_ms(log: &str, needle: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.split("at_ms=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The values under the order lock's prefix, oldest first.
fn lock_line(etcd: &EtcdCluster, prefix: &str) -> Vec<String> {
    let out = etcd
        .etcdctl(&[
            "get",
            prefix,
            "--prefix",
            "--sort-by=CREATE",
            "--order=ASCEND",
            "--print-value-only",
        ])
        .unwrap_or_default();
    String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

struct Bed {
    etcd: EtcdCluster,
    pebble: Pebble,
    nodes: Vec<Proxy>,
    roots: RootCertStore,
    /// The node next in line when the test let go of the lock.
    orderer: usize,
    /// The node Pebble's DNS sends validations to.
    validator: usize,
    _app: Upstream,
}

/// etcd, Pebble, three nodes started at once; the first order placed by a
/// known node and validated on another.
///
/// With `dead_holder`, the test's lock is left to expire, as a node that
/// died holding it would (its lease has the nodes' 6 s time to live and is
/// never kept alive); returns the take-over time too.
async fn bed(challenge: &str, validity_secs: Option<u64>, dead_holder: bool) -> (Bed, Option<u64>) {
    let etcd = EtcdCluster::start(3).await.expect("etcd");
    let app = Upstream::start("app").await;
    let (http, https) = shared_ports();
    let pebble = Pebble::start_new(PebbleOptions {
        http_port: http,
        tls_port: https,
        validity_secs,
    })
    .await
    .expect("pebble");
    let roots = pebble.root_store().expect("pebble root");
    let domains: Vec<String> = HOSTS.iter().map(|h| h.to_string()).collect();
    let id = acme::shared::cert_id(&domains, &pebble.directory_url());
    let prefix = format!("/duotone/acme/locks/{id}/");
    // The test takes the order lock first (the oldest key wins).
    let ttl = if dead_holder { "6" } else { "60" };
    let granted = etcd.etcdctl(&["lease", "grant", ttl]).expect("lease grant");
    let granted_ms = now_ms();
    let granted = String::from_utf8_lossy(&granted).to_string();
    let lease = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    etcd.etcdctl(&[
        "put",
        &format!("--lease={lease}"),
        &format!("{prefix}{lease}"),
        "test",
    ])
    .expect("test's lock key");

    let t = template(&etcd, &pebble, &app, challenge);
    let nodes = start_nodes_on(NODES, (http, https), &t, &[]).await;
    let line = e2e::eventually(Duration::from_secs(15), || {
        let line = lock_line(&etcd, &prefix);
        async move { (line.len() == NODES + 1).then_some(line) }
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "nodes did not queue for the lock: {:?}",
            lock_line(&etcd, &prefix)
        )
    });
    assert_eq!(line[0], "test");
    let orderer = (0..NODES)
        .find(|i| node_name(*i) == line[1])
        .expect("a node is next in line");
    let validator = (orderer + 1) % NODES;
    for host in HOSTS {
        pebble
            .add_a(host, &node_ip(validator).to_string())
            .expect("A record");
    }
    let mut takeover = None;
    if dead_holder {
        let log = || nodes[orderer].log();
        let held = e2e::eventually(Duration::from_secs(15), || {
            let held = at_ms(&log(), "holding the order lock");
            async move { held.first().copied() }
        })
        .await
        .expect("the next node took over the dead holder's lock");
        let took = held.saturating_sub(granted_ms);
        eprintln!(
            "lock take-over after a dead holder: {took} ms after its lease was granted (TTL 6 s)"
        );
        assert!((4_000..10_000).contains(&took), "{took} ms");
        takeover = Some(took);
    } else {
        etcd.etcdctl(&["lease", "revoke", &lease]).expect("let go");
    }
    let bed = Bed {
        etcd,
        pebble,
        nodes,
        roots,
        orderer,
        validator,
        _app: app,
    };
    (bed, takeover)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The checks of a first issuance: one order, by the known node, validated
/// on another, served everywhere; returns the leaf and the pick-up time.
async fn check_first_issuance(b: &Bed, answered: &str) -> (Vec<u8>, u64) {
    let leaf = all_serve(&b.nodes, &b.roots, None).await;
    assert_eq!(
        b.pebble.orders(),
        1,
        "one order for the cluster\n{}",
        b.pebble.log()
    );
    let placed: Vec<usize> = (0..NODES)
        .filter(|i| b.nodes[*i].log().contains("placed an ACME order"))
        .collect();
    assert_eq!(placed, vec![b.orderer], "the node next in line ordered");
    assert_ne!(b.orderer, b.validator);
    assert!(
        b.nodes[b.validator].log().contains(answered),
        "the validation reached {} (not the orderer); log:\n{}",
        node_name(b.validator),
        b.nodes[b.validator].log()
    );
    assert!(!b.nodes[b.orderer].log().contains(answered));
    for line in b.nodes[b.validator]
        .log()
        .lines()
        .filter(|l| l.contains(answered))
    {
        eprintln!("{}: {line}", node_name(b.validator));
    }
    eprintln!(
        "orderer {}, validator {}",
        node_name(b.orderer),
        node_name(b.validator)
    );
    for (i, p) in b.nodes.iter().enumerate() {
        let orders = e2e::eventually(Duration::from_secs(5), || async move {
            metric(p, "duotone_acme_cluster_orders_total").await
        })
        .await;
        assert_eq!(orders, Some(if i == b.orderer { 1.0 } else { 0.0 }));
    }
    // From the orderer's store to the last node serving it.
    let stored = at_ms(&b.nodes[b.orderer].log(), "stored the new certificate")[0];
    let pickup = (0..NODES)
        .filter(|i| *i != b.orderer)
        .map(|i| {
            *at_ms(&b.nodes[i].log(), "serving shared ACME certificate")
                .last()
                .expect("picked up")
        })
        .max()
        .unwrap_or(stored)
        .saturating_sub(stored);
    eprintln!("issuance (store in etcd) → every node serving: {pickup} ms");
    assert!(pickup < 5_000, "{pickup} ms");

    // Nothing private in clear in etcd: no PEM key, no key bytes.
    let cache = std::fs::read_dir(b.nodes[b.orderer].dir.path().join("state/acme"))
        .expect("cache dir")
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("cached_cert_"))
        .expect("cached certificate");
    let pem = std::fs::read(cache.path()).expect("read cache");
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .expect("pem")
        .expect("key");
    let der = key.secret_der();
    let at = der
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("ECPrivateKey scalar");
    let scalar = &der[at + 5..at + 37];
    let dump = b.etcd.dump("/duotone/").expect("dump");
    assert!(
        dump.iter().any(|(k, _)| k.contains("/acme/certs/")),
        "{dump:?}"
    );
    assert!(dump.iter().any(|(k, _)| k.contains("/acme/account/")));
    for (k, v) in &dump {
        assert!(!String::from_utf8_lossy(v).contains("PRIVATE KEY"), "{k}");
        assert!(
            !v.windows(16).any(|w| w == &scalar[..16]),
            "{k} holds key bytes"
        );
    }
    (leaf, pickup)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_one_order_validated_elsewhere_then_etcd_down() {
    if !etcd_or_skip("http01_one_order_validated_elsewhere_then_etcd_down")
        || !pebble_or_skip("http01_one_order_validated_elsewhere_then_etcd_down")
    {
        return;
    }
    let (mut b, _) = bed("http-01", None, false).await;
    let (leaf, _) = check_first_issuance(&b, "answered HTTP-01 validation").await;

    // etcd down: every node keeps serving; the metric says so.
    for i in 0..3 {
        b.etcd.kill_member(i);
    }
    for p in &b.nodes {
        let down = e2e::eventually(Duration::from_secs(30), || async move {
            (metric(p, "duotone_acme_cluster_store_down").await == Some(1.0)).then_some(())
        })
        .await;
        assert!(down.is_some(), "store_down never 1; log:\n{}", p.log());
        for host in HOSTS {
            assert_eq!(
                served_leaf(p.ports.https, host, &b.roots).await,
                Some(leaf.clone())
            );
        }
    }
    // A node restarted while etcd is down serves from its local cache.
    let restarted = Instant::now();
    let n = &mut b.nodes[b.validator];
    n.kill();
    n.spawn().await;
    for host in HOSTS {
        assert_eq!(
            served_leaf(n.ports.https, host, &b.roots).await,
            Some(leaf.clone()),
            "restarted node; log:\n{}",
            n.log()
        );
    }
    eprintln!(
        "restart with etcd down, serving from cache after {:?}",
        restarted.elapsed()
    );

    // etcd back: every node's watch resyncs, nothing is ordered again.
    for i in 0..3 {
        b.etcd.start_member(i).expect("etcd member");
    }
    b.etcd
        .wait_healthy(Duration::from_secs(30))
        .await
        .expect("etcd back");
    let back = Instant::now();
    for p in &b.nodes {
        let up = e2e::eventually(Duration::from_secs(30), || async move {
            (metric(p, "duotone_acme_cluster_store_down").await == Some(0.0)).then_some(())
        })
        .await;
        assert!(up.is_some(), "store_down stays 1; log:\n{}", p.log());
    }
    eprintln!(
        "etcd back → every node's store up again after {:?}",
        back.elapsed()
    );
    assert_eq!(b.pebble.orders(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_one_order_validated_elsewhere_then_one_renewal() {
    if !etcd_or_skip("tls_alpn01_one_order_validated_elsewhere_then_one_renewal")
        || !pebble_or_skip("tls_alpn01_one_order_validated_elsewhere_then_one_renewal")
    {
        return;
    }
    // The first holder of the lock dies (its lease runs out, 6 s); the
    // next node in line orders. Certificates live 24 s: renewal is due 16 s
    // after issuance.
    let (b, takeover) = bed("tls-alpn-01", Some(24), true).await;
    assert!(takeover.is_some());
    let (first, _) = check_first_issuance(&b, "answered TLS-ALPN-01 validation").await;

    // Renewal: exactly one more order for the cluster, every node serves it.
    let renewed = all_serve(&b.nodes, &b.roots, Some(&first)).await;
    assert_ne!(renewed, first);
    assert_eq!(
        b.pebble.orders(),
        2,
        "one renewal order\n{}",
        b.pebble.log()
    );
    let placed: usize = b
        .nodes
        .iter()
        .map(|p| p.log().matches("placed an ACME order").count())
        .sum();
    assert_eq!(placed, 2);
    for p in &b.nodes {
        for l in p.log().lines().filter(|l| {
            l.contains("placed an ACME order")
                || l.contains("nothing to order")
                || l.contains("holding the order lock")
        }) {
            eprintln!("{l}");
        }
    }
}
