//! The files under `deploy/` stay true to the product: every example config
//! passes `duotone check`, the Dockerfile, compose file and systemd unit use
//! real CLI verbs and flags and agree with the example config, and the
//! Grafana dashboard only queries metrics Duotone exports.

use e2e::client::admin;
use e2e::proxy::{run_cli, Proxy};
use e2e::upstream::Upstream;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const TOKEN: &str = "deploy-files-test-token-0123456789";

/// Metric names the dashboard may use (the product's contract).
const METRICS: &[&str] = &[
    "duotone_requests_total",
    "duotone_request_duration_seconds",
    "duotone_upstream_connect_errors_total",
    "duotone_in_flight_requests",
    "duotone_upgraded_connections",
    "duotone_live_color",
    "duotone_color_weight",
    "duotone_member_up",
    "duotone_static_bytes_total",
    "duotone_certificate_expiry_timestamp_seconds",
    "duotone_acme_renewals_total",
    "duotone_acme_failures_total",
    "duotone_config_reloads_total",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn deploy(name: &str) -> PathBuf {
    repo().join("deploy").join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// deploy/duotone.toml and deploy/examples/*.toml.
fn example_configs() -> Vec<PathBuf> {
    let mut out = vec![deploy("duotone.toml")];
    let mut more: Vec<PathBuf> = std::fs::read_dir(deploy("examples"))
        .expect("deploy/examples")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    more.sort();
    out.extend(more);
    out
}

/// Moves the absolute paths that `duotone check` touches (static roots under
/// /srv, certificate files under /etc/duotone) below `dir` and creates them:
/// files for names ending in .pem/.crt/.key, directories otherwise.
fn localize(text: &str, dir: &Path) -> String {
    let mut out = text.to_string();
    for prefix in ["/srv/", "/etc/duotone/"] {
        let to = format!("{}{prefix}", dir.display());
        out = out.replace(&format!("\"{prefix}"), &format!("\"{to}"));
    }
    let root = format!("\"{}/", dir.display());
    let mut rest = out.as_str();
    while let Some(start) = rest.find(&root) {
        let after = &rest[start + 1..];
        let end = after.find('"').expect("closing quote");
        let path = Path::new(&after[..end]);
        let is_file = path
            .extension()
            .is_some_and(|x| ["pem", "crt", "key"].iter().any(|e| x == *e));
        if is_file {
            // `duotone check` loads certificates, so write a real pair: every
            // key file gets the same key and every other file its certificate.
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            let (cert, key) = test_pair();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            std::fs::write(path, if name.contains("key") { key } else { cert }).expect("write pem");
        } else {
            std::fs::create_dir_all(path).expect("mkdir");
        }
        rest = &after[end..];
    }
    out
}

/// One self-signed certificate and key (PEM), made once per test process.
fn test_pair() -> (&'static str, &'static str) {
    static PAIR: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    let (c, k) = PAIR.get_or_init(|| {
        let ck =
            rcgen::generate_simple_self_signed(vec!["example.com".to_string()]).expect("rcgen");
        (ck.cert.pem(), ck.key_pair.serialize_pem())
    });
    (c.as_str(), k.as_str())
}

/// `grace_period` of deploy/duotone.toml in seconds.
fn grace_period_secs() -> u64 {
    let text = read(&deploy("duotone.toml"));
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("grace_period"))
        .expect("deploy/duotone.toml sets grace_period");
    let v = line.split('"').nth(1).expect("quoted duration");
    v.strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .expect("grace_period in whole seconds, e.g. \"30s\"")
}

/// Seconds of a "35s" / "35" value.
fn secs(v: &str) -> u64 {
    v.trim()
        .trim_end_matches('s')
        .parse()
        .unwrap_or_else(|_| panic!("{v:?} is not a number of seconds"))
}

#[test]
fn every_example_config_passes_check() {
    let configs = example_configs();
    assert!(
        configs.len() >= 6,
        "expected deploy/duotone.toml and at least 5 examples, found {configs:?}"
    );
    for config in configs {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(config.file_name().expect("name"));
        std::fs::write(&file, localize(&read(&config), dir.path())).expect("write");
        let (code, out, err) = run_cli(
            &["check", "-c", file.to_str().expect("utf-8 path")],
            &[("DUOTONE_ADMIN_TOKEN", TOKEN)],
        );
        assert_eq!(
            code,
            0,
            "{} fails `duotone check`:\n{err}{out}",
            config.display()
        );
        assert!(out.contains(": ok ("), "{}: {out}", config.display());
    }
}

#[test]
fn example_config_checks_without_the_token_and_run_names_it() {
    // `docker run … duotone check` has no token: the file is still checked
    // (the variable is a warning), while `duotone run` refuses to start.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("duotone.toml");
    std::fs::write(&file, localize(&read(&deploy("duotone.toml")), dir.path())).expect("write");
    let path = file.to_str().expect("utf-8");
    let (code, out, err) = run_cli(&["check", "-c", path], &[]);
    assert_eq!(code, 0, "{err}{out}");
    assert!(out.contains(": ok ("), "{out}");
    assert!(
        err.contains("warning:") && err.contains("DUOTONE_ADMIN_TOKEN is not set here"),
        "{err}"
    );
    let (code, _, err) = run_cli(&["run", "-c", path], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("DUOTONE_ADMIN_TOKEN"), "{err}");
}

#[test]
fn check_still_reports_real_errors_beside_unset_variables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("duotone.toml");
    std::fs::write(
        &file,
        "[server]\nadmin = \"${NOT_SET_ADMIN}\"\nadmin_token = \"${NOT_SET_TOKEN}\"\nhttp = \"nope\"\n",
    )
    .expect("write");
    let (code, _, err) = run_cli(&["check", "-c", file.to_str().expect("utf-8")], &[]);
    assert_eq!(code, 1, "{err}");
    // The stand-in makes an address error explain itself.
    assert!(err.contains("(NOT_SET_ADMIN is not set)"), "{err}");
    assert!(err.contains("\"nope\" is not an address"), "{err}");
    assert!(err.contains("NOT_SET_TOKEN is not set here"), "{err}");
}

