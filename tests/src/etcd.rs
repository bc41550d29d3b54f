//! A real etcd cluster on loopback (Debian's `etcd-server`), for the
//! cluster tests: members can be killed and started again to lose and
//! regain quorum.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `true` if the `etcd` and `etcdctl` binaries are on `PATH`.
pub fn etcd_available() -> bool {
    ["etcd", "etcdctl"].iter().all(|bin| {
        std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|p| p.join(bin).is_file()))
            .unwrap_or(false)
    })
}

/// Returns `true` if the test may use etcd. Otherwise prints a loud skip
/// notice and returns `false`, or panics when `DUOTONE_REQUIRE_ETCD=1`.
pub fn etcd_or_skip(test: &str) -> bool {
    if etcd_available() {
        return true;
    }
    let msg = format!(
        "SKIPPED {test}: the `etcd` / `etcdctl` binaries are not on PATH \
         (apt-get install etcd-server etcd-client)"
    );
    if std::env::var("DUOTONE_REQUIRE_ETCD").as_deref() == Ok("1") {
        panic!("{msg}, and DUOTONE_REQUIRE_ETCD=1");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n!!!!! {msg} !!!!!\n");
    false
}

/// One member's ports and process.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// An etcd cluster of several members on 127.0.0.1 (killed on drop).
pub struct EtcdCluster {
    _root: tempfile::TempDir,
    members: Vec<Member>,
    initial_cluster: String,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster has a leader.
    pub async fn start(n: usize) -> anyhow::Result<EtcdCluster> {
        let root = tempfile::tempdir()?;
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: crate::free_port(),
                peer_port: crate::free_port(),
                dir: root.path().join(format!("m{i}")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            _root: root,
            members,
            initial_cluster,
        };
        for i in 0..n {
            c.start_member(i)?;
        }
        c.wait_healthy(Duration::from_secs(30)).await?;
        Ok(c)
    }

    /// The client URLs of every member, as `[cluster] endpoints` takes them.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The endpoints as a TOML array.
    pub fn endpoints_toml(&self) -> String {
        let quoted: Vec<String> = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        format!("[{}]", quoted.join(", "))
    }

    /// Starts member `i` (again, on its data: a restart rejoins the cluster).
    pub fn start_member(&mut self, i: usize) -> anyhow::Result<()> {
        let initial = self.initial_cluster.clone();
        let m = &mut self.members[i];
        if m.child.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&m.dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.dir.with_extension("log"))?;
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "duotone-test"])
            // Fast elections: a killed leader is replaced in well under a second.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        m.child = Some(child);
        Ok(())
    }

    /// Kills member `i` (SIGKILL), keeping its data for a restart.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether member `i` runs.
    pub fn member_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// Waits until every running member reports itself healthy (which
    /// needs a leader, hence quorum).
    pub async fn wait_healthy(&self, limit: Duration) -> anyhow::Result<()> {
        let running: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect();
        let ok = crate::eventually(limit, || {
            let running = running.clone();
            async move {
                let out = tokio::task::spawn_blocking(move || {
                    Command::new("etcdctl")
                        .env("ETCDCTL_API", "3")
                        .args(["--endpoints", &running.join(","), "endpoint", "health"])
                        .args(["--command-timeout", "1s"])
                        .output()
                })
                .await
                .ok()?
                .ok()?;
                out.status.success().then_some(())
            }
        })
        .await;
        ok.ok_or_else(|| anyhow::anyhow!("etcd cluster not healthy within {limit:?}"))
    }

    /// Runs `etcdctl` against the running members; returns stdout.
    pub fn etcdctl(&self, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        let running: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect();
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &running.join(",")])
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.stdout)
    }

    /// Every key and raw value under `prefix`.
    pub fn dump(&self, prefix: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        use base64_engine::decode;
        let out = self.etcdctl(&["get", prefix, "--prefix", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_slice(&out)?;
        let mut pairs = Vec::new();
        for kv in v["kvs"].as_array().into_iter().flatten() {
            let key = decode(kv["key"].as_str().unwrap_or_default())?;
            let value = decode(kv["value"].as_str().unwrap_or_default())?;
            pairs.push((String::from_utf8_lossy(&key).into_owned(), value));
        }
        Ok(pairs)
    }

    /// The log file of member `i`.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.members[i].dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }
}

/// Standard base64 decoding (etcdctl's JSON output), without a dependency.
mod base64_engine {
    pub fn decode(s: &str) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(s.len() * 3 / 4);
        let (mut acc, mut bits) = (0u32, 0u32);
        for &b in s.as_bytes() {
            let v = match b {
                b'A'..=b'Z' => b - b'A',
                b'a'..=b'z' => b - b'a' + 26,
                b'0'..=b'9' => b - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' => break,
                _ => anyhow::bail!("bad base64 byte {b}"),
            };
            acc = (acc << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        Ok(out)
    }
}
