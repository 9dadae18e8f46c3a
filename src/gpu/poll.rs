//! The dedicated poll thread of a device, and waiting for submitted work.
//!
//! A blocking `device.poll` on a worker thread would stall `queue.submit` from other threads,
//! so each device has one thread that polls it (without blocking, every 100 µs) while someone
//! waits for it, and sleeps otherwise. Waiters register, submit a callback (`on_submitted_work_done`, `map_async`) and
//! wait on a channel with a timeout that also checks the device's health, so a lost device
//! ends the wait with an error instead of a hang.
//!
//! A panic inside `device.poll` (wgpu-core 30.0.2 asserts "the current submission index
//! should be at least the wait submission index" under load) kills the poll thread: it is
//! caught, and the device is marked lost with the panic's message before the thread ends, so
//! every wait ends at once with that error and retries and recovery take over, instead of
//! each wait running to its submission limit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::device::Health;
use crate::sync::{CondvarExt, MutexExt};

struct State {
    waiting: Mutex<usize>,
    wake: Condvar,
    stop: AtomicBool,
    /// For tests of a dying poll thread: its next poll panics.
    panic_next: AtomicBool,
}

pub(crate) struct Poller {
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    pub fn start(device: wgpu::Device, name: String, health: Arc<Health>) -> Poller {
        let state = Arc::new(State {
            waiting: Mutex::new(0),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            panic_next: AtomicBool::new(false),
        });
        let s = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("hexec-poll-{name}"))
            .spawn(move || {
                let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll_loop(&device, &s)));
                if let Err(panic) = polled {
                    let message = hexec_kernels::panic_message(&*panic);
                    tracing::error!(device = %name, %message, "the GPU poll thread panicked; the device is lost");
                    health.mark_lost(format!("device lost: its poll thread panicked: {message}"));
                }
            })
            .ok();
        Poller { state, thread }
    }

    /// The next poll panics, as wgpu-core's assertion does under load (for tests).
    pub fn inject_panic(&self) {
        self.state.panic_next.store(true, Ordering::SeqCst);
        self.register();
        self.unregister();
    }

    fn register(&self) {
        *self.state.waiting.locked() += 1;
        self.state.wake.notify_one();
    }

    fn unregister(&self) {
        let mut w = self.state.waiting.locked();
        *w = w.saturating_sub(1);
    }

    /// Waits for `rx` (fed by a wgpu callback) while the poll thread polls; fails if the device
    /// is lost or nothing arrives within `limit`.
    pub fn wait<T>(&self, rx: mpsc::Receiver<T>, health: &Health, limit: Duration) -> Result<T, String> {
        match &self.thread {
            None => return Err("the device's poll thread could not be started".into()),
            Some(t) if t.is_finished() => {
                return Err(health
                    .lost()
                    .unwrap_or_else(|| "the device's poll thread has ended".to_string()))
            }
            Some(_) => {}
        }
        self.register();
        let step = Duration::from_millis(10);
        let mut waited = Duration::ZERO;
        let out = loop {
            match rx.recv_timeout(step) {
                Ok(v) => break Ok(v),
                Err(mpsc::RecvTimeoutError::Disconnected) => break Err("the GPU callback was dropped".to_string()),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(reason) = health.lost() {
                        break Err(reason);
                    }
                    if self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
                        break Err("the device's poll thread has ended".to_string());
                    }
                    waited += step;
                    if waited >= limit {
                        break Err(format!("no completion after {limit:?}"));
                    }
                }
            }
        };
        self.unregister();
        out
    }
}

/// Polls while someone waits, sleeps otherwise, until told to stop.
fn poll_loop(device: &wgpu::Device, s: &State) {
    loop {
        {
            let mut w = s.waiting.locked();
            while *w == 0 && !s.stop.load(Ordering::SeqCst) && !s.panic_next.load(Ordering::SeqCst) {
                w = s.wake.wait_unpoisoned(w);
            }
        }
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        if s.panic_next.swap(false, Ordering::SeqCst) {
            panic!("injected: the poll thread's wgpu call panicked");
        }
        // Non-blocking polls, 100 µs apart while someone waits. A blocking
        // `PollType::Wait` with a timeout trips wgpu-core 30.0.2's assertion ("the current
        // submission index should be at least the wait submission index") when a submit on
        // another thread lands between its reading of the last submission index and its
        // check of the queue: under load, in most runs of a long GPU test here. A plain poll
        // has no wait index, so it cannot trip it; the price is up to 100 µs of latency per
        // completion and a few thousand cheap wake-ups a second while work is in flight.
        if let Err(e) = device.poll(wgpu::PollType::Poll) {
            // A lost device shows in `Health` via its callback.
            tracing::trace!(error = %e, "poll");
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        {
            // Set under the lock the poll thread checks it under: set between its check and
            // its wait, the notification would be lost and the join below would hang.
            let _w = self.state.waiting.locked();
            self.state.stop.store(true, Ordering::SeqCst);
        }
        self.state.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
