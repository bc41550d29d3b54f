// Duotone patch (this whole file): spreading accepted connections evenly over
// the listener tasks (one per worker thread) of a service.
//
// Every listener task accepts on its own `dup` of the listening socket, and
// whichever worker wakes first wins the race to `accept`: under a burst of new
// connections one worker often got all of them (32 of 32 in some runs), and a
// connection stays on the worker that accepted it for its whole life. Here the
// accepting task hands a connection to the task with the fewest open
// connections when that one has fewer than itself, so the workers' shares
// differ by at most one (HAProxy balances its threads the same way).

use crate::protocols::l4::listener::Portable;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// A connection on its way from the task that accepted it to another one,
/// already counted as open there.
pub(crate) type Handoff = (Portable, Open);

/// One counter per cache line, so workers do not contend on each other's.
#[repr(align(64))]
#[derive(Debug, Default)]
struct Slot(AtomicUsize);

/// Open connections per listener task of one service (all its endpoints).
#[derive(Debug)]
pub(crate) struct Load {
    open: Box<[Slot]>,
    choosing: Mutex<()>,
}

impl Load {
    /// Counters for `tasks` listener tasks.
    pub fn new(tasks: usize) -> Arc<Load> {
        Arc::new(Load {
            open: (0..tasks.max(1)).map(|_| Slot::default()).collect(),
            choosing: Mutex::new(()),
        })
    }

    /// Chooses the task to serve a connection accepted by task `me` and
    /// counts it there: the one with the fewest open connections if it has
    /// fewer than `me`, else `me` itself. Choices are made one at a time, so
    /// the tasks' counts never differ by more than one through accepts alone.
    pub fn assign(self: &Arc<Self>, me: usize) -> (usize, Open) {
        let _one_at_a_time = self.choosing.lock();
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

    /// Counts one open connection on task `task` until the guard drops.
    fn open(self: &Arc<Self>, task: usize) -> Open {
        let task = task.min(self.open.len() - 1);
        self.open[task].0.fetch_add(1, Ordering::Relaxed);
        Open {
            load: self.clone(),
            task,
        }
    }
}

/// One counted open connection.
#[derive(Debug)]
pub(crate) struct Open {
    load: Arc<Load>,
    task: usize,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.load.open[self.task].0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What listener task `me` of one endpoint needs to spread connections: the
/// service's counters, every task's inbox, and its own.
pub(crate) struct Spread {
    pub load: Arc<Load>,
    pub me: usize,
    pub peers: Arc<[UnboundedSender<Handoff>]>,
    pub inbox: UnboundedReceiver<Handoff>,
}

/// The [`Spread`] of each of an endpoint's `tasks` listener tasks.
pub(crate) fn spreads(load: &Arc<Load>, tasks: usize) -> Vec<Spread> {
    let (peers, inboxes): (Vec<_>, Vec<_>) = (0..tasks).map(|_| unbounded_channel()).unzip();
    let peers: Arc<[UnboundedSender<Handoff>]> = peers.into();
    inboxes
        .into_iter()
        .enumerate()
        .map(|(me, inbox)| Spread {
            load: load.clone(),
            me,
            peers: peers.clone(),
            inbox,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(load: &Load) -> Vec<usize> {
        load.open
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .collect()
    }

    #[test]
    fn hands_over_only_to_a_task_with_fewer() {
        let load = Load::new(3);
        // all equal: keep it
        let (to, a) = load.assign(1);
        assert_eq!(to, 1);
        // task 1 has one more than 0 and 2: the first of those
        let (to, b) = load.assign(1);
        assert_eq!(to, 0);
        let (to, c) = load.assign(0);
        assert_eq!(to, 2);
        assert_eq!(counts(&load), [1, 1, 1]);
        drop(b);
        assert_eq!(load.assign(2).0, 0);
        drop((a, c));
        assert_eq!(counts(&load), [0, 0, 0]);
    }

    #[test]
    fn accepts_alone_keep_the_tasks_within_one() {
        let load = Load::new(2);
        let held: Vec<Open> = (0..15).map(|i| load.assign(i % 3 % 2).1).collect();
        assert_eq!(counts(&load), [8, 7]);
        drop(held);
    }

    #[test]
    fn a_single_task_keeps_everything() {
        let load = Load::new(1);
        let held: Vec<Open> = (0..5).map(|_| load.assign(0).1).collect();
        assert_eq!(counts(&load), [5]);
        drop(held);
    }
}
