//! deploy/cluster/ stays true to the product: its config passes
//! `duotone check` with `[cluster]`, and the compose file runs three etcd
//! members and three Duotone nodes that agree with that config.

use e2e::proxy::run_cli;
use std::path::{Path, PathBuf};
use std::process::Command;

fn cluster_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("deploy/cluster")
}

fn read(name: &str) -> String {
    let p = cluster_dir().join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn cluster_config_passes_check() {
    let path = cluster_dir().join("duotone.toml");
    let path = path.to_str().expect("utf-8 path");
    let (code, out, err) = run_cli(
        &["check", "-c", path],
        &[
            ("DUOTONE_ADMIN_TOKEN", "0123456789abcdef0123456789"),
            ("DUOTONE_NODE", "edge-1"),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("ok"), "{out}");
    let toml = read("duotone.toml");
    assert!(toml.contains("[cluster]") && toml.contains("node = \"${DUOTONE_NODE}\""));
}

#[test]
fn cluster_compose_runs_three_etcd_members_and_three_nodes() {
    let yml = read("docker-compose.yml");
    let toml = read("duotone.toml");
    assert!(!yml.contains('\t'), "YAML must not contain tabs");
    // Compose v1 reads the file too: no v2-only keys.
    for v2_only in ["!reset", "!override", "include:", "develop:"] {
        assert!(!yml.contains(v2_only), "{v2_only} needs Compose v2");
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(cluster_dir().join("docker-compose.yml"))
        .output()
        .expect("python3");
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("No module named"), "not valid YAML:\n{err}");
        eprintln!("python3 with PyYAML not found: structural compose checks skipped");
        return;
    }
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let services = doc["services"].as_object().expect("services");
    // Every etcd member the config lists is a service of the file, and the
    // members know each other.
    let endpoints: Vec<&str> = toml
        .lines()
        .find(|l| l.starts_with("endpoints"))
        .expect("endpoints")
        .split('"')
        .skip(1)
        .step_by(2)
        .collect();
    assert_eq!(endpoints.len(), 3, "{endpoints:?}");
    for e in &endpoints {
        let host = e
            .trim_start_matches("http://")
            .split(':')
            .next()
            .expect("host");
        let svc = services
            .get(host)
            .unwrap_or_else(|| panic!("no service {host}"));
        let env = &svc["environment"];
        assert_eq!(env["ETCD_NAME"], host);
        assert_eq!(env["ETCD_ADVERTISE_CLIENT_URLS"], *e);
        let initial = env["ETCD_INITIAL_CLUSTER"].as_str().expect("initial");
        assert!(
            initial.contains(&format!("{host}=http://{host}:2380")),
            "{initial}"
        );
        let vols = svc["volumes"].as_array().expect("etcd data volume");
        assert!(
            vols.iter().any(|v| v
                .as_str()
                .is_some_and(|v| v.ends_with(env["ETCD_DATA_DIR"].as_str().unwrap_or("?")))),
            "{host}: data dir not on a volume"
        );
    }
    // Three nodes: distinct names, their own state volume, the shared config.
    let mut names = Vec::new();
    let mut states = Vec::new();
    for i in 1..=3 {
        let svc = &services[&format!("edge-{i}")];
        assert!(svc.is_object(), "edge-{i}");
        names.push(
            svc["environment"]["DUOTONE_NODE"]
                .as_str()
                .expect("node")
                .to_string(),
        );
        let vols: Vec<&str> = svc["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(
            vols.contains(&"./duotone.toml:/etc/duotone/duotone.toml:ro"),
            "{vols:?}"
        );
        assert!(vols.contains(&"sockets:/run/app"), "{vols:?}");
        let state = vols
            .iter()
            .find(|v| v.ends_with(":/var/lib/duotone"))
            .expect("state volume");
        states.push(state.to_string());
        assert!(svc["image"].as_str().is_some_and(|i| i.contains("duotone")));
        assert_eq!(svc["environment"]["DUOTONE_ADMIN_LISTEN"], "0.0.0.0:9090");
        let deps = svc["depends_on"].as_array().expect("depends_on");
        assert_eq!(deps.len(), 3, "edge-{i} waits for the etcd members");
    }
    names.sort();
    names.dedup();
    states.sort();
    states.dedup();
    assert_eq!((names.len(), states.len()), (3, 3), "{names:?} {states:?}");
    let declared = doc["volumes"].as_object().expect("volumes");
    for s in &states {
        let vol = s.split(':').next().expect("volume");
        assert!(declared.contains_key(vol), "{vol} not declared");
    }
    assert!(toml.contains("state_dir = \"/var/lib/duotone\""));
    assert!(toml.contains("${DUOTONE_ADMIN_LISTEN:-127.0.0.1:9090}"));
}
