//! The process's file limit: raised at start from the soft `RLIMIT_NOFILE`
//! to the hard one ([`raise`], as Go does since 1.19 and nginx with
//! `worker_rlimit_nofile`), checked against what the config needs
//! ([`check`], the rule in [`routes::nofile`]), and exported as the
//! `duotone_open_files_limit` gauge.

use routes::config::Limits;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The soft file limit after [`raise`] (0 before it ran).
static LIMIT: AtomicU64 = AtomicU64::new(0);

/// `getrlimit(RLIMIT_NOFILE)`: (soft, hard).
fn get() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one `rlimit` through a pointer to a live,
    // writable local of that type; no other memory is touched.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc == 0 {
        Ok((lim.rlim_cur, lim.rlim_max))
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `setrlimit(RLIMIT_NOFILE)` with `soft` and `hard`.
fn set(soft: u64, hard: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit(2) only reads the `rlimit` behind a pointer to a
    // live local; it changes a process attribute, no memory.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Raises the soft file limit to the hard one (never above it: the hard
/// limit is the operator's) and returns the soft limit in effect, which is
/// also what [`limit`] and the gauge report. A failure is logged and leaves
/// the limit as it was. Children (a `duotone upgrade`'s new process) inherit
/// the raised limit.
pub fn raise() -> u64 {
    let (soft, hard) = match get() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("cannot read the file limit (RLIMIT_NOFILE): {e}");
            return 0;
        }
    };
    let now = match routes::nofile::raised_soft(soft, hard) {
        Some(to) => match set(to, hard) {
            Ok(()) => {
                tracing::info!(from = soft, to, "file limit raised to the hard limit");
                to
            }
            Err(e) => {
                tracing::warn!("cannot raise the file limit from {soft} to {to}: {e}");
                soft
            }
        },
        None => soft,
    };
    LIMIT.store(now, Relaxed);
    now
}

/// The soft file limit [`raise`] left (0 before it ran or when it could not
/// be read).
pub fn limit() -> u64 {
    LIMIT.load(Relaxed)
}

/// Logs a WARN and returns its text when the file limit is below what
/// `limits` need; none when it suffices or is unknown.
pub fn check(limits: &Limits) -> Option<String> {
    let limit = limit();
    if limit == 0 {
        return None;
    }
    let warning = routes::nofile::shortfall(limit, limits)?;
    tracing::warn!("{warning}");
    Some(warning)
}

/// The `duotone_open_files_limit` gauge: the soft file limit.
pub fn gauges() -> Vec<crate::metrics::StateGauge> {
    vec![crate::metrics::StateGauge {
        name: "duotone_open_files_limit",
        labels: vec![],
        value: limit() as f64,
    }]
}
