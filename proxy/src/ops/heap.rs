//! Giving a worker's freed memory back to the system once it goes quiet.
//!
//! mimalloc returns the pages of freed objects to the system (a purge) 10 ms
//! after they empty, but only when the thread next calls into the allocator.
//! A worker whose last requests end and whose connections then sit idle makes
//! no such call, so the request state it freed stays resident for as long as
//! it is quiet (up to ≈ 3 KiB per idle HTTP/1.1 connection in
//! `benches/load/idle_conns.py`). [`collect_while_running`] asks mimalloc once
//! a second to run the purges that are due: a walk over the thread's heap
//! pages, microseconds, and nothing at all when the binary is built with
//! another allocator.

use std::time::Duration;

/// How often a worker asks mimalloc to purge.
const EVERY: Duration = Duration::from_secs(1);

/// Runs the purges due on this thread once per [`EVERY`], for ever: spawn it
/// on each worker's runtime.
pub async fn collect_while_running() {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        collect();
    }
}

/// One `mi_collect(false)`: frees this thread's empty pages and runs the
/// delayed purges that are due (not forced: nothing still in use moves).
#[allow(unsafe_code)]
fn collect() {
    // SAFETY: `mi_collect` takes no pointers and may be called on any thread
    // at any time; without mimalloc as the allocator its heap is empty.
    unsafe { libmimalloc_sys::mi_collect(false) };
}
