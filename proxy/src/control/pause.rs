//! Holding the requests of a paused service until it is resumed
//! ([`routes::pause`] has the rule). No lock on the request path: a held
//! request waits on the control plane's `Notify`, which every snapshot
//! store wakes, and then reads the current snapshot again.

use super::{Control, Snapshot};
use crate::lane::client::Failure;
use routes::pause::{Gate, Refusal};
use std::sync::Arc;
use std::time::Instant;

/// A held request that was not sent on: answer [`Refused::failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Why.
    pub why: Refusal,
    /// Seconds for `Retry-After`.
    pub retry_after: u64,
}

impl Refused {
    /// The answer: 503 with `Retry-After`.
    pub fn failure(&self) -> Failure<'static> {
        Failure {
            status: 503,
            retry_after: Some(self.retry_after),
            page: None,
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
