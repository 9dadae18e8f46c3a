//! Parking idle workers without losing wake-ups.
//!
//! Protocol (Dekker-style, all flags `SeqCst`):
//! - a worker that found nothing *announces* (`sleeping[w] = true`, `num_sleeping += 1`),
//!   searches the queues once more, and only then parks;
//! - a pusher publishes its task, issues a `SeqCst` fence, and if anyone sleeps, clears one
//!   candidate's flag and unparks it.
//!
//! Either the pusher sees the announcement, or the worker's last search sees the task, so a
//! task never waits for a sleeping worker that could run it. `park_timeout` adds a bound as a
//! second line of defence: a missed wake-up would cost a few milliseconds, never a hang.

use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::topology::WorkerId;

const PARK_TIMEOUT: Duration = Duration::from_millis(10);

pub(crate) struct Sleep {
    sleeping: Vec<CachePadded<AtomicBool>>,
    threads: Vec<OnceLock<Thread>>,
    num_sleeping: CachePadded<AtomicUsize>,
}

impl Sleep {
    pub fn new(workers: usize) -> Self {
        Sleep {
            sleeping: (0..workers).map(|_| CachePadded::new(AtomicBool::new(false))).collect(),
            threads: (0..workers).map(|_| OnceLock::new()).collect(),
            num_sleeping: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    /// Called by each worker thread once, before it may sleep.
    pub fn register(&self, w: WorkerId) {
        let _ = self.threads[w.index()].set(std::thread::current());
    }

    /// First half of going to sleep; the caller must search again, then `park` or `cancel`.
    pub fn announce(&self, w: WorkerId) {
        self.sleeping[w.index()].store(true, SeqCst);
        self.num_sleeping.fetch_add(1, SeqCst);
        fence(SeqCst);
    }

    /// Withdraws an announcement (the second search found work).
    pub fn cancel(&self, w: WorkerId) {
        if self.sleeping[w.index()].swap(false, SeqCst) {
            self.num_sleeping.fetch_sub(1, SeqCst);
        }
    }

    /// Parks until woken or the timeout; the caller searches again afterwards.
    pub fn park(&self, w: WorkerId) {
        if self.sleeping[w.index()].load(SeqCst) {
            std::thread::park_timeout(PARK_TIMEOUT);
        }
        self.cancel(w);
    }

    /// Wakes one sleeping worker among `candidates`, if any sleeps. Call after publishing.
    #[inline]
    pub fn wake_one(&self, candidates: &[WorkerId]) {
        fence(SeqCst);
        if self.num_sleeping.load(SeqCst) == 0 {
            return;
        }
        for &w in candidates {
            if self.sleeping[w.index()].swap(false, SeqCst) {
                self.num_sleeping.fetch_sub(1, SeqCst);
                if let Some(t) = self.threads[w.index()].get() {
                    t.unpark();
                }
                return;
            }
        }
    }

    /// Wakes every worker (end of run).
    pub fn wake_all(&self) {
        fence(SeqCst);
        for (i, t) in self.threads.iter().enumerate() {
            if self.sleeping[i].swap(false, SeqCst) {
                self.num_sleeping.fetch_sub(1, SeqCst);
            }
            if let Some(t) = t.get() {
                t.unpark();
            }
        }
    }
}
