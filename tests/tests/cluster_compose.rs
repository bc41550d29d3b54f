//! deploy/cluster/ run for real (README "Several edge nodes"): the compose
//! file as shipped, with its duotone.toml, brings up three etcd members and
//! three Duotone nodes on a real Docker engine; the test app
//! (tests/apps/container) serves both colors on the shared sockets volume.
//! `duotone status` on node 1 lists the 3 nodes, a flip sent to node 2 is
//! live on nodes 1 and 3, and with one etcd member stopped a flip still
//! reaches every node.
//!
//! No registry: the nodes run the runtime image made by `deploy/image.sh
//! build` from the host's binary, etcd the image `deploy/image.sh etcd` makes
//! from the host's `/usr/bin/etcd` (Debian's etcd-server), both on the local
//! base `duotone-base:bookworm` (made once, kept by tag). Host ports come
//! from the compose file's DUOTONE_EDGEn_HTTP / DUOTONE_EDGEn_ADMIN, the
//! sockets volume from DUOTONE_SOCKETS_VOLUME, so runs never clash.
//!
//! Skipped, with one line saying so, when `docker info` fails, unless
//! `DUOTONE_REQUIRE_DOCKER=1`, or without etcd on PATH, unless
//! `DUOTONE_REQUIRE_ETCD=1`.
//!
//! Run: `cargo build -p duotone && cargo test -p duotone-e2e --test cluster_compose`.

use e2e::client::{admin, Http};
use e2e::docker::{
    docker, engine_or_skip, image_sh, inspect, logs, ok, repo, run, text, unique, Container,
    Engine, Volume,
};
use e2e::eventually;
use e2e::proxy::duotone_bin;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "cluster-compose-token-0123456789abcdef";
const IMAGE: &str = "duotone-e2e:cluster";
const ETCD_IMAGE: &str = "duotone-e2e-etcd:test";
const APP_IMAGE: &str = "duotone-e2e-app:test";
const NODES: [&str; 3] = ["edge-1", "edge-2", "edge-3"];

/// The node images from the host's binary and etcd, and the test app.
fn images() {
    let t = Instant::now();
    let bin = duotone_bin();
    image_sh(&["build", bin.to_str().expect("utf-8 path"), IMAGE]);
    let etcd = std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("etcd"))
                .find(|p| p.is_file())
        })
        .expect("etcd on PATH");
    image_sh(&["etcd", ETCD_IMAGE, etcd.to_str().expect("utf-8 path")]);
    image_sh(&["app", APP_IMAGE]);
    eprintln!("images built in {:.1}s", t.elapsed().as_secs_f64());
}

/// deploy/cluster/docker-compose.yml as one compose project with a unique
/// name, free host ports and its own sockets volume, plus the app's two
/// colors; everything (volumes too) is removed on drop.
struct Cluster {
    engine: Engine,
    project: String,
    file: PathBuf,
    env: Vec<(String, String)>,
    http: [u16; 3],
    admin: [u16; 3],
    apps: Vec<Container>,
    sockets: Option<Volume>,
}

impl Cluster {
    fn new(engine: Engine) -> Cluster {
        let project = unique("k");
        let sockets = format!("{project}-sockets");
        // As deploy/docker-compose.yml's setup: a tmpfs every user can
        // write, so the app (root) binds and the nodes (uid 10001) connect.
        ok(&mut docker(&[
            "volume",
            "create",
            "--driver",
            "local",
            "--opt",
            "type=tmpfs",
            "--opt",
            "device=tmpfs",
            "--opt",
            "o=mode=1777",
            &sockets,
        ]));
        let http = [0; 3].map(|_| e2e::free_port());
        let admin = [0; 3].map(|_| e2e::free_port());
        let mut env = vec![
            ("DUOTONE_IMAGE".to_string(), IMAGE.to_string()),
            ("ETCD_IMAGE".to_string(), ETCD_IMAGE.to_string()),
            ("DUOTONE_ADMIN_TOKEN".to_string(), TOKEN.to_string()),
            ("DUOTONE_SOCKETS_VOLUME".to_string(), sockets.clone()),
        ];
        for i in 0..3 {
            env.push((format!("DUOTONE_EDGE{}_HTTP", i + 1), http[i].to_string()));
            env.push((format!("DUOTONE_EDGE{}_ADMIN", i + 1), admin[i].to_string()));
        }
        Cluster {
            engine,
            project,
            file: repo().join("deploy/cluster/docker-compose.yml"),
            env,
            http,
            admin,
            apps: Vec::new(),
            sockets: Some(Volume(sockets)),
        }
    }

