//! Helpers for the tests that run Duotone's images and compose files with a
//! real Docker engine (tests/tests/container.rs, cluster_compose.rs): finding
//! the engine and Compose (or skipping), building the local images with
//! `deploy/image.sh`, and running `docker` commands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Bytes as text (lossy).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs a command to completion (panics only if it cannot be started).
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `docker ARGS…`, not yet run.
pub fn docker(args: &[&str]) -> Command {
    let mut c = Command::new("docker");
    c.args(args);
    c
}

/// How to call Compose here: `docker compose` (v2) or `docker-compose` (v1).
#[derive(Clone, Debug)]
pub struct Engine {
    /// The program and its first arguments, e.g. `["docker", "compose"]`.
    pub compose: Vec<String>,
}

impl Engine {
    /// `COMPOSE ARGS…`, not yet run.
    pub fn compose(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.compose[0]);
        c.args(&self.compose[1..]).args(args);
        c
    }
}

fn skip(test: &str, why: &str) -> Option<Engine> {
    let msg = format!("{test}: skipped: {why}");
    if std::env::var("DUOTONE_REQUIRE_DOCKER").as_deref() == Ok("1") {
        panic!("{msg}, and DUOTONE_REQUIRE_DOCKER=1");
    }
    // The real stderr, so libtest's capture cannot hide it.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
    None
}

/// The engine, or `None` after one line saying why the test is skipped
/// (a failure instead with `DUOTONE_REQUIRE_DOCKER=1`).
pub fn engine_or_skip(test: &str) -> Option<Engine> {
    match Command::new("docker").args(["info"]).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let err = text(&o.stderr);
            let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            return skip(test, &format!("no Docker engine (docker info: {first})"));
        }
        Err(e) => return skip(test, &format!("no Docker engine (docker: {e})")),
    }
    for compose in [&["docker", "compose"][..], &["docker-compose"][..]] {
        let works = Command::new(compose[0])
            .args(&compose[1..])
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if works {
            return Some(Engine {
                compose: compose.iter().map(|s| s.to_string()).collect(),
            });
        }
    }
    skip(
        test,
        "no Docker Compose (neither `docker compose` nor `docker-compose`)",
    )
}

/// `deploy/image.sh ARGS…`, which must succeed (it makes the base image
/// `duotone-base:bookworm` first if that tag does not exist yet).
pub fn image_sh(args: &[&str]) {
    ok(Command::new(repo().join("deploy/image.sh")).args(args));
}

/// A unique, Compose-v1-safe name prefix (lowercase letters and digits).
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("dt{tag}{}x{}", std::process::id(), nanos % 100_000)
}

/// A directory the container's user (uid 10001) can read.
pub fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// Writes a file anyone can read (a config mounted into a container).
pub fn write_readable(path: &Path, content: &str) {
    std::fs::write(path, content).expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
}

/// The host side of a published port, e.g. `docker port NAME 80`.
pub fn published(container: &str, port: u16) -> Option<SocketAddr> {
    let out = run(&mut docker(&["port", container, &port.to_string()]));
    text(&out.stdout)
        .lines()
        .find_map(|l| l.trim().parse::<SocketAddr>().ok().filter(|a| a.is_ipv4()))
}

/// `docker inspect -f FORMAT NAME`, trimmed (empty when it fails).
pub fn inspect(container: &str, format: &str) -> String {
    let out = run(&mut docker(&["inspect", "-f", format, container]));
    text(&out.stdout).trim().to_string()
}

/// The last lines of a container's output (stdout and stderr).
pub fn logs(container: &str, tail: usize) -> String {
    let out = run(&mut docker(&[
        "logs",
        "--tail",
        &tail.to_string(),
        container,
    ]));
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// Removes a container (and its anonymous volumes) whatever happens.
pub struct Container(pub String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.0]).output();
    }
}

/// Removes a volume whatever happens.
pub struct Volume(pub String);

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = docker(&["volume", "rm", "-f", &self.0]).output();
    }
}
