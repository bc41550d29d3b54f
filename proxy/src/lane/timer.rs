//! Time limits on the lane's waits. A future that is ready at once never
//! touches a timer; one that must wait either arms a one-off timeout
//! ([`within`]) or re-arms its connection's [`Timer`].

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Polls `f` once: its output if it is ready at once.
async fn ready_now<F: Future>(mut f: Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| match f.as_mut().poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Runs `f` with a time limit, using a one-off timer if it has to wait.
pub async fn within<F: Future>(limit: Duration, f: F) -> Result<F::Output, ()> {
    let mut f = std::pin::pin!(f);
    if let Some(v) = ready_now(f.as_mut()).await {
        return Ok(v);
    }
    tokio::time::timeout(limit, f).await.map_err(|_| ())
}

/// A timer reused for one connection's successive waits. Moving its
/// deadline later only records the new time (tokio leaves the entry in its
/// timer wheel and moves it when the old deadline comes round), so each
/// wait costs a clock read instead of a wheel insertion and removal.
/// Created on the first wait that needs it.
#[derive(Default)]
pub struct Timer(Option<Pin<Box<Sleep>>>);

impl Timer {
    /// Runs `f` for at most `limit`: `Err` when the time ran out first.
    pub async fn within<F: Future>(&mut self, limit: Duration, f: F) -> Result<F::Output, ()> {
        let mut f = std::pin::pin!(f);
        if let Some(v) = ready_now(f.as_mut()).await {
            return Ok(v);
        }
        let deadline = Instant::now() + limit;
        let sleep = match &mut self.0 {
            Some(sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => self.0.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = f.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            sleep.as_mut().poll(cx).map(Err)
        })
        .await
    }
}

impl Timer {
    /// Sets the timer to expire `limit` from now (for [`Timer::poll_expired`]).
    pub fn start(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        match &mut self.0 {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.0 = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Ready once the time set by the last [`Timer::start`] has passed
    /// (never, before any).
    pub fn poll_expired(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        match &mut self.0 {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Timer;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_reused_timer_enforces_each_limit_afresh() {
        let mut timer = Timer::default();
        // Ready at once: no timer needed.
        assert_eq!(
            timer.within(Duration::from_secs(1), async { 7 }).await,
            Ok(7)
        );
        // Finishes inside its limit (the clock is paused and auto-advances).
        let quick = tokio::time::sleep(Duration::from_millis(500));
        assert_eq!(timer.within(Duration::from_secs(1), quick).await, Ok(()));
        // A later, longer limit re-arms the same timer...
        let slow = tokio::time::sleep(Duration::from_secs(30));
        assert_eq!(timer.within(Duration::from_secs(10), slow).await, Err(()));
        // ...and so does a shorter one after it fired.
        let slow = tokio::time::sleep(Duration::from_secs(30));
        let start = tokio::time::Instant::now();
        assert_eq!(timer.within(Duration::from_secs(2), slow).await, Err(()));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        // A shorter limit than the one still armed takes effect too.
        let armed = tokio::time::sleep(Duration::from_secs(1));
        assert_eq!(timer.within(Duration::from_secs(60), armed).await, Ok(()));
        let pending = std::future::pending::<()>();
        let start = tokio::time::Instant::now();
        assert_eq!(timer.within(Duration::from_secs(3), pending).await, Err(()));
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }
}
