//! PID 1 after an in-place upgrade (a container whose entrypoint is
//! `duotone run`): the container lives as long as PID 1, so the old process,
//! once it has handed its listeners over and drained, does not exit but
//! stays as the container's init: it forwards the signals a container
//! receives (`docker stop`'s SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR2) to
//! the process that serves now (named by the pid file), reaps the processes
//! that end under it (orphans are reparented to PID 1), and exits with the
//! serving process's status when that one ends for good.

use super::pidfile;
use std::path::Path;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// Whether this process is the init of its PID namespace.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Stays as init while a successor (the pid file's process, other than this
/// one) runs; exits the process with its status. Returns at once when there
/// is no successor.
pub async fn stay(state_dir: &Path) {
    let me = std::process::id() as i32;
    let Some(mut main) = pidfile::read(state_dir)
        .ok()
        .flatten()
        .filter(|p| *p != me && pidfile::alive(*p))
    else {
        return;
    };
    tracing::info!(
        pid = main,
        "handed over: staying as PID 1, forwarding signals to the serving process"
    );
    if let Err(e) = std::fs::write(state_dir.join(pidfile::INIT_MARK), format!("{main}\n")) {
        tracing::warn!("writing {}: {e}", pidfile::INIT_MARK);
    }
    let kinds = [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined2(),
    ];
    let mut streams = Vec::new();
    for kind in kinds {
        match signal(kind) {
            Ok(s) => streams.push((kind.as_raw_value(), s)),
            Err(e) => tracing::error!("PID 1: cannot forward signal {}: {e}", kind.as_raw_value()),
        }
    }
    loop {
        // Any signal that arrived since the last turn goes on.
        let any = std::future::poll_fn(|cx| {
            for (sig, s) in streams.iter_mut() {
                if s.poll_recv(cx).is_ready() {
                    return std::task::Poll::Ready(*sig);
                }
            }
            std::task::Poll::Pending
        });
        let got = tokio::time::timeout(Duration::from_millis(50), any)
            .await
            .ok();
        if let Some(sig) = got {
            let to = pidfile::read(state_dir)
                .ok()
                .flatten()
                .filter(|p| *p != me)
                .unwrap_or(main);
            tracing::info!(pid = to, signal = sig, "PID 1: forwarding a signal");
            // SAFETY: kill(2) on the serving process's pid; no memory is involved.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(to, sig);
            }
        }
        let mut ended = None;
        loop {
            let mut status = 0;
            // SAFETY: waitpid(2) writes the status into a local integer.
            #[allow(unsafe_code)]
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == main {
                ended = Some(if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                });
            }
        }
        // The serving process may not be a child (not yet reparented): then
        // it is gone when it no longer runs.
        if ended.is_none() && !pidfile::alive(main) {
            ended = Some(0);
        }
        if let Some(code) = ended {
            match pidfile::read(state_dir).ok().flatten() {
                // Upgraded again: follow the next one.
                Some(next) if next != main && next != me && pidfile::alive(next) => main = next,
                _ => {
                    tracing::info!(code, "PID 1: the serving process ended; exiting");
                    std::process::exit(code);
                }
            }
        }
    }
}
