//! `duotone upgrade`: replaces the running Duotone by a new process (a new
//! binary, or the same one) without closing a listening socket, as nginx's
//! binary upgrade and HAProxy's socket hand-over do, over Pingora's hand-over:
//!
//! 1. `BINARY check -c FILE` (the new binary judges the config; a refusal
//!    changes nothing);
//! 2. the running process is the one named by `{state_dir}/duotone.pid`;
//! 3. `BINARY run --upgrade -c FILE` is started; it loads the config and
//!    its certificates, then listens on `{state_dir}/upgrade.sock` for the
//!    listeners (if it fails before that, the old process never hears of it);
//! 4. once that socket listens, the old process gets SIGQUIT: it sends its
//!    listening sockets (HTTP, HTTPS, admin API), keeps accepting for a few
//!    seconds beside the new one, then stops accepting and drains its
//!    in-flight requests (up to `grace_period`) and exits;
//! 5. the new process writes its pid to the pid file once it has the
//!    sockets; the command waits for that and for the old process to exit,
//!    and reports.
//!
//! The listening sockets are never closed, so no connection is refused.

use crate::control::Source;
use crate::ops::pidfile::{self, alive, UPGRADE_SOCK};
use anyhow::{anyhow, bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Pingora's wait, after sending the sockets, before the old process stops
/// accepting (its `CLOSE_TIMEOUT`).
const HAND_OVER_OVERLAP: Duration = Duration::from_secs(5);
/// How often the command looks at the processes.
const POLL: Duration = Duration::from_millis(10);

/// What `duotone upgrade` was asked to do.
pub struct Options {
    /// The config file the new process runs with (its `state_dir` names the
    /// running process).
    pub config: PathBuf,
    /// The binary to start (default: this one).
    pub binary: PathBuf,
    /// Where the new process's stdout and stderr go (appended); default:
    /// this command's.
    pub log: Option<PathBuf>,
    /// How long the new process may take to be ready for the listeners.
    pub timeout: Duration,
}

/// Runs the upgrade; `Ok` once the new process has the listeners and the
/// old one has exited.
pub fn run(o: &Options) -> Result<()> {
    let t0 = Instant::now();
    check_with_new_binary(o)?;
    let (config, _) = Source::File(o.config.clone())
        .load_for_check()
        .map_err(|d| anyhow!("{d}"))?;
    let state = config.server.state_dir.clone();
    let old = pidfile::read(&state)?.ok_or_else(|| {
        anyhow!(
            "no pid file {}: is duotone running with this config's state_dir?",
            pidfile::path(&state).display()
        )
    })?;
    if !alive(old) {
        bail!(
            "pid {old} (from {}) is not running: start duotone with `duotone run` instead",
            pidfile::path(&state).display()
        );
    }
    let sock = state.join(UPGRADE_SOCK);
    match std::fs::remove_file(&sock) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", sock.display())),
    }

    let mut child = spawn(o)?;
    let new = child.id() as i32;
    println!(
        "started {} run --upgrade (pid {new}); waiting until it is ready for the listeners",
        o.binary.display()
    );
    let ready_by = Instant::now() + o.timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for the new process")? {
            bail!(
                "the new process (pid {new}) exited ({status}) before taking over: \
                 pid {old} keeps serving, nothing was changed"
            );
        }
        if listening(&sock) {
            break;
        }
        if Instant::now() > ready_by {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the new process was not ready for the listeners after {:?} (stopped it): \
                 pid {old} keeps serving, nothing was changed",
                o.timeout
            );
        }
        std::thread::sleep(POLL);
    }

    // PID 1 (a container's entrypoint) does not exit after its drain: it
    // stays as init and says so with this mark (`crate::ops::init`).
    let mark = state.join(pidfile::INIT_MARK);
    if old == 1 {
        let _ = std::fs::remove_file(&mark);
    }
    let signalled = Instant::now();
    if let Err(e) = signal(old, libc::SIGQUIT) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e).context(format!(
            "asking pid {old} to hand over (SIGQUIT); the new process was stopped"
        ));
    }
    println!("pid {old}: SIGQUIT sent, handing its listeners to pid {new}");

    // The new process names itself in the pid file once it has the sockets.
    let taken_by = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().context("waiting for the new process")? {
            bail!(
                "the new process (pid {new}) exited ({status}) during the hand-over; \
                 pid {old} drains and exits: start duotone again"
            );
        }
        if pidfile::read(&state).ok().flatten() == Some(new) {
            break;
        }
        if Instant::now() > taken_by {
            bail!("pid {new} did not report taking the listeners within 30s (see its log)");
        }
        std::thread::sleep(POLL);
    }
    println!(
        "pid {new} has the listeners ({:.0} ms after SIGQUIT); pid {old} is draining \
         (up to grace_period = {:?})",
        signalled.elapsed().as_secs_f64() * 1e3,
        config.server.grace_period
    );

    let drained_by =
        Instant::now() + HAND_OVER_OVERLAP + config.server.grace_period + Duration::from_secs(10);
    while alive(old) && !(old == 1 && mark.exists()) {
        if Instant::now() > drained_by {
            bail!(
                "pid {new} serves, but pid {old} has not exited {:?} after its grace period",
                drained_by.duration_since(signalled)
            );
        }
        std::thread::sleep(POLL);
    }
    if let Some(status) = child.try_wait().context("checking the new process")? {
        bail!("the new process (pid {new}) exited ({status}) after taking over");
    }
    println!(
        "upgraded: pid {old} drained and {}; pid {new} serves ({:.1} s in all)",
        if old == 1 {
            "stays as PID 1 (init)"
        } else {
            "exited"
        },
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The upgrade from inside the running process (on SIGUSR2, as nginx's
/// binary upgrade): starts the binary at this process's path (the new one,
/// when it was replaced on disk) with `run --upgrade -c CONFIG` as a child
/// (under systemd it stays in the unit's control group, and names itself
/// the main process with `MAINPID=`), waits until it is ready for the
/// listeners, then sends this process SIGQUIT. `Err` (with this process
/// serving on) when the new process cannot start or exits first.
pub fn from_inside(config: &Path, state: &Path, timeout: Duration) -> Result<()> {
    let binary = this_binary()?;
    let sock = state.join(UPGRADE_SOCK);
    match std::fs::remove_file(&sock) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", sock.display())),
    }
    let mut child = Command::new(&binary)
        .arg("run")
        .arg("--upgrade")
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} run --upgrade", binary.display()))?;
    let new = child.id();
    tracing::info!(binary = %binary.display(), pid = new, "upgrade: new process started");
    let ready_by = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for the new process")? {
            bail!("the new process (pid {new}) exited ({status}) before taking over");
        }
        if listening(&sock) {
            break;
        }
        if Instant::now() > ready_by {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the new process was not ready for the listeners after {timeout:?} (stopped it)");
        }
        std::thread::sleep(POLL);
    }
    tracing::info!(pid = new, "upgrade: handing the listeners over");
    signal(std::process::id() as i32, libc::SIGQUIT).context("SIGQUIT to this process")
}