/// The runtime stage of a Dockerfile: from its shared-part marker to the end.
fn shared_runtime(dockerfile: &str) -> &str {
    let marker = "# ---- The runtime stage from here on is the same";
    let at = dockerfile
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} line"));
    &dockerfile[at..]
}

#[test]
fn both_dockerfiles_share_the_runtime_stage() {
    let full = read(&deploy("Dockerfile"));
    let runtime = read(&deploy("Dockerfile.runtime"));
    assert_eq!(
        shared_runtime(&full),
        shared_runtime(&runtime),
        "deploy/Dockerfile and deploy/Dockerfile.runtime must end with the same runtime stage"
    );
    assert!(runtime.contains("ARG BASE=debian:bookworm-slim\nFROM ${BASE} AS runtime"));
    // The host binary arrives with its file capability in one layer.
    assert!(runtime.contains("ADD duotone.tar /"));
    let script = read(&deploy("image.sh"));
    for needle in [
        "debootstrap --variant=minbase",
        "docker import",
        "setcap cap_net_bind_service=+ep",
        "--xattrs",
        "Dockerfile.runtime",
    ] {
        assert!(script.contains(needle), "deploy/image.sh lacks {needle:?}");
    }
}

/// The JSON array of an exec-form instruction such as `CMD ["run", …]`.
fn exec_form(dockerfile: &str, instruction: &str) -> Vec<String> {
    let prefix = format!("{instruction} ");
    let lines: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .collect();
    assert_eq!(lines.len(), 1, "one {instruction} expected: {lines:?}");
    serde_json::from_str(lines[0][prefix.len()..].trim())
        .unwrap_or_else(|e| panic!("{instruction} must be exec form (JSON): {e}"))
}

