//! The runtime's worker threads: one per worker of the machine, started (and pinned) once when
//! the runtime is built, parked between runs, joined when it drops. A run lends each thread its
//! worker loop through [`Turn::run_scoped`], which returns when every loop has ended, so the
//! loops may borrow the run's state as `std::thread::scope`'s threads do, without a thread
//! start per run (about 50 µs on two workers, and the pinning again).
//!
//! Invariants:
//! - [`Turn::run_scoped`] returns only after every job it handed out has finished (each job
//!   catches its own panic and counts itself down last): the jobs borrow the caller's stack,
//!   and this is what makes lending them to threads that outlive the call sound;
//! - one run at a time holds the threads ([`WorkerPool::turn`]): runs from several
//!   application threads take turns instead of interleaving their loops on some workers and
//!   not others (run A's loop waiting on worker 0 for a task only worker 1 may run, while
//!   worker 1 runs B's loop, which waits the same way, would never end);
//! - a run started from one of the pool's own threads (a kernel that runs a graph) cannot
//!   wait for the turn its own run holds: it gets threads of its own, as before the pool.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::sync::{CondvarExt, MutexExt};
use crate::topology::HwTopology;

/// A job as a pool thread holds it. Its real lifetime is that of the [`Turn::run_scoped`]
/// call that made it (see the SAFETY note there).
type Job = Box<dyn FnOnce() + Send + 'static>;

/// What a pool thread is asked to do next.
enum Order {
    Wait,
    Run(Job),
    Exit,
}

/// One thread's mailbox.
struct Slot {
    order: Mutex<Order>,
    changed: Condvar,
}

impl Slot {
    fn give(&self, order: Order) {
        *self.order.locked() = order;
        self.changed.notify_one();
    }

    fn take(&self) -> Option<Job> {
        let mut order = self.order.locked();
        loop {
            match std::mem::replace(&mut *order, Order::Wait) {
                Order::Run(job) => return Some(job),
                Order::Exit => return None,
                Order::Wait => order = self.changed.wait_unpoisoned(order),
            }
        }
    }
}

/// Counts the jobs of one `run_scoped` call down to zero. Shared through an `Arc`, so that the
/// last job's wake-up never touches memory the waiter has already freed.
struct Latch {
    left: Mutex<usize>,
    zero: Condvar,
}

impl Latch {
    fn count_down(&self) {
        let mut left = self.left.locked();
        *left -= 1;
        if *left == 0 {
            self.zero.notify_all();
        }
    }

    fn wait(&self) {
        let mut left = self.left.locked();
        while *left > 0 {
            left = self.zero.wait_unpoisoned(left);
        }
    }
}

