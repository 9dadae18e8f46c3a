//! Root-task gating: memory backpressure at the source.
//!
//! A graph's root tasks that only produce data (they read nothing) are all ready at once, and a
//! runtime that queues them all lets workers run producer after producer while the consumers
//! of what was produced wait behind them: the working set balloons to the whole graph's, and
//! past a memory limit every extra tile is spilled and read back (the "root task
//! overproduction" of Dask distributed #2602, fixed there by queuing root tasks on the
//! scheduler). Under a memory limit hexec holds such producers back and releases them a few
//! at a time: up to `slots` in flight (one round of work for every worker) while memory is
//! below the high watermark, and one at a time above it, so that consumers, queued as soon as
//! their inputs exist, run first and free memory.
//!
//! Invariants:
//! - every held root is released exactly once (`next` is a cursor claimed by `fetch_add`);
//! - a release is attempted at the start and after every task completes, and it always
//!   succeeds when no held root is in flight, so a run never waits on a held root with no
//!   task left to complete (no deadlock, whatever the memory pressure);
//! - the gate holds no locks and does no I/O; the caller places what it releases.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The held roots of one run.
pub(crate) struct RootGate {
    /// Held roots in release order (the order the policy would have placed them).
    held: Vec<u32>,
    /// Per task: whether it is a held root.
    is_held: Vec<bool>,
    /// Index of the next root to release.
    next: AtomicUsize,
    /// Released held roots not yet finished.
    in_flight: AtomicUsize,
    /// How many may be in flight while memory is not under pressure.
    slots: usize,
}

impl RootGate {
    /// Holds `held` (tasks of a graph of `tasks` tasks), releasing up to `slots` at a time.
    pub fn new(held: Vec<u32>, tasks: usize, slots: usize) -> Self {
        let mut is_held = vec![false; tasks];
        for &t in &held {
            is_held[t as usize] = true;
        }
        RootGate {
            held,
            is_held,
            next: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            slots: slots.max(1),
        }
    }

    /// Slots for `workers` workers of which `gpus` are GPUs: one task per worker, and a full
    /// batch per GPU (GPU workers submit up to [`crate::topology::MAX_BATCH`] tasks at once).
    pub fn slots(workers: usize, gpus: usize) -> usize {
        workers + (crate::topology::MAX_BATCH - 1) * gpus
    }

    /// Whether `task` is one of the held roots.
    pub fn holds(&self, task: u32) -> bool {
        self.is_held[task as usize]
    }

    /// A held root finished (completed, failed or skipped).
    pub fn finished(&self, task: u32) {
        if self.holds(task) {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Releases held roots through `place` while the limit allows: `slots` in flight, or one
    /// when `pressure` (some limited memory is above its high watermark).
    pub fn release(&self, pressure: bool, mut place: impl FnMut(u32)) {
        if self.next.load(Ordering::Relaxed) >= self.held.len() {
            return;
        }
        let limit = if pressure { 1 } else { self.slots };
        loop {
            let claimed = self
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < limit).then_some(n + 1));
            if claimed.is_err() {
                return;
            }
            let i = self.next.fetch_add(1, Ordering::AcqRel);
            match self.held.get(i) {
                Some(&task) => place(task),
                None => {
                    self.in_flight.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
            }
        }
    }

    /// Held roots not released yet.
    #[cfg(test)]
    fn left(&self) -> usize {
        self.held.len().saturating_sub(self.next.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_up_to_slots_then_one_per_finish() {
        let gate = RootGate::new((0..10).collect(), 12, 3);
        let mut placed = Vec::new();
        gate.release(false, |t| placed.push(t));
        assert_eq!(placed, vec![0, 1, 2]);
        gate.release(false, |t| placed.push(t));
        assert_eq!(placed.len(), 3, "no slot is free");
        gate.finished(1);
        gate.finished(11); // not a held root: changes nothing
        gate.release(false, |t| placed.push(t));
        assert_eq!(placed, vec![0, 1, 2, 3]);
    }

    #[test]
    fn pressure_allows_one_in_flight_and_never_blocks_an_idle_run() {
        let gate = RootGate::new(vec![4, 2, 7], 8, 8);
        let mut placed = Vec::new();
        gate.release(true, |t| placed.push(t));
        assert_eq!(placed, vec![4], "under pressure one root at a time");
        gate.release(true, |t| placed.push(t));
        assert_eq!(placed, vec![4]);
        gate.finished(4);
        gate.release(true, |t| placed.push(t));
        assert_eq!(placed, vec![4, 2], "nothing in flight: a root always goes");
        gate.finished(2);
        gate.release(false, |t| placed.push(t));
        gate.release(false, |t| placed.push(t));
        assert_eq!(placed, vec![4, 2, 7]);
        assert_eq!(gate.left(), 0);
        assert_eq!(
            gate.in_flight.load(Ordering::Relaxed),
            1,
            "an exhausted cursor gives its claim back"
        );
    }

    #[test]
    fn concurrent_releases_place_each_root_once() {
        let n = 10_000u32;
        let gate = RootGate::new((0..n).collect(), n as usize, 4);
        let placed = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| loop {
                    let mut mine = Vec::new();
                    gate.release(false, |t| mine.push(t));
                    for &t in &mine {
                        gate.finished(t);
                    }
                    let done = mine.is_empty() && gate.left() == 0;
                    placed.lock().unwrap().extend(mine);
                    if done {
                        break;
                    }
                });
            }
        });
        let mut placed = placed.into_inner().unwrap();
        placed.sort_unstable();
        assert_eq!(placed, (0..n).collect::<Vec<_>>());
    }
}