#[test]
fn dockerfile_runs_real_cli_flags_and_builds_the_workspace() {
    let df = read(&deploy("Dockerfile"));
    assert_eq!(exec_form(&df, "ENTRYPOINT"), ["duotone"]);
    let cmd = exec_form(&df, "CMD");
    assert_eq!(cmd[0], "run", "CMD runs the proxy: {cmd:?}");
    // Every flag of CMD is a flag of `duotone run`.
    let (code, help, err) = run_cli(&[cmd[0].as_str(), "--help"], &[]);
    assert_eq!(code, 0, "{err}");
    for flag in cmd.iter().filter(|a| a.starts_with('-')) {
        assert!(
            help.contains(&format!("{flag},")) || help.contains(&format!("{flag} ")),
            "`duotone run` has no {flag}:\n{help}"
        );
    }
    // The config CMD points at is the one the image ships.
    let config = cmd
        .iter()
        .position(|a| a == "-c" || a == "--config")
        .map(|i| cmd[i + 1].as_str())
        .expect("CMD passes -c");
    assert!(
        df.contains(&format!("COPY deploy/duotone.toml {config}")),
        "image must ship {config}"
    );

    // Builder and runtime as documented.
    assert!(df.contains("FROM rust:1-bookworm AS builder"));
    assert!(df.contains("cmake"));
    assert!(df.contains("cargo build --release --locked -p duotone"));
    assert!(df.contains("FROM debian:bookworm-slim"));
    assert!(df.contains("setcap cap_net_bind_service=+ep /usr/local/bin/duotone"));
    assert!(df.contains("EXPOSE 80 443"));
    assert!(df.contains("VOLUME [\"/var/lib/duotone\"]"));
    let user = df
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "{user}"
    );
    // The health check is a real verb that needs neither curl nor the
    // admin API on a fixed port.
    let health = df
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with("CMD [\"duotone\", \"healthcheck\"]")
        })
        .expect("HEALTHCHECK … CMD [\"duotone\", \"healthcheck\"]");
    assert!(!health.contains("curl") && !df.contains("9090/healthz"));
    let (code, _, err) = run_cli(&["healthcheck", "--help"], &[]);
    assert_eq!(code, 0, "{err}");

    // `-p duotone` is the binary's package, and every workspace member's
    // directory is copied into the builder (Cargo reads all member manifests).
    let proxy_manifest = read(&repo().join("proxy/Cargo.toml"));
    assert!(proxy_manifest.contains("name = \"duotone\""));
    let manifest = read(&repo().join("Cargo.toml"));
    let members_line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("workspace members");
    let members: Vec<&str> = members_line
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|m| !m.is_empty())
        .collect();
    assert!(!members.is_empty(), "{members_line}");
    for m in members {
        let top = m.split('/').next().expect("member dir");
        assert!(
            df.contains(&format!("COPY {top} {top}")),
            "Dockerfile must COPY workspace member {m:?} (as `COPY {top} {top}`)"
        );
    }
}

