//! Holding the requests of a paused service until it is resumed
//! ([`routes::pause`] has the rule). No lock on the request path: a held
//! request waits on the control plane's `Notify`, which every snapshot
//! store wakes, and then reads the current snapshot again.

use super::{Control, Snapshot};
use crate::lane::client::Failure;
use routes::pause::{Gate, Refusal};
use std::sync::Arc;
use tokio::time::Instant;

/// A held request that was not sent on: answer [`Refused::failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Why.
    pub why: Refusal,
    /// Seconds for `Retry-After`.
    pub retry_after: u64,
}

impl Refused {
    /// The answer: 503 with `Retry-After`, and the 503 page of site `site`
    /// (index in `snap`) when it has one.
    pub fn failure<'a>(&self, snap: &'a Snapshot, site: usize) -> Failure<'a> {
        Failure {
            retry_after: Some(self.retry_after),
            ..snap.pages.failure(Some(site), 503)
        }
    }
}

/// Waits while service `name` is paused: returns the snapshot to send the
/// request with once it is not (the current one then: a flip during the
/// pause sends the request to the new live color), or the refusal when it
/// was held for its timeout or the queue was full. A held request takes a
/// place in the service's queue, and counts as in flight for no color.
pub async fn hold(control: &Control, name: &str) -> Result<Arc<Snapshot>, Refused> {
    let start = Instant::now();
    let mut place = None;
    loop {
        // Registered before the snapshot is read, so a store (a resume)
        // between the read and the wait still wakes this request.
        let changed = control.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let snap = control.load();
        // A service gone by a reload: the exchange answers for it.
        let Some(svc) = snap.table.service(name) else {
            return Ok(snap);
        };
        let refused = |why| Refused {
            why,
            retry_after: svc.pause.retry_after_secs(),
        };
        let left = match svc.pause.gate(svc.paused, start.elapsed()) {
            Gate::Go => {
                if place.is_some() {
                    tracing::debug!(
                        service = name,
                        held_ms = start.elapsed().as_millis() as u64,
                        "resumed: held request sent on"
                    );
                }
                return Ok(snap);
            }
            Gate::Refuse(why) => return Err(refused(svc.holds.refuse(why))),
            Gate::Wait(left) => left,
        };
        if place.is_none() {
            place = Some(svc.holds.enter(svc.pause.queue).map_err(refused)?);
        }
        drop(snap);
        // Woken by any change, or at the deadline: either way, look again.
        let _ = tokio::time::timeout(left, changed).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Source;
    use std::time::Duration;

    /// A control plane for `[services.api]` (blue live, green idle) with
    /// `extra` in the service, its state under `dir`.
    fn control(dir: &str, extra: &str) -> Arc<Control> {
        let text = format!(
            "[server]\nhttp = \"127.0.0.1:1\"\nstate_dir = \"{dir}\"\n\
             [services.api]\nlive = \"blue\"\ncolors.blue = [\"127.0.0.1:1\"]\n\
             colors.green = [\"127.0.0.1:2\"]\n{extra}\n"
        );
        let config = routes::load("t.toml", &text, |_| None).unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::new().unwrap());
        let source = Source::Embedded {
            name: "t.toml".into(),
            text,
        };
        Control::new(source, config, metrics, None).unwrap()
    }

    /// A state dir, removed when dropped.
    struct StateDir(std::path::PathBuf);

    impl StateDir {
        fn new(name: &str) -> StateDir {
            StateDir(std::env::temp_dir().join(format!(
                "duotone-pause-{name}-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            )))
        }

        fn path(&self) -> String {
            self.0.display().to_string()
        }
    }

    impl Drop for StateDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn held(c: &Control) -> u64 {
        c.load().table.service("api").unwrap().holds.held()
    }

    #[tokio::test]
    async fn a_held_request_goes_on_with_the_snapshot_of_the_resume() {
        let dir = StateDir::new("resume");
        let c = control(&dir.path(), "");
        // Not paused: at once, holding nothing.
        let snap = hold(&c, "api").await.unwrap();
        assert!(!snap.table.service("api").unwrap().paused);
        c.pause("api", true).unwrap();
        let waiting = tokio::spawn({
            let c = c.clone();
            async move { hold(&c, "api").await }
        });
        while held(&c) == 0 {
            tokio::task::yield_now().await;
        }
        // A flip keeps the pause: still held.
        c.flip("api", Some("green"), true).unwrap();
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(held(&c), 1);
        c.pause("api", false).unwrap();
        let snap = waiting.await.unwrap().unwrap();
        let svc = snap.table.service("api").unwrap();
        assert_eq!(svc.pools[svc.live].color.as_str(), "green");
        assert_eq!(held(&c), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn held_past_the_timeout_or_over_the_queue_is_refused() {
        let dir = StateDir::new("refuse");
        let c = control(
            &dir.path(),
            "pause = { timeout = \"2s\", queue = 1, retry_after = \"9s\" }",
        );
        c.pause("api", true).unwrap();
        let first = tokio::spawn({
            let c = c.clone();
            async move { hold(&c, "api").await }
        });
        while held(&c) == 0 {
            tokio::task::yield_now().await;
        }
        // The queue (1) is full: refused at once.
        let Err(refused) = hold(&c, "api").await else {
            panic!("not refused");
        };
        assert_eq!(
            refused,
            Refused {
                why: Refusal::Queue,
                retry_after: 9
            }
        );
        let start = Instant::now();
        let Err(refused) = first.await.unwrap() else {
            panic!("not refused");
        };
        assert_eq!(refused.why, Refusal::Timeout);
        assert!(start.elapsed() >= Duration::from_millis(1900));
        assert_eq!(held(&c), 0);
        let svc_holds = c.load().table.service("api").unwrap().holds.clone();
        assert_eq!(
            (
                svc_holds.refused(Refusal::Queue),
                svc_holds.refused(Refusal::Timeout)
            ),
            (1, 1)
        );
        let snap = c.load();
        let f = refused.failure(&snap, 0);
        assert_eq!((f.status, f.retry_after), (503, Some(9)));
    }
}
