//! Cancelling a run from another thread: a [`CancelToken`] given in
//! [`RunOptions::cancel`](super::RunOptions::cancel) and cancelled from anywhere (a signal
//! handler's thread, a UI, a timeout) stops the run as a final failure does: no task starts
//! after it, tasks already running finish (kernels that poll `CpuContext::cancelled` may
//! return early), and the run returns [`RunError::Cancelled`](super::RunError::Cancelled)
//! with the partial report.
//!
//! Invariants:
//! - a run with a token has one monitor thread, which waits on the token's condition
//!   variable (no polling of the workers) and is woken either by `cancel` or by the run's
//!   end ([`CancelToken::wake`]); both notify under the token's lock after changing what the
//!   monitor checks under it, so no wake-up is lost;
//! - a token stays cancelled: a run started with a cancelled token runs nothing.

use crate::sync::MutexExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Cancels the runs it is given to, from any thread. Cheap to clone; clones share the state.
#[derive(Clone, Debug, Default)]
pub struct CancelToken {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    cancelled: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl CancelToken {
    /// A token not cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops every run using this token (and any later one). Returns at once; the runs
    /// return once their running tasks end.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Wakes the monitors waiting on this token, to re-check their run.
    pub(crate) fn wake(&self) {
        let _g = self.inner.lock.locked();
        self.inner.cv.notify_all();
    }

    /// Waits until the token is cancelled (true) or `finished()` holds (false). `finished`
    /// must become true before [`CancelToken::wake`] is called for it.
    pub(crate) fn wait(&self, finished: impl Fn() -> bool) -> bool {
        let mut g = self.inner.lock.locked();
        loop {
            if finished() {
                return false;
            }
            if self.is_cancelled() {
                return true;
            }
            // The timeout only bounds the cost of a bug elsewhere; wake-ups do the work.
            g = self
                .inner
                .cv
                .wait_timeout(g, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_sees_the_cancel_or_the_end() {
        let t = CancelToken::new();
        let end = Arc::new(AtomicBool::new(false));
        let (t2, e2) = (t.clone(), end.clone());
        let w = std::thread::spawn(move || t2.wait(|| e2.load(Ordering::SeqCst)));
        end.store(true, Ordering::SeqCst);
        t.wake();
        assert!(!w.join().unwrap(), "ended, not cancelled");
        let t2 = t.clone();
        let w = std::thread::spawn(move || t2.wait(|| false));
        t.cancel();
        assert!(w.join().unwrap());
        assert!(t.is_cancelled() && t.clone().is_cancelled());
    }
}
