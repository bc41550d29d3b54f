//! Giving a worker's freed memory back to the system once it goes quiet.
//!
//! mimalloc returns the pages of freed objects to the system (a purge) 10 ms
//! after they empty, but only when the thread next calls into the allocator.
//! A worker whose last requests end and whose connections then sit idle makes
//! no such call, so the request state it freed stays resident for as long as
//! it is quiet (up to ≈ 3 KiB per idle HTTP/1.1 connection in
//! `benches/load/idle_conns.py`). Each worker calls [`collect`] once
//! a second to run the purges that are due: a walk over the thread's heap
//! pages, microseconds, and nothing at all when the binary is built with
//! another allocator.

/// One `mi_collect(false)`: frees this thread's empty pages and runs the
/// delayed purges that are due (not forced: nothing still in use moves).
#[allow(unsafe_code)]
pub fn collect() {
    // SAFETY: `mi_collect` takes no pointers and may be called on any thread
    // at any time; without mimalloc as the allocator its heap is empty.
    unsafe { libmimalloc_sys::mi_collect(false) };
}
