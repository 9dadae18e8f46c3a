//! The end of a run as one latch: tasks left, whether the run is over, whether it was
//! stopped early. Every way a run ends — its last task finishing, a final failure or a
//! cancellation stopping it, a worker failing inside hexec, the workers all gone — goes
//! through here, which sets the flags and wakes the parked workers in that order, so a
//! worker never parks past the end.
//!
//! Invariants: `done` goes false → true once; once `stop` returns, `stopped` implies `done`
//! (it is set just before); both are set before the wake-up (`SeqCst`, paired with the sleep protocol's announcement, see `sleep.rs`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

use super::sleep::Sleep;

pub(crate) struct RunEnd {
    remaining: CachePadded<AtomicUsize>,
    done: AtomicBool,
    stopped: AtomicBool,
}

impl RunEnd {
    /// A run of `tasks` tasks (over at once when there are none).
    pub fn new(tasks: usize) -> Self {
        RunEnd {
            remaining: CachePadded::new(AtomicUsize::new(tasks)),
            done: AtomicBool::new(tasks == 0),
            stopped: AtomicBool::new(false),
        }
    }

    /// A task finished (completed, failed for good or skipped); the last one ends the run.
    #[inline]
    pub fn task_finished(&self, sleep: &Sleep) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.end(sleep);
        }
    }

    /// Stops the run early: workers start nothing more and leave once their current work is
    /// done.
    pub fn stop(&self, sleep: &Sleep) {
        self.stopped.store(true, Ordering::SeqCst);
        self.end(sleep);
    }

    /// Ends the run without stopping it: the workers have all left, or one failed inside
    /// hexec (the others must not wait for it).
    pub fn end(&self, sleep: &Sleep) {
        self.done.store(true, Ordering::SeqCst);
        sleep.wake_all();
    }

    /// Whether the run is over (for waits: `SeqCst`, see the sleep protocol).
    #[inline]
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// Whether the run was stopped early.
    #[inline]
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Tasks not finished yet (the watchdog's measure of progress).
    #[inline]
    pub fn remaining(&self) -> usize {
        self.remaining.load(Ordering::Relaxed)
    }
}
