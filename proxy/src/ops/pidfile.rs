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
}