/// Compose's `${NAME:-default}` replaced by the default (`$$` left alone).
fn with_defaults(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after.find('}').expect("closing brace");
        let inner = &after[..end];
        match inner.split_once(":-") {
            Some((_, default)) => out.push_str(default),
            None => out.push_str(&format!("${{{inner}}}")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The compose file as JSON, via python3's yaml module when installed.
fn compose_as_json(path: &Path) -> Option<serde_json::Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(path)
        .output()
        .ok()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("No module named"),
            "docker-compose.yml is not valid YAML:\n{err}"
        );
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("json from python"))
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_file_matches_the_example_config() {
    let path = deploy("docker-compose.yml");
    let yml = read(&path);
    let toml = read(&deploy("duotone.toml"));
    assert!(!yml.contains('\t'), "YAML must not contain tabs");
    for needle in [
        "services:",
        "  edge:",
        "  api:",
        "dockerfile: deploy/Dockerfile",
        "${DUOTONE_CONFIG_FILE:-./duotone.toml}:/etc/duotone/duotone.toml:ro",
        "state:/var/lib/duotone",
        "\"127.0.0.1:${DUOTONE_ADMIN_PORT:-9090}:9090\"",
        "DUOTONE_ADMIN_LISTEN: 0.0.0.0:9090",
        "docker compose -p blue",
        "docker compose -p green",
        "unix:/run/app/$$COLOR.sock",
    ] {
        assert!(yml.contains(needle), "docker-compose.yml lacks {needle:?}");
    }
    // The config reads the admin address the compose file sets.
    assert!(toml.contains("${DUOTONE_ADMIN_LISTEN:-127.0.0.1:9090}"));
    // Every unix member of the example config is a socket the app binds.
    let members: Vec<&str> = toml
        .lines()
        .filter(|l| l.trim_start().starts_with("colors."))
        .flat_map(|l| l.split('"').skip(1).step_by(2))
        .collect();
    assert_eq!(
        members,
        ["unix:/run/app/blue.sock", "unix:/run/app/green.sock"]
    );
    let grace = grace_period_secs();
    let stop: Vec<u64> = yml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("stop_grace_period:"))
        .map(secs)
        .collect();
    assert_eq!(stop.len(), 2, "stop_grace_period on edge and api");
    assert!(
        stop.iter().all(|s| *s > grace),
        "stop_grace_period {stop:?} must exceed server.grace_period {grace}s"
    );

    // The structure as it is with every variable at its default.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("docker-compose.yml");
    std::fs::write(&path, with_defaults(&yml)).expect("write");
    let Some(doc) = compose_as_json(&path) else {
        eprintln!("python3 with PyYAML not found: structural compose checks skipped");
        return;
    };
    let services = &doc["services"];
    let edge = &services["edge"];
    let api = &services["api"];
    assert!(edge.is_object() && api.is_object(), "{services}");
    let edge_ports = strings(&edge["ports"]);
    for p in ["80:80", "443:443", "127.0.0.1:9090:9090"] {
        assert!(
            edge_ports.iter().any(|x| x == p),
            "edge ports {edge_ports:?}"
        );
    }
    // Named volumes used by services are declared, with fixed names shared
    // by every project.
    let declared = doc["volumes"].as_object().expect("top-level volumes");
    let mut mounts = Vec::new();
    for (name, svc) in [("edge", edge), ("api", api)] {
        for v in strings(&svc["volumes"]) {
            let mut parts = v.split(':');
            let (src, dst) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            if !src.starts_with('.') && !src.starts_with('/') {
                let decl = declared
                    .get(src)
                    .unwrap_or_else(|| panic!("{name}: volume {src:?} is not declared"));
                assert!(
                    decl["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("duotone-")),
                    "volume {src} needs a fixed name shared by the projects: {decl}"
                );
            }
            mounts.push((name, src.to_string(), dst.to_string()));
        }
    }
    let has = |svc: &str, src: &str, dst: &str| {
        mounts
            .iter()
            .any(|(s, a, b)| *s == svc && a == src && b == dst)
    };
    // Sockets shared at the path the config names; static/media roots of the
    // config are mounted into the edge from the app's volumes.
    assert!(has("edge", "sockets", "/run/app") && has("api", "sockets", "/run/app"));
    for (vol, root) in [("static", "/srv/static"), ("media", "/srv/media")] {
        assert!(toml.contains(&format!("root = \"{root}\"")), "{root}");
        assert!(has("edge", vol, root), "edge mounts {vol} at {root}");
        assert!(
            mounts.iter().any(|(s, a, _)| *s == "api" && a == vol),
            "api writes {vol}"
        );
    }
    assert!(has("edge", "state", "/var/lib/duotone"));
    assert!(toml.contains("state_dir = \"/var/lib/duotone\""));
    let caps = strings(&edge["cap_add"]);
    assert_eq!(
        caps,
        ["NET_BIND_SERVICE"],
        "setcap needs it in the bounding set"
    );
}

#[test]
fn systemd_unit_is_hardened_and_uses_real_flags() {
    let unit = read(&deploy("duotone.service"));
    for needle in [
        "ExecStart=/usr/local/bin/duotone run -c ${DUOTONE_CONFIG}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/duotone",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "User=duotone",
    ] {
        assert!(unit.contains(needle), "duotone.service lacks {needle:?}");
    }
    let (code, help, err) = run_cli(&["check", "--help"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(help.contains("-c, --config"), "{help}");
    let stop = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .map(secs)
        .expect("TimeoutStopSec");
    let grace = grace_period_secs();
    assert!(
        stop > grace,
        "TimeoutStopSec={stop} must exceed server.grace_period {grace}s"
    );

    // systemd's own parser, where installed: no unknown keys or bad values.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("duotone.service");
    let bin = e2e::proxy::duotone_bin();
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/duotone", &bin.display().to_string())
            .replace("User=duotone", "User=root")
            .replace("Group=duotone", "Group=root")
            .replace(
                "EnvironmentFile=/etc/duotone/duotone.env",
                "EnvironmentFile=-/etc/duotone/duotone.env",
            ),
    )
    .expect("write unit");
    match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
    {
        Err(_) => eprintln!("systemd-analyze not found: unit syntax check skipped"),
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let bad: Vec<&str> = err
                .lines()
                .filter(|l| l.contains("duotone.service"))
                .collect();
            assert!(bad.is_empty(), "systemd-analyze verify:\n{err}");
        }
    }
}

/// Every `expr` string in the dashboard.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

/// Metric names (`duotone_…`) a PromQL expression mentions.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("duotone_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The contract name a series name belongs to (histogram suffixes folded).
fn family(name: &str) -> &str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if base == "duotone_request_duration_seconds" {
                return base;
            }
        }
    }
    name
}

