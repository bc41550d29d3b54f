//! Pause and resume: while a service is paused its new requests are held at
//! the edge (not refused) until a resume, up to a timeout and a bounded
//! queue. This is the rule; the proxy's one exchange waits by it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `[services.X] pause = { timeout, queue, retry_after }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PauseSpec {
    /// Longest a request is held; past it, 503 with `Retry-After`.
    pub timeout: Duration,
    /// Most requests held at once for the service; more are refused (503)
    /// at once.
    pub queue: u64,
    /// What `Retry-After` says on a refusal.
    pub retry_after: Duration,
}

impl Default for PauseSpec {
    fn default() -> Self {
        PauseSpec {
            timeout: Duration::from_secs(30),
            queue: 1000,
            retry_after: Duration::from_secs(5),
        }
    }
}

impl PauseSpec {
    /// `Retry-After` in whole seconds (at least 1, rounded up).
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }

    /// What a request held for `waited` does now, with its service
    /// `paused` or not.
    pub fn gate(&self, paused: bool, waited: Duration) -> Gate {
        if !paused {
            return Gate::Go;
        }
        match self.timeout.checked_sub(waited) {
            Some(left) if !left.is_zero() => Gate::Wait(left),
            _ => Gate::Refuse(Refusal::Timeout),
        }
    }
}

/// What a request to a paused service does now ([`PauseSpec::gate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Not paused (any more): proceed, to the color live now.
    Go,
    /// Wait for a resume, at most this much longer.
    Wait(Duration),
    /// Answer 503 with `Retry-After`.
    Refuse(Refusal),
}

/// Why a held request was answered 503 instead of being sent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It was held for the whole `timeout`.
    Timeout,
    /// `queue` requests were held already.
    Queue,
}

impl Refusal {
    /// The metric label: `timeout` or `queue`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Timeout => "timeout",
            Refusal::Queue => "queue",
        }
    }
}

/// Requests held for one service now, and refusals so far; shared across
/// table generations (like [`crate::ColorStats`]), so a request held under
/// one snapshot counts against the queue of the next.
#[derive(Debug, Default)]
pub struct Holds {
    held: AtomicU64,
    timed_out: AtomicU64,
    queue_full: AtomicU64,
}

impl Holds {
    /// Requests held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Refusals for `why` so far.
    pub fn refused(&self, why: Refusal) -> u64 {
        self.counter(why).load(Ordering::Relaxed)
    }

    fn counter(&self, why: Refusal) -> &AtomicU64 {
        match why {
            Refusal::Timeout => &self.timed_out,
            Refusal::Queue => &self.queue_full,
        }
    }

    /// Counts a refusal and returns it.
    pub fn refuse(&self, why: Refusal) -> Refusal {
        self.counter(why).fetch_add(1, Ordering::Relaxed);
        why
    }

    /// Takes a place in the queue: the guard gives it back when dropped.
    /// With `queue` requests held already, refused (and counted).
    pub fn enter(self: &Arc<Self>, queue: u64) -> Result<Held, Refusal> {
        let taken = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < queue).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Held(self.clone())),
            Err(_) => Err(self.refuse(Refusal::Queue)),
        }
    }
}

/// A request's place in a service's queue; freed when dropped.
#[derive(Debug)]
pub struct Held(Arc<Holds>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paused_request_waits_until_resumed_or_timed_out() {
        let spec = PauseSpec {
            timeout: Duration::from_secs(2),
            ..PauseSpec::default()
        };
        assert_eq!(spec.gate(false, Duration::ZERO), Gate::Go);
        // Resumed after the timeout, before the check: it goes.
        assert_eq!(spec.gate(false, Duration::from_secs(9)), Gate::Go);
        assert_eq!(
            spec.gate(true, Duration::from_millis(500)),
            Gate::Wait(Duration::from_millis(1500))
        );
        assert_eq!(
            spec.gate(true, Duration::from_secs(2)),
            Gate::Refuse(Refusal::Timeout)
        );
        assert_eq!(
            spec.gate(true, Duration::from_secs(3)),
            Gate::Refuse(Refusal::Timeout)
        );
        let none = PauseSpec {
            timeout: Duration::ZERO,
            ..spec
        };
        assert_eq!(
            none.gate(true, Duration::ZERO),
            Gate::Refuse(Refusal::Timeout)
        );
    }

    #[test]
    fn the_queue_is_bounded_and_places_are_given_back() {
        let holds = Arc::new(Holds::default());
        let a = holds.enter(2).unwrap();
        let b = holds.enter(2).unwrap();
        assert_eq!(holds.held(), 2);
        assert_eq!(holds.enter(2).unwrap_err(), Refusal::Queue);
        assert_eq!(holds.refused(Refusal::Queue), 1);
        drop(a);
        let c = holds.enter(2).unwrap();
        drop((b, c));
        assert_eq!(holds.held(), 0);
        assert_eq!(holds.enter(0).unwrap_err(), Refusal::Queue);
        assert_eq!(holds.refuse(Refusal::Timeout), Refusal::Timeout);
        assert_eq!(
            (
                holds.refused(Refusal::Queue),
                holds.refused(Refusal::Timeout)
            ),
            (2, 1)
        );
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let at = |ms| PauseSpec {
            retry_after: Duration::from_millis(ms),
            ..PauseSpec::default()
        };
        assert_eq!(PauseSpec::default().retry_after_secs(), 5);
        assert_eq!(at(1500).retry_after_secs(), 2);
        assert_eq!(at(0).retry_after_secs(), 1);
        assert_eq!(at(3000).retry_after_secs(), 3);
    }
}
