//! Pausing writes while data lost with a device are recomputed.
//!
//! Recovery replays writes on a CPU, reading data the rest of the run goes on using: while it
//! does, no task may write any datum (it could overwrite an input being read, or a datum being
//! rebuilt). Readers go on.
//!
//! Protocol (Dekker-style, `SeqCst`): a worker about to write counts itself in
//! (`writing[w] += 1`), then checks `paused`; if set, it counts itself out and waits. The
//! recovering worker sets `paused`, then waits until every other worker's count is zero.
//! Either the worker sees the pause, or the recoverer sees its count.
//!
//! Invariant: a worker never waits for the pause, nor for recovery, while it holds a count (a
//! CPU worker counts itself in after pinning its operands and out before handling a failure;
//! a GPU worker holds one count per batch in flight, gives it back as soon as the batch's
//! results are in, and finishes its batches before it waits), so the recoverer's wait ends.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::sync::MutexExt;
use crate::topology::WorkerId;

/// The write pause of one run (inert without GPUs: nothing is ever recovered).
pub(crate) struct WritePause {
    paused: AtomicBool,
    writing: Vec<CachePadded<AtomicUsize>>,
    /// Held by the pausing worker: two GPUs lost together are recovered one after the other
    /// (else the first to finish would lift the pause under the second).
    pausing: std::sync::Mutex<()>,
}

impl WritePause {
    pub fn new(workers: usize, enabled: bool) -> Self {
        WritePause {
            paused: AtomicBool::new(false),
            writing: (0..if enabled { workers } else { 0 })
                .map(|_| Default::default())
                .collect(),
            pausing: std::sync::Mutex::new(()),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.writing.is_empty()
    }

    /// Counts worker `w` in before it writes, waiting out a pause first.
    pub fn enter(&self, w: WorkerId) {
        while !self.try_enter(w) {
            self.wait_while_paused();
        }
    }

    /// Counts worker `w` in unless writes are paused (then `false`, and nothing held).
    pub fn try_enter(&self, w: WorkerId) -> bool {
        let count = &self.writing[w.index()];
        count.fetch_add(1, SeqCst);
        if !self.paused.load(SeqCst) {
            return true;
        }
        count.fetch_sub(1, SeqCst);
        false
    }

    /// Counts worker `w` out after its write.
    pub fn leave(&self, w: WorkerId) {
        self.writing[w.index()].fetch_sub(1, SeqCst);
    }

    pub fn wait_while_paused(&self) {
        while self.paused.load(SeqCst) {
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Pauses writes for the lifetime of the guard, once every worker but `me` has finished
    /// the writes it had started.
    pub fn pause(&self, me: WorkerId) -> PauseGuard<'_> {
        let held = self.pausing.locked();
        self.paused.store(true, SeqCst);
        while self
            .writing
            .iter()
            .enumerate()
            .any(|(i, c)| i != me.index() && c.load(SeqCst) > 0)
        {
            std::thread::sleep(Duration::from_micros(20));
        }
        PauseGuard {
            pause: self,
            _held: held,
        }
    }
}

/// Writes resume when this is dropped (then the next pause may begin: the lock is released
/// after `drop` has run).
pub(crate) struct PauseGuard<'a> {
    pause: &'a WritePause,
    _held: std::sync::MutexGuard<'a, ()>,
}

impl Drop for PauseGuard<'_> {
    fn drop(&mut self) {
        self.pause.paused.store(false, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_waits_for_writes_in_flight_and_holds_off_new_ones() {
        let p = WritePause::new(2, true);
        let (a, b) = (WorkerId(0), WorkerId(1));
        p.enter(a); // a write in flight on `a`
        let (began, ended) = (AtomicBool::new(false), AtomicBool::new(false));
        std::thread::scope(|s| {
            s.spawn(|| {
                let _paused = p.pause(b);
                began.store(true, SeqCst);
                std::thread::sleep(Duration::from_millis(5));
                ended.store(true, SeqCst);
            });
            while !p.paused.load(SeqCst) {
                std::hint::spin_loop();
            }
            std::thread::sleep(Duration::from_millis(5));
            assert!(!began.load(SeqCst), "the pause waits for the write in flight");
            assert!(!p.try_enter(a), "no new write starts during a pause");
            p.leave(a);
            p.enter(a); // waits the pause out
            assert!(began.load(SeqCst) && ended.load(SeqCst));
            p.leave(a);
        });
        assert!(p.try_enter(a), "no pause, no wait");
        assert!(!WritePause::new(2, false).enabled());
    }
}
