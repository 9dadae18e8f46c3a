//! The queue operations a policy is written against, and a deterministic implementation of
//! them for tests and the simulator.
//!
//! Queue kinds: a *local* deque per worker (the owner pushes and pops at one end, thieves
//! take from the other), a *mailbox* per (worker, band) for tasks placed on that worker by
//! someone else, a *shared* queue per (eligibility set, band), and a *planned* queue per
//! worker, ordered by a key: each task's position in that worker's plan (`heft`), or its
//! place in an exact order (`locality`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::topology::WorkerId;

/// Ready-task queues as a policy sees them.
pub trait ReadyQueues {
    /// Pushes onto `worker`'s own deque (called by that worker).
    fn push_local(&mut self, worker: WorkerId, task: u32);
    /// Pushes into a worker's mailbox.
    fn push_mailbox(&mut self, worker: WorkerId, band: u8, task: u32);
    /// Pushes into the shared queue of an eligibility set.
    fn push_shared(&mut self, set: u16, band: u8, task: u32);
    /// Pops the most recently pushed task of `worker`'s deque.
    fn pop_local(&mut self, worker: WorkerId) -> Option<u32>;
    /// Pops the oldest task of a worker's mailbox band.
    fn pop_mailbox(&mut self, worker: WorkerId, band: u8) -> Option<u32>;
    /// Pops the oldest task of a shared queue. With `batch`, may also move a batch of
    /// following tasks into `worker`'s deque (they are all eligible for it).
    fn pop_shared(&mut self, worker: WorkerId, set: u16, band: u8, batch: bool) -> Option<u32>;
    /// Takes the oldest task of `victim`'s deque for `thief`.
    fn steal(&mut self, thief: WorkerId, victim: WorkerId) -> Option<u32>;
    /// Puts a task in `worker`'s planned queue at `position` (its place in that worker's
    /// plan). Like a mailbox push, it starts the task's input copies to that worker.
    fn push_planned(&mut self, worker: WorkerId, position: u32, task: u32);
    /// Pops the task of least position from `worker`'s planned queue, if that position is at
    /// most `upto`.
    fn pop_planned(&mut self, worker: WorkerId, upto: u32) -> Option<u32>;

    // What the executor knows, for policies that plan in time (`locality`, `heft`). The
    // defaults say "nothing known", under which those policies behave like `eager`.

    /// Seconds since the run began.
    fn now(&self) -> f64 {
        0.0
    }
    /// Expected compute time of `task` on `worker`, when a performance model knows it.
    fn compute_time(&self, _task: u32, _worker: WorkerId) -> Option<f64> {
        None
    }
    /// Time to bring `task`'s inputs that are not yet in `worker`'s memory there, and the
    /// bytes of its inputs already there.
    fn transfer(&self, _task: u32, _worker: WorkerId) -> (f64, u64) {
        (0.0, 0)
    }
}

/// A planned queue: `(position, task)`, least position first.
pub(crate) type PlannedQueue = BinaryHeap<Reverse<(u32, u32)>>;

/// Plain queues: deterministic, single-threaded.
#[derive(Clone, Debug)]
pub struct SimQueues {
    local: Vec<VecDeque<u32>>,
    mailbox: Vec<Vec<VecDeque<u32>>>,
    shared: Vec<Vec<VecDeque<u32>>>,
    /// Per worker: `(position, task)`, least position first.
    planned: Vec<PlannedQueue>,
}

/// Most tasks a batched shared pop moves at once (as crossbeam's injector does).
const MAX_BATCH: usize = 32;

impl SimQueues {
    /// Queues for `workers` workers, `sets` eligibility sets and `bands` bands.
    pub fn new(workers: usize, sets: usize, bands: u8) -> Self {
        let bands = bands.max(1) as usize;
        SimQueues {
            local: vec![VecDeque::new(); workers],
            mailbox: vec![vec![VecDeque::new(); bands]; workers],
            // Every band a policy may use (`heteroprio`'s buckets are not priority bands).
            shared: vec![vec![VecDeque::new(); usize::from(super::MAX_BANDS).max(bands)]; sets],
            planned: vec![BinaryHeap::new(); workers],
        }
    }

    // These three are for the policy tests, which inspect the queues.
    /// Tasks queued anywhere.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.local.iter().map(VecDeque::len).sum::<usize>()
            + self.mailbox.iter().flatten().map(VecDeque::len).sum::<usize>()
            + self.shared.iter().flatten().map(VecDeque::len).sum::<usize>()
            + self.planned.iter().map(BinaryHeap::len).sum::<usize>()
    }

    /// Whether nothing is queued.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tasks in a worker's deque, oldest first.
    #[cfg(test)]
    pub fn local(&self, w: WorkerId) -> &VecDeque<u32> {
        &self.local[w.index()]
    }
}

impl ReadyQueues for SimQueues {
    fn push_local(&mut self, worker: WorkerId, task: u32) {
        self.local[worker.index()].push_back(task);
    }
    fn push_mailbox(&mut self, worker: WorkerId, band: u8, task: u32) {
        self.mailbox[worker.index()][band as usize].push_back(task);
    }
    fn push_shared(&mut self, set: u16, band: u8, task: u32) {
        self.shared[set as usize][band as usize].push_back(task);
    }
    fn pop_local(&mut self, worker: WorkerId) -> Option<u32> {
        self.local[worker.index()].pop_back()
    }
    fn pop_mailbox(&mut self, worker: WorkerId, band: u8) -> Option<u32> {
        self.mailbox[worker.index()][band as usize].pop_front()
    }
    fn pop_shared(&mut self, worker: WorkerId, set: u16, band: u8, batch: bool) -> Option<u32> {
        let q = &mut self.shared[set as usize][band as usize];
        let first = q.pop_front()?;
        if batch {
            let n = q.len().div_ceil(2).min(MAX_BATCH);
            // Moved in queue order; the owner pops its deque from the back, so reverse to
            // keep the oldest task next.
            let moved: Vec<u32> = q.drain(..n).collect();
            self.local[worker.index()].extend(moved.into_iter().rev());
        }
        Some(first)
    }
    fn steal(&mut self, _thief: WorkerId, victim: WorkerId) -> Option<u32> {
        self.local[victim.index()].pop_front()
    }
    fn push_planned(&mut self, worker: WorkerId, position: u32, task: u32) {
        self.planned[worker.index()].push(Reverse((position, task)));
    }
    fn pop_planned(&mut self, worker: WorkerId, upto: u32) -> Option<u32> {
        pop_planned_from(&mut self.planned[worker.index()], upto)
    }
}

/// Pops the least-position task of a planned queue if its position is at most `upto`: the
/// one rule both drivers' planned queues follow.
pub(crate) fn pop_planned_from(heap: &mut PlannedQueue, upto: u32) -> Option<u32> {
    match heap.peek() {
        Some(Reverse((position, _))) if *position <= upto => heap.pop().map(|Reverse((_, t))| t),
        _ => None,
    }
}
