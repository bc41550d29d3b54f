//! The process's file limit (`RLIMIT_NOFILE`) against what a config needs.
//!
//! Every client connection is a file descriptor, and so is its upstream
//! connection while a request is in flight (or an idle one in the pool),
//! each static file being served (at most `[limits] max_open_files`) and the
//! listeners, logs and state files. So a config needs
//! `2 × max_connections + max_open_files + 1024` (deploy/README.md, "File
//! descriptors"). The proxy raises its soft limit to the hard one at start
//! ([`raised_soft`], as Go since 1.19 and nginx's `worker_rlimit_nofile`
//! do) and warns with [`shortfall`] when that is still too low.

use crate::config::Limits;

/// Descriptors kept for everything but connections and static files:
/// listeners, logs, state files, the runtime's own (epoll, eventfds), spare.
pub const RESERVE: u64 = 1024;

/// The file limit `limits` needs: `2 × max_connections + max_open_files +`
/// [`RESERVE`] (saturating).
pub fn needed(limits: &Limits) -> u64 {
    let conns = u64::try_from(limits.max_connections).unwrap_or(u64::MAX);
    let files = u64::try_from(limits.max_open_files).unwrap_or(u64::MAX);
    conns
        .saturating_mul(2)
        .saturating_add(files)
        .saturating_add(RESERVE)
}

/// The soft limit to set given the current `soft` and `hard` ones: the hard
/// limit when the soft one is below it, else none (nothing to change). Never
/// above the hard limit, which only a privileged process may raise.
pub fn raised_soft(soft: u64, hard: u64) -> Option<u64> {
    (soft < hard).then_some(hard)
}

/// The warning when the file limit `limit` is below what `limits` need
/// ([`needed`]), else none.
pub fn shortfall(limit: u64, limits: &Limits) -> Option<String> {
    let need = needed(limits);
    (limit < need).then(|| {
        format!(
            "file limit {limit} is below the {need} this config needs (2 × max_connections {} + \
             max_open_files {} + {RESERVE}): past it accept() fails and upstream connects fail \
             with 502; raise the hard limit (systemd LimitNOFILE=, compose ulimits: nofile:, \
             docker run --ulimit nofile=N:N, or ulimit -Hn as root) or lower [limits] \
             max_connections",
            limits.max_connections, limits.max_open_files
        )
    })
}

/// Whether a reload from `old` to `new` limits changes what is needed, so
/// that a shortfall is worth reporting again.
pub fn need_changed(old: &Limits, new: &Limits) -> bool {
    needed(old) != needed(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(conns: usize, files: usize) -> Limits {
        Limits {
            max_connections: conns,
            max_open_files: files,
            ..Limits::default()
        }
    }

    #[test]
    fn defaults_need_22048() {
        assert_eq!(needed(&Limits::default()), 22_048);
        assert_eq!(needed(&limits(1000, 1024)), 4048);
        assert_eq!(needed(&limits(usize::MAX, usize::MAX)), u64::MAX);
    }

    #[test]
    fn soft_is_raised_to_hard_never_above() {
        assert_eq!(raised_soft(1024, 4096), Some(4096));
        assert_eq!(raised_soft(4096, 4096), None);
        assert_eq!(raised_soft(1024, u64::MAX), Some(u64::MAX));
        // A soft limit above the hard one cannot exist; nothing to lower.
        assert_eq!(raised_soft(8192, 4096), None);
    }

    #[test]
    fn shortfall_names_limit_need_and_fix() {
        let w = shortfall(4096, &Limits::default()).expect("4096 < 22048");
        assert!(
            w.starts_with("file limit 4096 is below the 22048 this config needs"),
            "{w}"
        );
        assert!(w.contains("max_connections 10000"), "{w}");
        assert!(w.contains("LimitNOFILE"), "{w}");
        assert_eq!(shortfall(22_048, &Limits::default()), None);
        assert_eq!(shortfall(4096, &limits(1000, 1024)), None);
        assert!(shortfall(4047, &limits(1000, 1024)).is_some());
    }

    #[test]
    fn need_changes_with_either_limit() {
        let d = Limits::default();
        assert!(!need_changed(&d, &d));
        assert!(need_changed(&d, &limits(1000, 1024)));
        assert!(need_changed(&d, &limits(10_000, 10)));
        let timeouts = Limits {
            keepalive_timeout: std::time::Duration::from_secs(1),
            ..d
        };
        assert!(!need_changed(&d, &timeouts));
    }
}
