//! The pid file, `{state_dir}/duotone.pid`: the pid of the process that
//! serves now. Written once the process owns its listeners (after an
//! upgrade's hand-over, so it names the new process only once that one has
//! the sockets), removed at exit when it still names this process.
//! `duotone upgrade` reads it to find the process to replace.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The pid file's name in the state directory.
pub const PID_FILE: &str = "duotone.pid";
/// The unix socket a new process takes the listeners over on (Pingora's
/// `upgrade_sock`), in the state directory.
pub const UPGRADE_SOCK: &str = "upgrade.sock";

/// Written by PID 1 once it has drained after a hand-over and stays as init
/// ([`super::init`]), for `duotone upgrade`, which cannot wait for PID 1 to
/// exit.
pub const INIT_MARK: &str = "duotone.init";

/// The pid file of `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(PID_FILE)
}

/// Writes this process's pid (written to a temp file, then renamed, so a
/// reader never sees half a number).
pub fn write(state_dir: &Path) -> Result<()> {
    let file = path(state_dir);
    let tmp = state_dir.join(format!(".{PID_FILE}.{}", std::process::id()));
    std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &file).with_context(|| format!("renaming to {}", file.display()))
}

/// The pid in `state_dir`'s pid file; `None` when there is no file.
pub fn read(state_dir: &Path) -> Result<Option<i32>> {
    let file = path(state_dir);
    match std::fs::read_to_string(&file) {
        Ok(text) => text
            .trim()
            .parse::<i32>()
            .ok()
            .filter(|p| *p > 0)
            .map(Some)
            .with_context(|| format!("{}: not a pid: {:?}", file.display(), text.trim())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

/// Removes the pid file if it names this process (after an upgrade it
/// names the new one, which must keep it).
pub fn remove_if_mine(state_dir: &Path) {
    let me = std::process::id() as i32;
    if matches!(read(state_dir), Ok(Some(pid)) if pid == me) {
        let _ = std::fs::remove_file(path(state_dir));
    }
}

/// Whether `pid` is a live process (a zombie, exited but not yet reaped by
/// its parent, is not).
pub fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    #[allow(unsafe_code)]
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S …": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => true,
    }
}

/// Tells systemd (`Type=notify`, `NotifyAccess=all`) that this process is
/// ready and is the service's main process (`READY=1`, `MAINPID=`): after an
/// upgrade the new process takes over as the unit's main PID. Does nothing
/// outside systemd (no `NOTIFY_SOCKET`).
pub fn notify_systemd() {
    if let Some(target) = std::env::var_os("NOTIFY_SOCKET") {
        notify_to(&target);
    }
}

/// Sends `READY=1` and `MAINPID=` to the notification socket `target` (a
/// path, or `@name` for an abstract socket).
fn notify_to(target: &std::ffi::OsStr) {
    let msg = format!("READY=1\nMAINPID={}\n", std::process::id());
    let sent = (|| -> std::io::Result<usize> {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(target);
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(msg.as_bytes(), &addr)
            }
            None => sock.send_to(msg.as_bytes(), target),
        }
    })();
    match sent {
        Ok(_) => tracing::info!("told systemd: ready, main pid {}", std::process::id()),
        Err(e) => tracing::warn!("NOTIFY_SOCKET {target:?}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_read_and_removed_only_by_its_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path()).expect("read"), None);
        write(dir.path()).expect("write");
        assert_eq!(
            read(dir.path()).expect("read"),
            Some(std::process::id() as i32)
        );
        std::fs::write(path(dir.path()), "1\n").expect("overwrite");
        remove_if_mine(dir.path());
        assert_eq!(read(dir.path()).expect("read"), Some(1));
        write(dir.path()).expect("write");
        remove_if_mine(dir.path());
        assert!(!path(dir.path()).exists());
        std::fs::write(path(dir.path()), "x").expect("garbage");
        assert!(read(dir.path()).is_err());
    }

    #[test]
    fn systemd_is_told_the_main_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&sock).expect("bind");
        notify_to(sock.as_os_str());
        let mut buf = [0u8; 128];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(
            std::str::from_utf8(&buf[..n]).expect("utf-8"),
            format!("READY=1\nMAINPID={}\n", std::process::id())
        );
    }
}