thread_local! {
    /// The pool this thread belongs to (its address), zero for other threads.
    static OWN_POOL: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Whether the calling thread is a worker thread of the pool with this key (see
/// [`WorkerPool::key`]): it runs one of that runtime's tasks, and waiting there for that
/// runtime's later work could never end.
pub(crate) fn on_pool_thread(key: usize) -> bool {
    key != 0 && OWN_POOL.with(|p| p.get()) == key
}

/// Persistent worker threads, one per worker.
pub(crate) struct WorkerPool {
    slots: Vec<Arc<Slot>>,
    threads: Vec<JoinHandle<()>>,
    names: Vec<String>,
    turn: Mutex<()>,
    /// Identifies the pool for [`OWN_POOL`].
    key: Arc<()>,
}

/// The right to lend the pool's threads to one run (see the module's invariants).
pub(crate) struct Turn<'p> {
    pool: &'p WorkerPool,
    /// `None` on one of the pool's own threads: the run uses threads of its own.
    _held: Option<MutexGuard<'p, ()>>,
}

impl WorkerPool {
    /// Starts one thread per worker, named `hexec-<worker>`, each pinned to its processing
    /// units when `hw` is given (a failed pin is logged, not fatal). An error names the
    /// worker whose thread could not be started.
    pub fn start(
        names: &[String],
        pus: &[Vec<u32>],
        hw: Option<&HwTopology>,
    ) -> Result<Self, (String, std::io::Error)> {
        let key = Arc::new(());
        let key_addr = Arc::as_ptr(&key) as usize;
        let mut pool = WorkerPool {
            slots: Vec::with_capacity(names.len()),
            threads: Vec::with_capacity(names.len()),
            names: names.to_vec(),
            turn: Mutex::new(()),
            key,
        };
        for (i, name) in names.iter().enumerate() {
            let slot = Arc::new(Slot {
                order: Mutex::new(Order::Wait),
                changed: Condvar::new(),
            });
            let mine = slot.clone();
            let (hw, pus) = (hw.cloned(), pus[i].clone());
            let spawned = std::thread::Builder::new()
                .name(format!("hexec-{name}"))
                .spawn(move || {
                    if let Some(hw) = hw {
                        if let Err(e) = hw.pin_current_thread(&pus) {
                            tracing::debug!(worker = i, error = %e, "could not pin worker thread");
                        }
                    }
                    OWN_POOL.with(|p| p.set(key_addr));
                    while let Some(job) = mine.take() {
                        job();
                    }
                });
            match spawned {
                Ok(h) => {
                    pool.slots.push(slot);
                    pool.threads.push(h);
                }
                // `pool` drops here and stops the threads already started.
                Err(e) => return Err((name.clone(), e)),
            }
        }
        Ok(pool)
    }

    /// What identifies this pool's threads (and the threads of runs started inside its tasks).
    pub fn key(&self) -> usize {
        Arc::as_ptr(&self.key) as usize
    }

    /// Holds the threads if no run holds them now (from another thread).
    pub fn try_turn(&self) -> Option<Turn<'_>> {
        match self.turn.try_lock() {
            Ok(g) => Some(Turn {
                pool: self,
                _held: Some(g),
            }),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(Turn {
                pool: self,
                _held: Some(e.into_inner()),
            }),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Waits for the threads to be free (other runs finish first) and holds them.
    pub fn turn(&self) -> Turn<'_> {
        let own = on_pool_thread(self.key());
        Turn {
            pool: self,
            _held: (!own).then(|| self.turn.locked()),
        }
    }
}

impl Turn<'_> {
    /// Runs `f(i)` for every worker `i` on its thread, and returns each one's result (or its
    /// panic) once all have ended.
    pub fn run_scoped<R: Send>(&self, f: impl Fn(usize) -> R + Sync) -> Vec<std::thread::Result<R>> {
        let pool = self.pool;
        let n = pool.slots.len();
        if self._held.is_none() {
            // A run inside a task of this pool: its threads are busy with the outer run. The
            // threads it starts count as the pool's, so that a run (or a wait) inside their
            // tasks is recognised too.
            let key = pool.key();
            return std::thread::scope(|s| {
                let f = &f;
                let handles: Vec<_> = (0..n)
                    .map(|i| {
                        std::thread::Builder::new()
                            .name(format!("hexec-{}", pool.names[i]))
                            .spawn_scoped(s, move || {
                                OWN_POOL.with(|p| p.set(key));
                                f(i)
                            })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| match h {
                        Ok(h) => h.join(),
                        Err(e) => {
                            Err(Box::new(format!("could not start a thread: {e}")) as Box<dyn std::any::Any + Send>)
                        }
                    })
                    .collect()
            });
        }
        let results: Vec<Mutex<Option<std::thread::Result<R>>>> = (0..n).map(|_| Mutex::new(None)).collect();
        let latch = Arc::new(Latch {
            left: Mutex::new(n),
            zero: Condvar::new(),
        });
        for (i, slot) in pool.slots.iter().enumerate() {
            let (f, results, latch) = (&f, &results, latch.clone());
            let job = move || {
                let r = catch_unwind(AssertUnwindSafe(|| f(i)));
                *results[i].locked() = Some(r);
                // The last use of anything borrowed: `latch` is this job's own `Arc`.
                latch.count_down();
            };
            let job: Box<dyn FnOnce() + Send + '_> = Box::new(job);
            // SAFETY: the job borrows `f` and `results`, which live on this call's stack. It
            // is erased to `'static` only to cross into a thread that outlives the call; this
            // function does not return before `latch.wait()` has seen every job count itself
            // down, which each does after its last use of a borrow (a panic in `f` is caught
            // first, and nothing between here and `latch.wait()` can unwind: `give` only
            // stores the job). A job that was never run would keep the latch above zero and
            // this call waiting, never returning early: pool threads exit only when the pool
            // drops, which cannot happen while `self` borrows it.
            let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, Job>(job) };
            slot.give(Order::Run(job));
        }
        latch.wait();
        results
            .into_iter()
            .map(|r| {
                r.into_unpoisoned()
                    .unwrap_or_else(|| Err(Box::new("the job left no result") as Box<dyn std::any::Any + Send>))
            })
            .collect()
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        for slot in &self.slots {
            slot.give(Order::Exit);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn pool(n: usize) -> WorkerPool {
        let names: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
        WorkerPool::start(&names, &vec![Vec::new(); n], None).unwrap()
    }

    #[test]
    fn jobs_run_on_the_same_threads_every_time_and_may_borrow() {
        let p = pool(3);
        let ids = |p: &WorkerPool| {
            p.turn()
                .run_scoped(|_| std::thread::current().id())
                .into_iter()
                .map(Result::unwrap)
                .collect::<Vec<_>>()
        };
        let first = ids(&p);
        assert_eq!(first, ids(&p), "no new threads between runs");
        let local = [10, 20, 30];
        let got: Vec<i32> = p
            .turn()
            .run_scoped(|i| local[i] + 1)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, vec![11, 21, 31]);
    }

    #[test]
    fn a_panicking_job_is_returned_and_the_thread_serves_the_next_run() {
        let p = pool(2);
        let r = p.turn().run_scoped(|i| if i == 1 { panic!("boom") } else { i });
        assert!(r[0].is_ok() && r[1].is_err());
        let r = p.turn().run_scoped(|i| i);
        assert!(r.iter().all(Result::is_ok));
    }

    #[test]
    fn runs_from_several_threads_take_turns() {
        let p = pool(2);
        let inside = AtomicUsize::new(0);
        let max = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20 {
                        p.turn().run_scoped(|_| {
                            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            max.fetch_max(now, Ordering::SeqCst);
                            std::thread::yield_now();
                            inside.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                });
            }
        });
        assert_eq!(max.load(Ordering::SeqCst), 2, "never more loops at once than workers");
    }

    #[test]
    fn a_run_inside_a_job_gets_threads_of_its_own() {
        let p = pool(2);
        let r = p.turn().run_scoped(|_| p.turn().run_scoped(|j| j).len());
        assert!(r.into_iter().all(|x| x.unwrap() == 2));
    }
}
