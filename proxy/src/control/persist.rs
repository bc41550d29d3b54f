//! Crash-safe persistence of live colors and weights under `state_dir`.

use anyhow::{Context, Result};
use routes::LiveState;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// File name of the live state inside `state_dir`.
pub const LIVE_FILE: &str = "live.json";

/// Path of the live state file.
pub fn live_path(state_dir: &Path) -> PathBuf {
    state_dir.join(LIVE_FILE)
}

/// Reads the saved live state; a missing file is an empty state. Also
/// removes temp files that a killed process left behind.
pub fn read_live(state_dir: &Path) -> Result<LiveState> {
    let path = live_path(state_dir);
    remove_stale_temps(&path);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a valid live state file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LiveState::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync dir.
/// A crash at any point leaves either the old or the new file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

/// Removes temp files that a process killed in the middle of
/// [`write_atomic`] left next to `path` (`.NAME.PID.tmp`). Files of live
/// processes (e.g. the old process during an upgrade) are kept.
pub fn remove_stale_temps(path: &Path) {
    let dir = path.parent().unwrap_or(Path::new("."));
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let prefix = format!(".{name}.");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = file
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists();
        if !alive {
            match fs::remove_file(e.path()) {
                Ok(()) => tracing::info!("removed {} left by an interrupted write", file),
                Err(err) => tracing::warn!("cannot remove {}: {err}", e.path().display()),
            }
        }
    }
}

/// Saves the live state.
pub fn write_live(state_dir: &Path, live: &LiveState) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(live)?;
    bytes.push(b'\n');
    write_atomic(&live_path(state_dir), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use routes::state::ServiceState;

    #[test]
    fn round_trips_and_replaces() {
        let dir = std::env::temp_dir().join(format!("duotone-persist-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        assert_eq!(read_live(&dir).unwrap(), LiveState::default());
        let mut st = LiveState::default();
        st.services
            .insert("api".into(), ServiceState::live("green"));
        write_live(&dir, &st).unwrap();
        assert_eq!(read_live(&dir).unwrap(), st);
        st.services.insert("api".into(), ServiceState::live("blue"));
        write_live(&dir, &st).unwrap();
        assert_eq!(read_live(&dir).unwrap(), st);
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        // A temp file from a dead process goes; one from a live process stays.
        let dead = dir.join(format!(".{LIVE_FILE}.4294967295.tmp"));
        let mine = dir.join(format!(".{LIVE_FILE}.{}.tmp", std::process::id()));
        fs::write(&dead, b"{").unwrap();
        fs::write(&mine, b"{").unwrap();
        read_live(&dir).unwrap();
        assert!(!dead.exists());
        assert!(mine.exists());
        fs::remove_file(&mine).unwrap();
        fs::write(live_path(&dir), b"{torn").unwrap();
        assert!(read_live(&dir).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
