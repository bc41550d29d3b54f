//! A shared bound on the files held open at once.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A limit on open files, shared by every clone (and every
/// [`FileServer`](crate::FileServer) given a clone through
/// [`FileOptions::open_files`](crate::FileOptions::open_files)).
///
/// Each file lookup and each streamed [`FileBody`](crate::FileBody) holds
/// one permit; lookups beyond the limit wait (in FIFO order) for one.
#[derive(Clone)]
pub struct OpenFiles {
    shared: Arc<Shared>,
}

struct Shared {
    sem: Arc<Semaphore>,
    limit: usize,
    waiting: AtomicUsize,
}

/// One held permit, released when dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    _permit: OwnedSemaphorePermit,
}

impl OpenFiles {
    /// A bound of `limit` open files (0 is taken as 1).
    pub fn new(limit: usize) -> OpenFiles {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        OpenFiles {
            shared: Arc::new(Shared {
                sem: Arc::new(Semaphore::new(limit)),
                limit,
                waiting: AtomicUsize::new(0),
            }),
        }
    }

    /// The bound.
    pub fn limit(&self) -> usize {
        self.shared.limit
    }

    /// Permits held now (lookups running plus streamed bodies alive).
    pub fn in_use(&self) -> usize {
        self.shared.limit - self.shared.sem.available_permits()
    }

    /// Requests waiting for a permit now.
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::Relaxed)
    }

    /// Waits for a permit. `None` only if the semaphore was closed, which
    /// never happens.
    pub(crate) async fn acquire(&self) -> Option<Permit> {
        let sem = &self.shared.sem;
        if let Ok(permit) = sem.clone().try_acquire_owned() {
            return Some(Permit { _permit: permit });
        }
        let _waiting = Waiting::enter(&self.shared.waiting);
        let permit = sem.clone().acquire_owned().await.ok()?;
        Some(Permit { _permit: permit })
    }
}

impl fmt::Debug for OpenFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenFiles")
            .field("limit", &self.limit())
            .field("in_use", &self.in_use())
            .field("waiting", &self.waiting())
            .finish()
    }
}

/// Counts one waiter for as long as it lives (so a cancelled wait is
/// uncounted too).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn counts_permits_and_waiters_including_cancelled_ones() {
        let open = OpenFiles::new(0);
        assert_eq!((open.limit(), open.in_use(), open.waiting()), (1, 0, 0));
        let held = open.acquire().await.expect("permit");
        assert_eq!(open.in_use(), 1);

        let other = open.clone();
        let task = tokio::spawn(async move { other.acquire().await.is_some() });
        until("a waiter", || open.waiting() == 1).await;
        task.abort();
        assert!(task.await.expect_err("aborted").is_cancelled());
        assert_eq!((open.in_use(), open.waiting()), (1, 0));

        let other = open.clone();
        let task = tokio::spawn(async move { other.acquire().await.is_some() });
        until("a waiter", || open.waiting() == 1).await;
        drop(held);
        assert!(task.await.expect("join"));
        assert_eq!((open.in_use(), open.waiting()), (0, 0));
        assert_eq!(
            format!("{open:?}"),
            "OpenFiles { limit: 1, in_use: 0, waiting: 0 }"
        );
    }
}