/// This process's binary by its path, which names the new file once the
/// binary has been replaced on disk (`/proc/self/exe` then reads
/// "PATH (deleted)").
fn this_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// `BINARY check -c FILE`: the new binary's judgement of the config.
fn check_with_new_binary(o: &Options) -> Result<()> {
    let out = Command::new(&o.binary)
        .arg("check")
        .arg("-c")
        .arg(&o.config)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} check", o.binary.display()))?;
    if !out.status.success() {
        bail!(
            "{} check -c {} refused the config; nothing was changed:\n{}{}",
            o.binary.display(),
            o.config.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Starts `BINARY run --upgrade -c FILE` in a process group of its own (a
/// Ctrl-C meant for this command does not reach it), outliving this command.
fn spawn(o: &Options) -> Result<Child> {
    let mut cmd = Command::new(&o.binary);
    cmd.arg("run")
        .arg("--upgrade")
        .arg("-c")
        .arg(&o.config)
        .stdin(Stdio::null())
        .process_group(0);
    if let Some(log) = &o.log {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file));
    }
    cmd.spawn()
        .with_context(|| format!("starting {} run --upgrade", o.binary.display()))
}

/// Whether a unix socket at `path` is listening (`/proc/net/unix`), without
/// connecting to it: the new process accepts one connection there, the old
/// process's. Without `/proc`, whether the socket file exists (the old
/// process retries a connection refused).
fn listening(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return path.exists();
    };
    let want = path.to_string_lossy();
    let abs = std::fs::canonicalize(path).ok();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Num RefCount Protocol Flags Type St Inode Path; Flags 00010000: listening.
        fields.len() >= 8
            && fields[3] == "00010000"
            && (fields[7] == want || abs.as_deref().is_some_and(|a| Path::new(fields[7]) == a))
    })
}

/// Sends `sig` to `pid`.
fn signal(pid: i32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) on a pid read from the pid file; no memory is involved.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(pid, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_unix_socket_is_seen_without_connecting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("u.sock");
        assert!(!listening(&path));
        let l = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        assert!(listening(&path));
        drop(l);
        // A process another test forks in this instant holds a copy of the
        // socket until its exec closes it: wait for that, within a bound.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while listening(&path) && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(!listening(&path), "closed, the file left behind");
    }

    #[test]
    fn this_process_is_alive_and_a_reaped_child_is_not() {
        assert!(alive(std::process::id() as i32));
        let mut child = Command::new("true").spawn().expect("spawn true");
        let pid = child.id() as i32;
        child.wait().expect("wait");
        assert!(!alive(pid));
    }
}