#[test]
fn grafana_dashboard_queries_only_known_metrics() {
    let text = read(&deploy("grafana-dashboard.json"));
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let vars = dash["templating"]["list"].as_array().expect("variables");
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus datasource variable"
    );
    let panels = dash["panels"].as_array().expect("panels");
    let mut titles = Vec::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        titles.push(p["title"].as_str().unwrap_or_default().to_lowercase());
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {} uses the datasource variable",
            p["title"]
        );
        assert!(p["targets"].as_array().is_some_and(|t| !t.is_empty()));
    }
    for want in [
        "requests per second by color",
        "error rate",
        "p50 / p99",
        "in-flight",
        "live color",
        "member health",
        "static bytes",
        "days to certificate expiry",
        "reloads",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no panel about {want:?}: {titles:?}"
        );
    }
    // Panels do not overlap on the 24-column grid.
    let cells: Vec<(i64, i64, i64, i64)> = panels
        .iter()
        .map(|p| {
            let g = &p["gridPos"];
            let n = |k: &str| g[k].as_i64().expect("gridPos");
            (n("x"), n("y"), n("w"), n("h"))
        })
        .collect();
    for (i, a) in cells.iter().enumerate() {
        assert!(a.0 + a.2 <= 24, "panel {i} is wider than the grid");
        for b in &cells[i + 1..] {
            let apart =
                a.0 + a.2 <= b.0 || b.0 + b.2 <= a.0 || a.1 + a.3 <= b.1 || b.1 + b.3 <= a.1;
            assert!(apart, "panels at {a:?} and {b:?} overlap");
        }
    }

    let mut all = Vec::new();
    exprs(&dash, &mut all);
    let used: BTreeSet<String> = all
        .iter()
        .flat_map(|e| metric_names(e))
        .map(|n| family(&n).to_string())
        .collect();
    for name in &used {
        assert!(
            METRICS.contains(&name.as_str()),
            "dashboard queries unknown metric {name}"
        );
    }
    for name in METRICS {
        assert!(used.contains(*name), "dashboard never shows {name}");
    }
    assert!(
        all.iter()
            .any(|e| e.contains("duotone_request_duration_seconds_bucket")),
        "latency from the histogram buckets"
    );

    // PromQL syntax, where promtool is installed: each query as a recording rule.
    let mut rules = String::from("groups:\n- name: dashboard\n  rules:\n");
    for (i, e) in all.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$__range", "1h")
            .replace("$instance", ".*")
            .replace("$site", ".*")
            .replace("$service", ".*");
        let quoted = serde_json::to_string(&e).expect("quote");
        rules.push_str(&format!(
            "  - record: dashboard:query{i}\n    expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rules.yml");
    std::fs::write(&file, rules).expect("write rules");
    match Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
    {
        Err(_) => eprintln!("promtool not found: PromQL syntax check skipped"),
        Ok(out) => assert!(
            out.status.success(),
            "promtool rejects a dashboard query:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The running proxy exports the families the dashboard reads. Certificate
/// expiry needs a TLS site, so it is left out here.
#[tokio::test]
async fn proxy_exports_the_dashboard_metrics() {
    let app = Upstream::start("blue").await;
    let static_root = tempfile::tempdir().expect("tempdir");
    std::fs::write(static_root.path().join("app.css"), "body{}").expect("write");
    let template = format!(
        r#"
[server]
http = "{{http}}"
admin = "{{admin}}"
state_dir = "{{state}}"
admin_token = "{TOKEN}"

[[sites]]
hosts = ["*"]
  [[sites.routes]]
  path = "/static/"
  static = {{ root = "{root}" }}
  [[sites.routes]]
  path = "/"
  service = "api"

[services.api]
live = "blue"
health = {{ path = "/healthz", interval = "200ms" }}
colors.blue = ["{app}"]
colors.green = ["127.0.0.1:9"]
"#,
        root = static_root.path().display(),
        app = app.addr.expect("tcp upstream"),
    );
    let proxy = Proxy::start(&template).await;
    let resp = e2e::client::Http::new()
        .get(&proxy.url("/"))
        .await
        .expect("GET /");
    assert_eq!(resp.status, 200, "{}", proxy.log());
    let _ = e2e::client::Http::new()
        .get(&proxy.url("/static/app.css"))
        .await;
    let metrics = admin("GET", &proxy.admin_url("/metrics"), Some(TOKEN), None)
        .await
        .expect("GET /metrics");
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    for name in METRICS
        .iter()
        .filter(|n| **n != "duotone_certificate_expiry_timestamp_seconds")
    {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "/metrics lacks {name}:\n{text}"
        );
    }
    assert!(text.contains("duotone_request_duration_seconds_bucket{"));
    assert!(text.contains("status_class=\"2xx\""));
}

/// The value of `key = N` in the `[limits]` block of `text` (a TOML file or
/// the README's config reference), if it is there.
fn limit(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .strip_prefix('=')?
                .trim()
                .parse()
                .ok()
        })
}

