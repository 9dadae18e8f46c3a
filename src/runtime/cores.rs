//! Reserving cores for tasks that request more than one.
//!
//! A task with `cores = k` runs on one worker but needs `k` cores: while it runs, `k - 1`
//! other CPU workers must not start a task. The gate holds one token per CPU worker; every
//! task takes `cores` tokens before it starts and returns them when it ends. A waiting
//! multi-core task blocks new single-core starts, so it cannot be starved, and tokens are
//! taken all at once, so two waiting multi-core tasks cannot deadlock (compile guarantees
//! `k <= number of CPU workers`).
//!
//! The gate is only used when the graph has a multi-core task; other graphs pay nothing.

use crate::sync::{CondvarExt, MutexExt};
use std::sync::{Condvar, Mutex};

struct GateState {
    free: usize,
    waiting_multi: usize,
}

pub(crate) struct CoreGate {
    state: Mutex<GateState>,
    freed: Condvar,
}

impl CoreGate {
    pub fn new(cores: usize) -> Self {
        CoreGate {
            state: Mutex::new(GateState {
                free: cores,
                waiting_multi: 0,
            }),
            freed: Condvar::new(),
        }
    }

    /// Blocks until `k` cores are free, then takes them.
    pub fn acquire(&self, k: usize) {
        let mut s = self.state.locked();
        if k > 1 {
            s.waiting_multi += 1;
            while s.free < k {
                s = self.freed.wait_unpoisoned(s);
            }
            s.waiting_multi -= 1;
        } else {
            while s.free < k || s.waiting_multi > 0 {
                s = self.freed.wait_unpoisoned(s);
            }
        }
        s.free -= k;
    }

    /// Returns `k` cores.
    pub fn release(&self, k: usize) {
        let mut s = self.state.locked();
        s.free += k;
        drop(s);
        self.freed.notify_all();
    }
}
