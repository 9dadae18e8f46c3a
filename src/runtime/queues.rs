//! The [`ReadyQueues`] the real runtime gives the policies: a crossbeam deque per worker
//! (owner LIFO, thieves FIFO) and crossbeam injectors for mailboxes and shared queues, all
//! lock-free, and a planned queue per worker behind its own lock (`heft`'s order, and
//! `locality`'s whenever its priorities outnumber the bands, which ranks from a model almost
//! always do). Every push wakes a sleeping worker that could take the task.

use std::cmp::Reverse;

use crossbeam_deque::{Injector, Steal, Stealer, Worker};

use super::costs::CostView;
use super::sleep::Sleep;
use crate::sched::{pop_planned_from, Plan, PlannedQueue, ReadyQueues};
use crate::sync::MutexExt;
use crate::topology::{DeviceKind, WorkerId};

/// Queues shared by all workers of a run.
pub(crate) struct SharedQueues {
    stealers: Vec<Stealer<u32>>,
    /// `[worker][band]`
    mailbox: Vec<Vec<Injector<u32>>>,
    /// `[set][band]`
    shared: Vec<Vec<Injector<u32>>>,
    /// Per worker: its planned queue (`heft`'s plan; `locality`'s exact order), `(key, task)`
    /// least key first, behind a lock per worker (its placers and its taker; uncontended, a
    /// chain task costs 12 instructions more than through the mailbox under callgrind).
    planned: Vec<std::sync::Mutex<PlannedQueue>>,
    /// Per worker: its mailbox holds a task tried again after a failed attempt, which it takes
    /// before its own deque (else a retry would wait for the whole deque under `ws`). Set
    /// after the push; cleared by the owner once its mailbox is found empty.
    retried: Vec<crossbeam_utils::CachePadded<std::sync::atomic::AtomicBool>>,
    pub sleep: Sleep,
}

/// One worker's view: its own deque plus the shared queues.
pub(crate) struct LocalQueues<'a> {
    me: WorkerId,
    deque: Worker<u32>,
    shared: &'a SharedQueues,
    plan: &'a Plan,
    /// Called after a task is put in a worker's mailbox, to start copying its inputs there.
    prefetch: Option<&'a (dyn Fn(u32, WorkerId) + Sync)>,
    /// Costs for planning policies (none for `eager` and `ws`).
    costs: Option<&'a CostView<'a>>,
}

/// Starts the transfers of a task placed on a worker, before that worker takes it.
pub(crate) type Prefetch<'a> = &'a (dyn Fn(u32, WorkerId) + Sync);

impl SharedQueues {
    /// Builds the shared queues and the per-worker deques (to be moved into their threads).
    pub fn new(plan: &Plan) -> (SharedQueues, Vec<Worker<u32>>) {
        let n = plan.num_workers();
        let bands = plan.num_bands() as usize;
        let deques: Vec<Worker<u32>> = (0..n).map(|_| Worker::new_lifo()).collect();
        let shared = SharedQueues {
            stealers: deques.iter().map(Worker::stealer).collect(),
            mailbox: (0..n).map(|_| (0..bands).map(|_| Injector::new()).collect()).collect(),
            // Every band a policy may use (`heteroprio`'s buckets are not priority bands).
            shared: (0..plan.sets().len())
                .map(|_| {
                    (0..usize::from(crate::sched::MAX_BANDS))
                        .map(|_| Injector::new())
                        .collect()
                })
                .collect(),
            planned: (0..n).map(|_| Default::default()).collect(),
            retried: (0..n).map(|_| Default::default()).collect(),
            sleep: Sleep::new(n),
        };
        (shared, deques)
    }
}

impl<'a> LocalQueues<'a> {
    pub fn new(
        me: WorkerId,
        deque: Worker<u32>,
        shared: &'a SharedQueues,
        plan: &'a Plan,
        prefetch: Option<Prefetch<'a>>,
        costs: Option<&'a CostView<'a>>,
    ) -> Self {
        LocalQueues {
            me,
            deque,
            shared,
            prefetch,
            costs,
            plan,
        }
    }
}