#[test]
fn file_limits_hold_max_connections() {
    // What deploy/README.md asks for: 2 x max_connections + max_open_files
    // + 1024, with the example config's max_connections and the README's
    // defaults (the values of routes/src/config.rs).
    let readme = read(&repo().join("README.md"));
    let example = read(&deploy("duotone.toml"));
    let max_connections = limit(&example, "max_connections")
        .or_else(|| limit(&readme, "max_connections"))
        .expect("max_connections in README.md's [limits]");
    let max_open_files = limit(&example, "max_open_files")
        .or_else(|| limit(&readme, "max_open_files"))
        .expect("max_open_files in README.md's [limits]");
    let need = 2 * max_connections + max_open_files + 1024;

    let unit = read(&deploy("duotone.service"));
    let nofile: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .and_then(|v| v.trim().parse().ok())
        .expect("duotone.service sets LimitNOFILE=N");
    assert!(nofile >= need, "LimitNOFILE={nofile} under {need}");

    let yml = read(&deploy("docker-compose.yml"));
    for side in ["soft", "hard"] {
        let v: u64 = yml
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("{side}: ${{DUOTONE_NOFILE:-"))
            })
            .and_then(|v| v.trim_end_matches('}').parse().ok())
            .unwrap_or_else(|| {
                panic!("docker-compose.yml: ulimits nofile {side} from DUOTONE_NOFILE")
            });
        assert!(v >= need, "compose nofile {side} {v} under {need}");
    }

    let guide = read(&deploy("README.md"));
    assert!(
        guide.contains("## File descriptors"),
        "deploy/README.md lacks the section"
    );
    assert!(
        guide.contains("2 × max_connections + max_open_files + 1 024"),
        "deploy/README.md lacks the formula"
    );
    let shown = format!("{},{:03}", need / 1000, need % 1000).replace(',', " ");
    assert!(
        guide.contains(&shown),
        "deploy/README.md should give the default need, {shown}"
    );
}
