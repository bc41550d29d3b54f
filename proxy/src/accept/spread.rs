//! Spreading accepted connections evenly over the worker threads.
//!
//! Every worker accepts on its own `dup` of each listening socket, and
//! whichever worker wakes first wins the race to `accept`: under a burst of
//! new connections one worker often got all of them (16 keep-alive
//! connections opened together split 16/0, 0/16, 14/2, 12/4 or 11/5 in five
//! runs), and a connection stays on the worker that accepted it for its
//! whole life. Here the accepting worker hands a connection to the worker
//! with the fewest open connections when that one has fewer than itself, so
//! the workers' shares differ by at most one through accepts alone (HAProxy
//! balances its threads the same way).
//!
//! The counts are per worker across all the service's endpoints, and a
//! connection stops counting as its close begins (`super::counted`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One counter per cache line, so workers do not contend on each other's.
#[repr(align(64))]
#[derive(Debug, Default)]
struct Slot(AtomicUsize);

/// Open connections per worker of one accept service.
#[derive(Debug)]
pub struct Load {
    open: Box<[Slot]>,
    choosing: Mutex<()>,
}

impl Load {
    /// Counters for `workers` workers (at least one).
    pub fn new(workers: usize) -> Arc<Load> {
        Arc::new(Load {
            open: (0..workers.max(1)).map(|_| Slot::default()).collect(),
            choosing: Mutex::new(()),
        })
    }

    /// Chooses the worker to serve a connection accepted by worker `me` and
    /// counts it there: the one with the fewest open connections if it has
    /// fewer than `me`, else `me` itself. Choices are made one at a time, so
    /// the workers' counts never differ by more than one through accepts
    /// alone.
    pub fn assign(self: &Arc<Self>, me: usize) -> (usize, Open) {
        // A poisoned lock only means another chooser panicked: the counters
        // are atomics and stay consistent, so carry on.
        let _one_at_a_time = self.choosing.lock().unwrap_or_else(|p| p.into_inner());
        let to = self.pick(me);
        (to, self.open(to))
    }

    fn pick(&self, me: usize) -> usize {
        let count = |i: usize| {
            self.open
                .get(i)
                .map_or(usize::MAX, |s| s.0.load(Ordering::Relaxed))
        };
        let mine = count(me);
        (0..self.open.len())
            .min_by_key(|&i| count(i))
            .filter(|&i| count(i) < mine)
            .unwrap_or(me)
    }

    /// Counts one open connection on `worker` until the guard drops.
    fn open(self: &Arc<Self>, worker: usize) -> Open {
        let worker = worker.min(self.open.len() - 1);
        self.open[worker].0.fetch_add(1, Ordering::Relaxed);
        Open {
            load: self.clone(),
            worker,
        }
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.open.len()
    }

    /// Open connections per worker now.
    pub fn counts(&self) -> Vec<usize> {
        self.open
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .collect()
    }
}

/// One counted open connection; it stops counting when dropped.
#[derive(Debug)]
pub struct Open {
    load: Arc<Load>,
    worker: usize,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.load.open[self.worker]
            .0
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_over_only_to_a_worker_with_fewer() {
        let load = Load::new(3);
        // all equal: keep it
        let (to, a) = load.assign(1);
        assert_eq!(to, 1);
        // worker 1 has one more than 0 and 2: the first of those
        let (to, b) = load.assign(1);
        assert_eq!(to, 0);
        let (to, c) = load.assign(0);
        assert_eq!(to, 2);
        assert_eq!(load.counts(), [1, 1, 1]);
        drop(b);
        assert_eq!(load.assign(2).0, 0);
        drop((a, c));
        assert_eq!(load.counts(), [0, 0, 0]);
    }

    #[test]
    fn accepts_alone_keep_the_workers_within_one() {
        let load = Load::new(2);
        let held: Vec<Open> = (0..15).map(|i| load.assign(i % 3 % 2).1).collect();
        assert_eq!(load.counts(), [8, 7]);
        drop(held);
    }

    #[test]
    fn a_single_worker_keeps_everything() {
        let load = Load::new(1);
        let held: Vec<Open> = (0..5).map(|_| load.assign(0).1).collect();
        assert_eq!(load.counts(), [5]);
        drop(held);
    }
}
