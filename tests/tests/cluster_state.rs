//! Several edge nodes sharing their deploy state through a real 3-member
//! etcd (#23): a flip on one node reaches every node under load, without a
//! failed request; changes keep working with one etcd member down; without
//! quorum every node keeps serving and changes are refused (503); a node
//! killed during a flip catches up; `flip --drain` waits for the old
//! color's requests on other nodes; `duotone status` lists the nodes.

use e2e::admin::{call, call_ok, cli};
use e2e::bluegreen::summary_ms;
use e2e::client::Http;
use e2e::cluster::{cluster_table, start_nodes};
use e2e::etcd::{etcd_or_skip, EtcdCluster};
use e2e::load::Load;
use e2e::proxy::{server_config, Proxy};
use e2e::upstream::Upstream;
use serde_json::Value;
use std::time::{Duration, Instant};

const TOKEN: &str = "cluster-state-test-token";

/// The tests share the machine's 2 cores: one at a time, so the figures
/// mean something.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A node's config: `[cluster]` on `etcd`, one site, service `api` with
/// colors blue and green.
fn template(etcd: &EtcdCluster, blue: &Upstream, green: &Upstream) -> String {
    format!(
        r#"{server}
{cluster}
[[sites]]
hosts = ["*"]
  [[sites.routes]]
  path = "/"
  service = "api"

[services.api]
live = "blue"
colors.blue = ["{blue}"]
colors.green = ["{green}"]
"#,
        server = server_config(TOKEN, ""),
        cluster = cluster_table(etcd, "apply_timeout = \"5s\""),
        blue = blue.member(),
        green = green.member(),
    )
}

/// Waits until `p`'s `/v1/cluster` lists `n` nodes, all connected.
async fn wait_cluster(p: &Proxy, n: usize, limit: Duration) -> Value {
    let last = std::sync::Mutex::new(Value::Null);
    let got = e2e::eventually(limit, || async {
        let r = call(p, TOKEN, "GET", "/v1/cluster", None).await;
        if r.status != 200 {
            return None;
        }
        let v = r.json();
        *last.lock().unwrap() = v.clone();
        let nodes = v["nodes"].as_array()?;
        (nodes.len() == n && nodes.iter().all(|x| x["connected"] == true)).then_some(v)
    })
    .await;
    got.unwrap_or_else(|| panic!("cluster of {n} not seen; last: {:#}", last.lock().unwrap()))
}

/// The body `p` serves on `/` now.
async fn serves(http: &Http, p: &Proxy) -> String {
    match http.get(&p.url("/")).await {
        Ok(r) if r.status == 200 => r.text(),
        Ok(r) => format!("status {}", r.status),
        Err(e) => format!("error {e:#}"),
    }
}

/// Waits until every node serves `color`; panics naming the laggards.
async fn converge(nodes: &[&Proxy], color: &str, limit: Duration) {
    let http = Http::new();
    for p in nodes {
        let ok = e2e::eventually(limit, || async {
            (serves(&http, p).await == color).then_some(())
        })
        .await;
        assert!(
            ok.is_some(),
            "node at {} does not serve {color}: {}\nlog:\n{}",
            p.ports.http,
            serves(&http, p).await,
            p.log()
        );
    }
}

