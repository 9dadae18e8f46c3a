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

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::topology::WorkerId;
use prim::{fence, park, AtomicBool, AtomicUsize, ThreadSlot};

/// The primitives of the protocol: std's, or under `--cfg loom` the model checker's, which
/// `loom-tests/` uses to explore every interleaving of announcing, searching, parking and
/// waking (with parks that never time out, so that a lost wake-up is a deadlock it reports).
#[cfg(not(loom))]
mod prim {
    pub(super) use std::sync::atomic::{fence, AtomicBool, AtomicUsize};

    pub(super) fn park(timeout: std::time::Duration) {
        std::thread::park_timeout(timeout);
    }

    /// A worker's thread, set once by the worker itself.
    #[derive(Default)]
    pub(super) struct ThreadSlot(std::sync::OnceLock<std::thread::Thread>);

    impl ThreadSlot {
        pub fn set_current(&self) {
            let _ = self.0.set(std::thread::current());
        }

        pub fn unpark(&self) {
            if let Some(t) = self.0.get() {
                t.unpark();
            }
        }
    }
}

#[cfg(loom)]
mod prim {
    pub(super) use loom::sync::atomic::{fence, AtomicBool, AtomicUsize};

    pub(super) fn park(_timeout: std::time::Duration) {
        loom::thread::park();
    }

    #[derive(Default)]
    pub(super) struct ThreadSlot(loom::sync::Mutex<Option<loom::thread::Thread>>);

    impl ThreadSlot {
        pub fn set_current(&self) {
            let mut t = self.0.lock().unwrap();
            if t.is_none() {
                *t = Some(loom::thread::current());
            }
        }

        pub fn unpark(&self) {
            if let Some(t) = &*self.0.lock().unwrap() {
                t.unpark();
            }
        }
    }
}

const PARK_TIMEOUT: Duration = Duration::from_millis(10);

pub(crate) struct Sleep {
    sleeping: Vec<CachePadded<AtomicBool>>,
    threads: Vec<ThreadSlot>,
    num_sleeping: CachePadded<AtomicUsize>,
}

impl Sleep {
    pub fn new(workers: usize) -> Self {
        Sleep {
            sleeping: (0..workers).map(|_| CachePadded::new(AtomicBool::new(false))).collect(),
            threads: (0..workers).map(|_| ThreadSlot::default()).collect(),
            num_sleeping: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    /// Called by each worker thread once, before it may sleep.
    pub fn register(&self, w: WorkerId) {
        self.threads[w.index()].set_current();
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
            park(PARK_TIMEOUT);
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
                self.threads[w.index()].unpark();
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
            t.unpark();
        }
    }
}