impl LocalQueues<'_> {
    /// Whether a GPU should take `task` alone in its batch, by a planning policy's costs: no
    /// task of its kernel has been timed on a GPU yet, or its GPU time is longer than a
    /// CPU's. Never under `eager` and `ws`, which have no costs.
    pub fn alone_on_gpu(&self, task: u32) -> bool {
        self.costs.is_some_and(
            |c| match (c.time_on(task, DeviceKind::Gpu), c.time_on(task, DeviceKind::Cpu)) {
                (None, _) => !c.learned.is_some_and(|l| l.kernel_timed_on_gpu(task)),
                (Some(gpu), Some(cpu)) => gpu > cpu,
                (Some(_), None) => false,
            },
        )
    }

    /// Puts a task tried again after a failed attempt in `worker`'s mailbox, to be taken
    /// before the work already in its deque.
    pub fn push_retry(&mut self, worker: WorkerId, band: u8, task: u32) {
        self.push_mailbox(worker, band, task);
        self.shared.retried[worker.index()].store(true, std::sync::atomic::Ordering::Release);
    }

    /// A task from this worker's mailbox, when a retry was put there.
    fn take_retried(&mut self) -> Option<u32> {
        let flag = &self.shared.retried[self.me.index()];
        if !flag.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let me = self.me;
        let found = (0..self.plan.num_bands()).find_map(|band| self.pop_mailbox(me, band));
        if found.is_none() {
            // A retry pushed meanwhile is still found, after the deque, like any mailbox task.
            flag.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        found
    }
}

fn retry<T>(mut f: impl FnMut() -> Steal<T>) -> Option<T> {
    loop {
        match f() {
            Steal::Success(t) => return Some(t),
            Steal::Empty => return None,
            Steal::Retry => std::hint::spin_loop(),
        }
    }
}

impl ReadyQueues for LocalQueues<'_> {
    #[inline]
    fn push_local(&mut self, worker: WorkerId, task: u32) {
        debug_assert_eq!(worker, self.me, "only the owner pushes onto its deque");
        self.deque.push(task);
        self.shared.sleep.wake_one(self.plan.victims(self.me));
    }

    fn push_mailbox(&mut self, worker: WorkerId, band: u8, task: u32) {
        self.shared.mailbox[worker.index()][band as usize].push(task);
        self.shared.sleep.wake_one(std::slice::from_ref(&worker));
        if let Some(prefetch) = self.prefetch {
            prefetch(task, worker);
        }
    }

    fn push_shared(&mut self, set: u16, band: u8, task: u32) {
        self.shared.shared[set as usize][band as usize].push(task);
        self.shared.sleep.wake_one(&self.plan.set(set).workers);
    }

    #[inline]
    fn pop_local(&mut self, worker: WorkerId) -> Option<u32> {
        debug_assert_eq!(worker, self.me);
        self.take_retried().or_else(|| self.deque.pop())
    }

    fn pop_mailbox(&mut self, worker: WorkerId, band: u8) -> Option<u32> {
        let q = &self.shared.mailbox[worker.index()][band as usize];
        if q.is_empty() {
            return None;
        }
        retry(|| q.steal())
    }

    fn pop_shared(&mut self, worker: WorkerId, set: u16, band: u8, batch: bool) -> Option<u32> {
        debug_assert_eq!(worker, self.me);
        let q = &self.shared.shared[set as usize][band as usize];
        if q.is_empty() {
            return None;
        }
        if batch {
            let got = retry(|| q.steal_batch_and_pop(&self.deque));
            if got.is_some() && !self.deque.is_empty() {
                // The batch is stealable now: let a sleeping thief know.
                self.shared.sleep.wake_one(self.plan.victims(self.me));
            }
            got
        } else {
            retry(|| q.steal())
        }
    }

    fn push_planned(&mut self, worker: WorkerId, position: u32, task: u32) {
        self.shared.planned[worker.index()]
            .locked()
            .push(Reverse((position, task)));
        self.shared.sleep.wake_one(std::slice::from_ref(&worker));
        if let Some(prefetch) = self.prefetch {
            prefetch(task, worker);
        }
    }

    fn pop_planned(&mut self, worker: WorkerId, upto: u32) -> Option<u32> {
        pop_planned_from(&mut self.shared.planned[worker.index()].locked(), upto)
    }

    fn now(&self) -> f64 {
        self.costs.map_or(0.0, CostView::now)
    }

    fn compute_time(&self, task: u32, worker: WorkerId) -> Option<f64> {
        self.costs?.compute_time(task, worker)
    }

    fn transfer(&self, task: u32, worker: WorkerId) -> (f64, u64) {
        self.costs.map_or((0.0, 0), |c| c.transfer(task, worker))
    }

    fn steal(&mut self, _thief: WorkerId, victim: WorkerId) -> Option<u32> {
        retry(|| self.shared.stealers[victim.index()].steal())
    }
}