/// One flip on `on` to `color` while every node is probed: returns the
/// API's answer time, each node's time until it served `color`, and the answer.
async fn timed_flip(on: &Proxy, nodes: &[&Proxy], color: &str) -> (Duration, Vec<Duration>, Value) {
    let t0 = Instant::now();
    let probes: Vec<_> = nodes
        .iter()
        .map(|p| {
            let (url, color) = (p.url("/"), color.to_string());
            tokio::spawn(async move {
                let http = Http::new();
                loop {
                    if let Ok(r) = http.get(&url).await {
                        if r.status == 200 && r.text() == color {
                            return t0.elapsed();
                        }
                    }
                    if t0.elapsed() > Duration::from_secs(10) {
                        return Duration::MAX;
                    }
                }
            })
        })
        .collect();
    let body = format!(r#"{{"to":"{color}"}}"#);
    let r = call(on, TOKEN, "POST", "/v1/services/api/flip", Some(&body)).await;
    let answered = t0.elapsed();
    assert_eq!(r.status, 200, "flip: {}", r.text());
    let mut seen = Vec::new();
    for p in probes {
        let d = p.await.unwrap();
        assert!(d != Duration::MAX, "a node never served {color}");
        seen.push(d);
    }
    (answered, seen, r.json())
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics(p: &Proxy) -> String {
    call(p, TOKEN, "GET", "/metrics", None).await.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_state_flips_everywhere_and_survives_faults() {
    if !etcd_or_skip("shared_state_flips_everywhere_and_survives_faults") {
        return;
    }
    let _one = SERIAL.lock().await;
    let started = Instant::now();
    let mut etcd = EtcdCluster::start(3).await.expect("etcd");
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let t = template(&etcd, &blue, &green);
    let mut nodes = start_nodes(3, &t, &[]).await;
    wait_cluster(&nodes[0], 3, Duration::from_secs(15)).await;

    // (1) Flips on node 1 under load reach nodes 2 and 3; no request fails.
    let loads: Vec<_> = nodes.iter().map(|p| Load::start(&p.url("/"), 2)).collect();
    let (mut answers, mut node_times, mut spreads) = (Vec::new(), Vec::new(), Vec::new());
    for (i, color) in ["green", "blue", "green", "blue", "green"]
        .iter()
        .enumerate()
    {
        let refs: Vec<&Proxy> = nodes.iter().collect();
        let (answered, seen, v) = timed_flip(&nodes[i % 3], &refs, color).await;
        assert_eq!(v["live"], *color, "{v:#}");
        let c = &v["cluster"];
        assert_eq!(c["pending"], serde_json::json!([]), "{v:#}");
        assert_eq!(c["applied"].as_array().map(Vec::len), Some(3), "{v:#}");
        let first = *seen.iter().min().unwrap();
        let last = *seen.iter().max().unwrap();
        answers.push(answered);
        spreads.push(last - first);
        node_times.extend(seen);
    }
    // Three changes at once on three nodes: compare-and-swap, re-read and
    // retry; each is made, one after the other, and every node ends equal.
    let at_once: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let url = p.admin_url("/v1/services/api/weights");
            let body = format!(r#"{{"blue":{},"green":{}}}"#, 10 + i, 90 - i);
            tokio::spawn(
                async move { e2e::client::admin("PUT", &url, Some(TOKEN), Some(&body)).await },
            )
        })
        .collect();
    for h in at_once {
        let r = h.await.unwrap().expect("weights answered");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let views: Vec<Value> = futures_util::future::join_all(
        nodes
            .iter()
            .map(|p| call_ok(p, TOKEN, "GET", "/v1/services/api", None)),
    )
    .await;
    assert!(
        views.iter().all(|v| v["weights"] == views[0]["weights"]),
        "{views:#?}"
    );
    for (p, l) in nodes.iter().zip(&loads) {
        let c = l.finish().await;
        assert_eq!(c.failed, 0, "node {}: {:?}", p.ports.http, c.samples);
        assert!(c.ok > 20, "{c:?}");
    }
    let (a0, a1, a2) = summary_ms(&answers);
    let (n0, n1, n2) = summary_ms(&node_times);
    let (s0, s1, s2) = summary_ms(&spreads);
    eprintln!(
        "FIGURES flip under load, 3 nodes, 5 flips: node serves the new color {n0:.1}/{n1:.1}/{n2:.1} ms \
         (min/median/max); spread first->last node {s0:.1}/{s1:.1}/{s2:.1} ms; \
         flip API answer {a0:.1}/{a1:.1}/{a2:.1} ms"
    );

    // One etcd member down: flips and weights still work everywhere.
    etcd.kill_member(0);
    etcd.wait_healthy(Duration::from_secs(10))
        .await
        .expect("2 of 3");
    let v = call_ok(
        &nodes[1],
        TOKEN,
        "POST",
        "/v1/services/api/flip",
        Some(r#"{"to":"blue"}"#),
    )
    .await;
    assert_eq!(v["cluster"]["pending"], serde_json::json!([]), "{v:#}");
    converge(
        &nodes.iter().collect::<Vec<_>>(),
        "blue",
        Duration::from_secs(5),
    )
    .await;
    let v = call_ok(
        &nodes[2],
        TOKEN,
        "PUT",
        "/v1/services/api/weights",
        Some(r#"{"blue":100,"green":0}"#),
    )
    .await;
    assert_eq!(v["weights"]["blue"], 100, "{v:#}");
    for p in &nodes {
        let ok = e2e::eventually(Duration::from_secs(5), || async {
            let s = call_ok(p, TOKEN, "GET", "/v1/services/api", None).await;
            (s["weights"]["blue"] == 100).then_some(())
        })
        .await;
        assert!(ok.is_some(), "weights did not reach {}", p.ports.admin);
    }
    eprintln!("FIGURES one etcd member down: flip and weights applied on all 3 nodes");
    etcd.start_member(0).expect("m0 back");
    etcd.wait_healthy(Duration::from_secs(15))
        .await
        .expect("3 of 3");

    // (2) Quorum lost: traffic flows, changes are refused, a node restarts
    // from its cache; quorum back: changes work and every node converges.
    let loads: Vec<_> = nodes.iter().map(|p| Load::start(&p.url("/"), 2)).collect();
    // Members 0 and 2 go: the nodes moved to member 1 when member 0 died
    // above, so they stay connected to a member that has lost its quorum.
    etcd.kill_member(0);
    etcd.kill_member(2);
    let t0 = Instant::now();
    let r = call(
        &nodes[0],
        TOKEN,
        "POST",
        "/v1/services/api/flip",
        Some(r#"{"to":"green"}"#),
    )
    .await;
    let refused_in = t0.elapsed();
    assert_eq!(r.status, 503, "{}", r.text());
    let why = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(
        why.starts_with("cluster unavailable:")
            && why.contains("change refused (nodes keep serving their last state)"),
        "{why}"
    );
    eprintln!("FIGURES quorum lost (just now): flip refused with 503 in {refused_in:?}: {why}");
    for p in &nodes {
        let ok = e2e::eventually(Duration::from_secs(15), || async {
            let m = metrics(p).await;
            (metric(&m, "duotone_cluster_connected{") == Some(0.0)).then_some(())
        })
        .await;
        assert!(
            ok.is_some(),
            "node {} still says connected:\n{}",
            p.ports.admin,
            metrics(p).await
        );
    }
    // Once the nodes know, a change is refused as fast.
    let t0 = Instant::now();
    let r = call(
        &nodes[1],
        TOKEN,
        "POST",
        "/v1/services/api/flip",
        Some(r#"{"to":"green"}"#),
    )
    .await;
    let refused_later = t0.elapsed();
    assert_eq!(r.status, 503, "{}", r.text());
    eprintln!(
        "FIGURES quorum lost, nodes disconnected: flip refused with 503 in {refused_later:?}"
    );
    let m = metrics(&nodes[0]).await;
    assert!(
        metric(&m, "duotone_cluster_changes_refused_total{").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    let log = nodes[0].log();
    let lost = log.lines().rev().find(|l| l.contains("cluster: lost etcd"));
    assert!(lost.is_some(), "{log}");
    eprintln!(
        "FIGURES quorum lost: node-1 logged: {}",
        lost.unwrap_or_default()
    );
    // A node restarted while etcd has no quorum starts from its local cache.
    nodes[2].kill();
    nodes[2].spawn().await;
    let http = Http::new();
    assert_eq!(serves(&http, &nodes[2]).await, "blue");
    let s = call_ok(&nodes[2], TOKEN, "GET", "/v1/services/api", None).await;
    assert_eq!(s["weights"]["blue"], 100, "cache lost: {s:#}");
    for (p, l) in nodes.iter().take(2).zip(&loads) {
        let c = l.finish().await;
        assert_eq!(
            c.failed, 0,
            "node {} without quorum: {:?}",
            p.ports.http, c.samples
        );
    }
    let _ = loads[2].finish().await; // node 3 was restarted on purpose
    etcd.start_member(0).expect("m0 back");
    etcd.start_member(2).expect("m2 back");
    etcd.wait_healthy(Duration::from_secs(15))
        .await
        .expect("quorum back");
    let t0 = Instant::now();
    let back = e2e::eventually(Duration::from_secs(10), || async {
        let r = call(
            &nodes[1],
            TOKEN,
            "PUT",
            "/v1/services/api/weights",
            Some(r#"{"blue":0,"green":100}"#),
        )
        .await;
        (r.status == 200).then(|| r.json())
    })
    .await
    .expect("changes work again once quorum is back");
    eprintln!(
        "FIGURES quorum back: first change accepted {:?} after etcd was healthy; cluster {}",
        t0.elapsed(),
        back["cluster"]
    );
    converge(
        &nodes.iter().collect::<Vec<_>>(),
        "green",
        Duration::from_secs(10),
    )
    .await;
    wait_cluster(&nodes[0], 3, Duration::from_secs(10)).await;

    // (3) A node killed during a flip: the others converge; restarted, it catches up.
    let flip = {
        let url = nodes[0].admin_url("/v1/services/api/flip");
        tokio::spawn(async move {
            e2e::client::admin("POST", &url, Some(TOKEN), Some(r#"{"to":"blue"}"#)).await
        })
    };
    nodes[1].kill();
    let t0 = Instant::now();
    let r = flip.await.unwrap().expect("flip answered");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    eprintln!(
        "FIGURES node killed during a flip: answered in {:?}, cluster {}",
        t0.elapsed(),
        v["cluster"]
    );
    // (A flip clears the weights: blue takes everything.)
    converge(&[&nodes[0], &nodes[2]], "blue", Duration::from_secs(5)).await;
    nodes[1].spawn().await;
    converge(&[&nodes[1]], "blue", Duration::from_secs(10)).await;
    wait_cluster(&nodes[0], 3, Duration::from_secs(10)).await;
    let s = call_ok(&nodes[1], TOKEN, "GET", "/v1/services/api", None).await;
    assert_eq!(s["live"], "blue", "{s:#}");
    eprintln!("FIGURES whole test {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_waits_for_other_nodes_and_status_lists_them() {
    if !etcd_or_skip("drain_waits_for_other_nodes_and_status_lists_them") {
        return;
    }
    let _one = SERIAL.lock().await;
    let etcd = EtcdCluster::start(3).await.expect("etcd");
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let t = template(&etcd, &blue, &green);
    let nodes = start_nodes(3, &t, &[]).await;
    wait_cluster(&nodes[0], 3, Duration::from_secs(15)).await;

    let (code, out, err) = cli(&nodes[0], TOKEN, &["status"]).await;
    assert_eq!(code, 0, "{err}");
    for n in ["node-1", "node-2", "node-3"] {
        assert!(out.contains(&format!("node {n}")), "{out}");
    }
    assert!(out.contains("connected"), "{out}");

    // A reload on node 1 makes every node re-read its own file.
    let two = t.replace(
        "[services.api]",
        &format!(
            "  [[sites.routes]]\n  path = \"/two\"\n  service = \"two\"\n\n\
             [services.two]\nlive = \"green\"\ncolors.green = [\"{}\"]\n\n[services.api]",
            green.member()
        ),
    );
    for (i, p) in nodes.iter().enumerate() {
        p.rewrite(&e2e::cluster::node_template(&two, i));
    }
    let v = call_ok(&nodes[0], TOKEN, "POST", "/v1/reload", None).await;
    assert_eq!(v["cluster"]["pending"], serde_json::json!([]), "{v:#}");
    assert_eq!(
        v["cluster"]["applied"].as_array().map(Vec::len),
        Some(3),
        "{v:#}"
    );
    let http = Http::new();
    for p in &nodes {
        let r = http.get(&p.url("/two")).await.expect("GET /two");
        assert_eq!(
            (r.status, r.text()),
            (200, "green".to_string()),
            "{}",
            p.log()
        );
    }

    // Two slow requests on blue through node 2.
    let url = nodes[1].url("/slow?ms=2500");
    let held: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Http::new().get(&url).await })
        })
        .collect();
    // Node 1 sees them in node 2's report.
    let ok = e2e::eventually(Duration::from_secs(5), || async {
        let v = call_ok(&nodes[0], TOKEN, "GET", "/v1/cluster", None).await;
        let n2 = v["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["name"] == "node-2")?
            .clone();
        (n2["in_flight"]["api"]["blue"] == 2).then_some(())
    })
    .await;
    assert!(ok.is_some(), "node-2's in-flight never reported");
    let t0 = Instant::now();
    let (code, out, err) = cli(&nodes[0], TOKEN, &["flip", "api", "green", "--drain"]).await;
    let took = t0.elapsed();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        held.iter().all(|h| h.is_finished()),
        "flip --drain returned after {took:?} while node-2 still had blue requests in flight\n{out}{err}"
    );
    for h in held {
        let r = h.await.unwrap().expect("held request");
        assert_eq!((r.status, r.text()), (200, "blue".to_string()));
    }
    eprintln!(
        "FIGURES flip --drain on node-1 waited {took:?} for node-2's 2 blue requests (2.5 s each)"
    );
    converge(
        &nodes.iter().collect::<Vec<_>>(),
        "green",
        Duration::from_secs(5),
    )
    .await;
}