    /// `compose -f FILE -p PROJECT ARGS…` with the cluster's environment.
    fn compose(&self, args: &[&str]) -> Command {
        let file = self.file.to_str().expect("utf-8 path");
        let mut c = self.engine.compose(&["-f", file, "-p", &self.project]);
        c.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// The container of a compose service.
    fn container(&self, service: &str) -> String {
        ok(&mut self.compose(&["ps", "-q", service]))
            .trim()
            .to_string()
    }

    /// One color of the test app, as deploy/docker-compose.yml runs it:
    /// gunicorn on unix:/run/app/COLOR.sock in the sockets volume.
    fn start_app(&mut self, color: &str) {
        let name = format!("{}-{color}", self.project);
        let volume = self
            .sockets
            .as_ref()
            .map(|v| v.0.clone())
            .unwrap_or_default();
        ok(&mut docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "-v",
            &format!("{volume}:/run/app"),
            "-e",
            &format!("COLOR={color}"),
            "-w",
            "/app",
            APP_IMAGE,
            "gunicorn",
            "config.wsgi:application",
            "--bind",
            &format!("unix:/run/app/{color}.sock"),
            "--workers",
            "1",
        ]));
        self.apps.push(Container(name));
    }

    fn admin_url(&self, node: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin[node])
    }

    fn http_url(&self, node: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http[node])
    }

    /// An admin API call on `node` (0-based); `None` when it cannot connect.
    async fn call(
        &self,
        node: usize,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Option<(u16, Value)> {
        let r = admin(method, &self.admin_url(node, path), Some(TOKEN), body)
            .await
            .ok()?;
        let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        Some((r.status, v))
    }

    /// The live color of `api` on `node`.
    async fn live(&self, node: usize) -> String {
        match self.call(node, "GET", "/v1/services/api", None).await {
            Some((200, v)) => v["live"].as_str().unwrap_or("").to_string(),
            other => panic!("GET /v1/services/api on {}: {other:?}", NODES[node]),
        }
    }

    /// What `node` answers on GET /color through its http port.
    async fn serves(&self, node: usize) -> Option<String> {
        let r = Http::new().get(&self.http_url(node, "/color")).await.ok()?;
        (r.status == 200).then(|| r.text())
    }

    /// A flip sent to `node`; panics unless it is applied on all 3 nodes.
    async fn flip(&self, node: usize, to: &str) -> Value {
        let body = format!(r#"{{"to":"{to}"}}"#);
        let r = self
            .call(node, "POST", "/v1/services/api/flip", Some(&body))
            .await;
        let Some((200, v)) = r else {
            panic!("flip to {to} on {}: {r:?}\n{}", NODES[node], self.logs());
        };
        let mut applied: Vec<&str> = v["cluster"]["applied"]
            .as_array()
            .map(|a| a.iter().filter_map(|n| n.as_str()).collect())
            .unwrap_or_default();
        applied.sort();
        assert_eq!(applied, NODES, "not applied everywhere: {v:#}");
        assert_eq!(v["cluster"]["pending"], serde_json::json!([]), "{v:#}");
        v
    }

    /// How many of the nodes hold an etcd client connection to `member`
    /// (established TCP connections to its port 2379 from a node's address,
    /// read from the member's /proc/net/tcp).
    fn clients_of(&self, member: &str) -> usize {
        let nodes: Vec<std::net::Ipv4Addr> = NODES
            .iter()
            .filter_map(|n| {
                let ips = inspect(
                    &self.container(n),
                    "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                );
                ips.split_whitespace().find_map(|ip| ip.parse().ok())
            })
            .collect();
        // etcd's 0.0.0.0 listener is a dual-stack socket: its connections
        // are in tcp6 with IPv4-mapped addresses.
        let table = ok(&mut docker(&[
            "exec",
            &self.container(member),
            "cat",
            "/proc/net/tcp",
            "/proc/net/tcp6",
        ]));
        let hex_ip = |s: &str| {
            let (ip, port) = s.split_once(':')?;
            let ip = match ip.len() {
                8 => ip,
                32 => ip.strip_prefix("0000000000000000FFFF0000")?,
                _ => return None,
            };
            let ip = u32::from_str_radix(ip, 16).ok()?.to_le_bytes();
            Some((
                std::net::Ipv4Addr::from(ip),
                u16::from_str_radix(port, 16).ok()?,
            ))
        };
        let mut peers: Vec<std::net::Ipv4Addr> = table
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let (local, remote, state) = (hex_ip(f.get(1)?)?, hex_ip(f.get(2)?)?, *f.get(3)?);
                // 01: ESTABLISHED.
                (state == "01" && local.1 == 2379 && nodes.contains(&remote.0)).then_some(remote.0)
            })
            .collect();
        peers.sort();
        peers.dedup();
        peers.len()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for s in ["edge-1", "edge-2", "edge-3", "etcd-1", "etcd-2", "etcd-3"] {
            let c = self.container(s);
            out.push_str(&format!("--- {s}:\n{}\n", logs(&c, 30)));
        }
        out
    }

    /// `compose down -v`: every container and the project's volumes.
    fn down(&self) -> std::process::Output {
        run(&mut self.compose(&["down", "-v", "--remove-orphans", "-t", "5"]))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.down();
        // The apps before their volume.
        self.apps.clear();
        self.sockets.take();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_compose_example_flips_on_every_node() {
    let Some(engine) = engine_or_skip("cluster_compose_example_flips_on_every_node") else {
        return;
    };
    // The etcd image is the host's etcd binary in the local base image.
    if !e2e::etcd::etcd_or_skip("cluster_compose_example_flips_on_every_node") {
        return;
    }
    let t0 = Instant::now();
    images();
    let mut c = Cluster::new(engine);
    c.start_app("blue");
    c.start_app("green");

    let t_up = Instant::now();
    ok(&mut c.compose(&["up", "-d"]));
    // Every node answers /healthz on its published admin port.
    for (i, node) in NODES.iter().enumerate() {
        let url = c.admin_url(i, "/healthz");
        let up = eventually(Duration::from_secs(60), || {
            let url = url.clone();
            async move {
                let r = Http::new().get(&url).await.ok()?;
                (r.status == 200).then_some(())
            }
        })
        .await;
        assert!(up.is_some(), "{} never answered {url}:\n{}", node, c.logs());
    }
    // … and serves the live color (blue, the config's) through its http
    // port, once its health checks found the app.
    for (i, node) in NODES.iter().enumerate() {
        let blue = eventually(Duration::from_secs(30), || async {
            (c.serves(i).await.as_deref() == Some("blue")).then_some(())
        })
        .await;
        assert!(
            blue.is_some(),
            "{} does not serve blue:\n{}",
            node,
            c.logs()
        );
    }
    eprintln!(
        "compose up to 3 nodes serving: {:.1}s",
        t_up.elapsed().as_secs_f64()
    );

    // `duotone status` through node 1's admin API lists the three nodes
    // (each reports under a lease; wait until all three have).
    let status = || {
        run(Command::new(duotone_bin())
            .args(["status", "--admin", &c.admin_url(0, "")])
            .env("DUOTONE_ADMIN_TOKEN", TOKEN))
    };
    let listed = eventually(Duration::from_secs(20), || async {
        let out = status();
        let stdout = text(&out.stdout);
        (out.status.success() && NODES.iter().all(|n| stdout.contains(&format!("node {n}"))))
            .then_some(stdout)
    })
    .await;
    let Some(listed) = listed else {
        let out = status();
        panic!(
            "status on edge-1 does not list 3 nodes:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    };
    assert!(listed.contains("connected"), "{listed}");

    // A flip sent to node 2 is live on nodes 1 and 3 when it answers.
    let t = Instant::now();
    let v = c.flip(1, "green").await;
    let took = t.elapsed();
    for i in [0, 2] {
        assert_eq!(c.live(i).await, "green", "{}", NODES[i]);
        assert_eq!(c.serves(i).await.as_deref(), Some("green"), "{}", NODES[i]);
    }
    eprintln!(
        "flip on edge-2 applied on 3 nodes in {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    // The nodes' reports (what `duotone status` prints) catch up with it.
    let revision = v["cluster"]["revision"].as_u64().expect("revision");
    let reported = eventually(Duration::from_secs(10), || async {
        let (_, v) = c.call(0, "GET", "/v1/cluster", None).await?;
        let nodes = v["nodes"].as_array()?;
        (nodes.len() == 3
            && nodes
                .iter()
                .all(|n| n["applied"].as_u64().is_some_and(|a| a >= revision)))
        .then_some(())
    })
    .await;
    assert!(
        reported.is_some(),
        "reports never reached revision {revision}: {:?}",
        c.call(0, "GET", "/v1/cluster", None).await
    );

    // One etcd member stopped, the one most nodes talk to (each node uses
    // one member at a time): a flip (here on node 3) still reaches every
    // node, once the nodes that used that member moved to another one.
    let (users, member) = ["etcd-1", "etcd-2", "etcd-3"]
        .map(|m| (c.clients_of(m), m))
        .into_iter()
        .max()
        .expect("3 members");
    assert!(users > 0, "no node connected to any etcd member?");
    ok(&mut docker(&["stop", "-t", "5", &c.container(member)]));
    eprintln!("stopped {member}, which {users} of the 3 nodes were using");
    let t = Instant::now();
    let body = r#"{"to":"blue"}"#;
    let refused = std::sync::Mutex::new(Vec::new());
    let flipped = eventually(Duration::from_secs(30), || async {
        match c.call(2, "POST", "/v1/services/api/flip", Some(body)).await {
            Some((200, v)) => Some(v),
            other => {
                if let Ok(mut r) = refused.lock() {
                    if r.len() < 5 {
                        r.push(format!("{other:?}"));
                    }
                }
                // At most a few refused calls a second.
                tokio::time::sleep(Duration::from_millis(200)).await;
                None
            }
        }
    })
    .await;
    let refused = refused.into_inner().unwrap_or_default();
    let Some(v) = flipped else {
        panic!("no flip with {member} stopped: {refused:?}\n{}", c.logs());
    };
    eprintln!(
        "{member} stopped: flip on edge-3 accepted after {:.1}s (refused before: {refused:?}), cluster: {}",
        t.elapsed().as_secs_f64(),
        v["cluster"]
    );
    // The answer may name a node still moving to another member as
    // pending; every node serves blue within apply_timeout regardless.
    for (i, node) in NODES.iter().enumerate() {
        let blue = eventually(Duration::from_secs(10), || async {
            (c.live(i).await == "blue" && c.serves(i).await.as_deref() == Some("blue"))
                .then_some(())
        })
        .await;
        assert!(blue.is_some(), "{} not on blue after {v:#}", node);
    }
    // And once every node is back on the remaining members, a flip is
    // applied on all three again before it answers.
    let all = eventually(Duration::from_secs(20), || async {
        let (_, v) = c.call(0, "GET", "/v1/cluster", None).await?;
        let nodes = v["nodes"].as_array()?;
        (nodes.len() == 3 && nodes.iter().all(|n| n["connected"] == true)).then_some(())
    })
    .await;
    assert!(
        all.is_some(),
        "nodes not all connected again:\n{}",
        c.logs()
    );
    c.flip(0, "green").await;
    for (i, node) in NODES.iter().enumerate() {
        assert_eq!(c.serves(i).await.as_deref(), Some("green"), "{}", node);
    }

    // No node needed `restart: unless-stopped`: they started before etcd
    // had a leader and waited for it.
    for node in NODES {
        let restarts = inspect(&c.container(node), "{{.RestartCount}}");
        assert_eq!(restarts, "0", "{node} restarted:\n{}", c.logs());
    }

    // Tear down: no container and no volume of the project is left.
    let out = c.down();
    assert!(out.status.success(), "down: {}", text(&out.stderr));
    let left = ok(&mut docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("name={}_", c.project),
    ]));
    assert_eq!(left.trim(), "", "volumes left after down -v");
    drop(c);
    eprintln!(
        "cluster compose test took {:.0}s",
        t0.elapsed().as_secs_f64()
    );
}
