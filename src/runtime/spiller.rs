//! The background spiller: when the host's memory passes its high watermark (90% of the
//! limit), a thread spills least-recently-used host copies down to the low watermark (80%),
//! so that the workers that need room mostly find it free instead of writing spill files
//! themselves.
//!
//! Invariants:
//! - the spiller takes no blocking lock on a datum (it spills only copies it can lock at
//!   once and that no task pins), so it never waits on a worker nor a worker on it, except
//!   for the brief lock of the host budget's list of data;
//! - dropping the [`Spiller`] stops and joins the thread; what it spilled stays accounted
//!   in the host budget's counters like any other spill.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::budget::Budgets;
use crate::sync::{CondvarExt, MutexExt};

/// How the workers wake the spiller, and how the runtime stops it.
#[derive(Debug, Default)]
pub(crate) struct SpillSignal {
    state: Mutex<SignalState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct SignalState {
    wake: bool,
    stop: bool,
}

impl SpillSignal {
    /// Asks for a round of background spilling (cheap when one is already asked for).
    pub fn wake(&self) {
        let mut s = self.state.locked();
        if !s.wake {
            s.wake = true;
            self.cv.notify_one();
        }
    }

    fn stop(&self) {
        self.state.locked().stop = true;
        self.cv.notify_one();
    }

    /// Waits for a wake-up; false when asked to stop.
    fn wait(&self) -> bool {
        let mut s = self.state.locked();
        while !s.wake && !s.stop {
            s = self.cv.wait_unpoisoned(s);
        }
        s.wake = false;
        !s.stop
    }
}

/// The spiller thread of one runtime (only with a host limit).
pub(crate) struct Spiller {
    signal: Arc<SpillSignal>,
    thread: Option<JoinHandle<()>>,
}

impl Spiller {
    /// Starts the thread when the host is limited; `None` otherwise.
    pub fn start(budgets: &Arc<Budgets>) -> Option<Self> {
        if !budgets.spillable() {
            return None;
        }
        let signal = budgets.spill_signal().clone();
        let (b, s) = (budgets.clone(), signal.clone());
        let thread = std::thread::Builder::new()
            .name("hexec-spill".into())
            .spawn(move || {
                while s.wait() {
                    if let Err(e) = b.spill_to_low_watermark() {
                        // The workers meet the same error, and report it, when they need room.
                        tracing::warn!(error = %e, "background spilling failed");
                    }
                }
            })
            .ok()?;
        Some(Spiller {
            signal,
            thread: Some(thread),
        })
    }
}

impl Drop for Spiller {
    fn drop(&mut self) {
        self.signal.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_wakes_once_and_stops() {
        let s = Arc::new(SpillSignal::default());
        s.wake();
        s.wake();
        assert!(s.wait(), "woken");
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.wait());
        s.stop();
        assert!(!t.join().unwrap(), "stopped");
    }
}
