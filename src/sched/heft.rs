//! `heft`: static list scheduling by upward rank (Topcuoglu et al.), the classic baseline for
//! graphs known in advance, and `random`, the floor.
//!
//! HEFT plans every task before the run, as the textbook does (Topcuoglu, Hariri and Wu,
//! 2002): tasks in decreasing upward rank go to the worker with the earliest finish given
//! their predecessors' finishes and the transfers their outputs need, into the earliest gap
//! of that worker's timeline they fit in (insertion). At run time a ready task waits in its
//! worker's planned-order queue, and the worker runs its tasks in the planned order; nothing
//! is stolen. Without costs for every task, HEFT behaves as `eager`. Planning takes
//! O(log n) per task for the choice of the next task (a heap of the ready tasks by rank)
//! plus its eligible workers times its predecessors and the gaps looked at.

use std::cmp::Ordering as Cmp;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::{place_unpreferred, take_queued, Pick, Plan, Policy, ReadyQueues};
use crate::sched::compile::{Predecessors, Successors};
use crate::topology::WorkerId;

/// Upward ranks: `rank(t) = cost(t) + max over successors s of (comm(t, s) + rank(s))`.
pub fn upward_ranks(edges: &Successors, cost: impl Fn(u32) -> f64, comm: impl Fn(u32, u32) -> f64) -> Vec<f64> {
    let n = edges.indegree.len();
    let mut rank = vec![0.0f64; n];
    // Edges point forward (task index order is topological), so a reverse sweep works.
    for t in (0..n as u32).rev() {
        let tail = edges
            .of_task(t)
            .iter()
            .map(|&s| comm(t, s) + rank[s as usize])
            .fold(0.0, f64::max);
        rank[t as usize] = cost(t) + tail;
    }
    rank
}

/// A ready task in HEFT's planning order, the greatest first: the highest rank (by
/// `total_cmp`), ties to the lowest task id, the order the former scan of the ready list
/// picked in.
#[derive(Clone, Copy, Debug)]
struct ByRank {
    rank: f64,
    task: u32,
}

impl Ord for ByRank {
    fn cmp(&self, other: &Self) -> Cmp {
        #[cfg(test)]
        COMPARISONS.with(|c| c.set(c.get() + 1));
        self.rank.total_cmp(&other.rank).then(other.task.cmp(&self.task))
    }
}

impl PartialOrd for ByRank {
    fn partial_cmp(&self, other: &Self) -> Option<Cmp> {
        Some(self.cmp(other))
    }
}

impl PartialEq for ByRank {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Cmp::Equal
    }
}

impl Eq for ByRank {}

#[cfg(test)]
thread_local! {
    /// Rank comparisons made by [`Heft::plan`] on this thread: the unit tests check that
    /// they grow as `n log n`, not `n²`.
    pub(super) static COMPARISONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Gaps of a worker's planned timeline HEFT looks into for a task, from the first that ends
/// after the task's inputs are ready; past them it appends. Textbook insertion looks at every
/// gap, which is quadratic on a long timeline of small gaps; the first 64 hold nearly every
/// gap a task fits in.
pub const INSERTION_WINDOW: usize = 64;

/// One planned interval of a worker's timeline.
#[derive(Clone, Copy, Debug)]
struct Slot {
    start: f64,
    finish: f64,
    task: u32,
}

/// The earliest start of a task of duration `cost` on a timeline (sorted, non-overlapping),
/// no earlier than `ready`: in the first gap that fits among the [`INSERTION_WINDOW`] after
/// `ready`, else after the last interval. Returns the start and the index to insert at.
fn earliest_slot(timeline: &[Slot], ready: f64, cost: f64) -> (f64, usize) {
    let first = timeline.partition_point(|s| s.finish <= ready);
    let mut start = ready;
    for (i, slot) in timeline.iter().enumerate().skip(first).take(INSERTION_WINDOW) {
        if start + cost <= slot.start {
            return (start, i);
        }
        start = start.max(slot.finish);
    }
    let after = timeline.last().map_or(ready, |s| s.finish.max(ready));
    (start.max(after), timeline.len())
}

/// HEFT's schedule: each task's worker and place in that worker's order, and, per worker, how
/// far its order has been followed.
#[derive(Debug)]
struct Schedule {
    /// The planned makespan, seconds.
    makespan: f64,
    worker: Vec<WorkerId>,
    /// Per task: its index in its worker's order.
    position: Vec<u32>,
    /// Per worker: its tasks in planned order.
    order: Vec<Vec<u32>>,
    /// Per task: its planned start, seconds.
    start: Vec<f64>,
    /// Per task: its planned finish, seconds.
    finish: Vec<f64>,
    /// Per worker: the first position of its order not yet taken. Only the worker itself
    /// moves it (in `next`), so relaxed atomics suffice.
    cursor: Vec<AtomicU32>,
    /// Per task: taken by its worker (or by `next` of any worker after a retry).
    taken: Vec<AtomicBool>,
}

/// The HEFT policy: a worker and a place in its order per task, planned before the run.
///
/// Each worker runs its planned tasks in planned order: it takes a task when every task
/// planned before it on that worker has been taken, and waits otherwise, as the plan assumed.
/// Tasks that reach it outside the plan (retries, tasks passed on by a lost worker) come
/// first, from its mailbox.
///
/// Liveness: every planned task reaches its worker (failed predecessors poison, not drop,
/// their successors), and a planned order is consistent with the dependencies, so the task of
/// least planned start not yet taken is always at its worker's cursor once its predecessors
/// (planned earlier) have run. Held roots (memory backpressure) are released in planned-start
/// order ([`Policy::order_held_roots`]), which keeps this true under a memory limit.
#[derive(Debug)]
pub struct Heft {
    schedule: Option<Schedule>,
}

impl Heft {
    /// No assignment: behaves as `eager`.
    pub fn uncalibrated() -> Self {
        Heft { schedule: None }
    }

    /// Plans the whole graph. `cost(t, w)` is the compute time of `t` on `w` (`None` if
    /// unknown, which makes HEFT fall back to `eager`); `comm(p, t, from, to)` the time to move
    /// `p`'s outputs that `t` reads from `from`'s memory to `to`'s; `rank` the upward ranks.
    ///
    /// Tasks are taken in decreasing rank among those whose predecessors are planned. With
    /// positive costs that is exactly HEFT's decreasing-rank order (a predecessor always
    /// outranks its successors); with zero-cost tasks, whose ranks can tie out of order, it
    /// stays a valid topological order. Each goes to the worker where it finishes first, put
    /// into the earliest gap of that worker's timeline it fits in (insertion-based HEFT,
    /// Topcuoglu et al.). The ready tasks are a heap keyed by rank, so each decision costs
    /// O(log n) plus the task's eligible workers times its predecessors and the gaps looked
    /// at ([`INSERTION_WINDOW`]).
    pub fn plan(
        plan: &Plan,
        edges: &Successors,
        rank: &[f64],
        cost: impl Fn(u32, WorkerId) -> Option<f64>,
        comm: impl Fn(u32, u32, WorkerId, WorkerId) -> f64,
    ) -> Self {
        let n = edges.indegree.len();
        let pred = Predecessors::of(edges);
        let preds = |t: u32| pred.of_task(t);
        let mut remaining: Vec<u32> = edges.indegree.clone();
        // The ready tasks in a heap keyed by rank: O(log n) per decision where a scan of the
        // ready list made planning quadratic (a fan-out of 200k tasks took 21 s).
        let mut ready: BinaryHeap<ByRank> = (0..n as u32)
            .filter(|&t| remaining[t as usize] == 0)
            .map(|t| ByRank {
                rank: rank[t as usize],
                task: t,
            })
            .collect();
        let mut timeline: Vec<Vec<Slot>> = vec![Vec::new(); plan.num_workers()];
        let mut finish = vec![0.0f64; n];
        let mut start = vec![0.0f64; n];
        let mut worker = vec![WorkerId(0); n];
        while let Some(ByRank { task: t, .. }) = ready.pop() {
            let mut best: Option<(f64, f64, usize, WorkerId)> = None;
            for &w in &plan.set(plan.task_set(t)).workers {
                let Some(c) = cost(t, w) else {
                    return Heft::uncalibrated();
                };
                let data_ready = preds(t)
                    .iter()
                    .map(|&p| {
                        finish[p as usize]
                            + if worker[p as usize] == w {
                                0.0
                            } else {
                                comm(p, t, worker[p as usize], w)
                            }
                    })
                    .fold(0.0, f64::max);
                let (s, at) = earliest_slot(&timeline[w.index()], data_ready, c);
                if best.is_none_or(|(b, ..)| s + c < b) {
                    best = Some((s + c, s, at, w));
                }
            }
            let Some((eft, s, at, w)) = best else {
                return Heft::uncalibrated();
            };
            worker[t as usize] = w;
            finish[t as usize] = eft;
            start[t as usize] = s;
            timeline[w.index()].insert(
                at,
                Slot {
                    start: s,
                    finish: eft,
                    task: t,
                },
            );
            for &s in edges.of_task(t) {
                remaining[s as usize] -= 1;
                if remaining[s as usize] == 0 {
                    ready.push(ByRank {
                        rank: rank[s as usize],
                        task: s,
                    });
                }
            }
        }
        let mut position = vec![0u32; n];
        let order: Vec<Vec<u32>> = timeline
            .into_iter()
            .map(|slots| {
                slots
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        position[s.task as usize] = i as u32;
                        s.task
                    })
                    .collect()
            })
            .collect();
        Heft {
            schedule: Some(Schedule {
                makespan: finish.iter().copied().fold(0.0, f64::max),
                worker,
                position,
                cursor: order.iter().map(|_| AtomicU32::new(0)).collect(),
                order,
                start,
                finish,
                taken: (0..n).map(|_| AtomicBool::new(false)).collect(),
            }),
        }
    }

    /// The planned worker of a task.
    pub fn assigned(&self, task: u32) -> Option<WorkerId> {
        self.schedule.as_ref().map(|s| s.worker[task as usize])
    }

    /// The number of tasks planned (0 when uncalibrated).
    pub fn tasks(&self) -> usize {
        self.schedule.as_ref().map_or(0, |s| s.worker.len())
    }

    /// The planned makespan (`None` when uncalibrated), seconds.
    pub fn planned_makespan(&self) -> Option<f64> {
        self.schedule.as_ref().map(|s| s.makespan)
    }

    /// The planned start of a task, seconds from the run's start.
    pub fn planned_start(&self, task: u32) -> Option<f64> {
        self.schedule.as_ref().map(|s| s.start[task as usize])
    }

    /// The planned finish of a task, seconds from the run's start.
    pub fn planned_finish(&self, task: u32) -> Option<f64> {
        self.schedule.as_ref().map(|s| s.finish[task as usize])
    }

    /// The task planned just before `task` on its worker, if any.
    pub fn planned_before(&self, task: u32) -> Option<u32> {
        let s = self.schedule.as_ref()?;
        let pos = s.position[task as usize] as usize;
        pos.checked_sub(1).map(|p| s.order[s.worker[task as usize].index()][p])
    }
}

impl Schedule {
    /// `worker` takes `task`: marks it and moves the worker's cursor past every taken task.
    fn take(&self, worker: WorkerId, task: u32) {
        self.taken[task as usize].store(true, Ordering::Relaxed);
        let order = &self.order[worker.index()];
        let cursor = &self.cursor[worker.index()];
        let mut c = cursor.load(Ordering::Relaxed) as usize;
        while c < order.len() && self.taken[order[c] as usize].load(Ordering::Relaxed) {
            c += 1;
        }
        cursor.store(c as u32, Ordering::Relaxed);
    }
}

impl Policy for Heft {
    fn name(&self) -> &'static str {
        "heft"
    }

    fn immediate_successor(&self) -> bool {
        false
    }

    fn follows_fused_chains(&self) -> bool {
        false
    }

    fn place<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, task: u32, _releasing: Option<WorkerId>) {
        match &self.schedule {
            Some(s) => q.push_planned(s.worker[task as usize], s.position[task as usize], task),
            None => place_unpreferred(plan, q, task),
        }
    }

    fn next<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, worker: WorkerId) -> Option<Pick> {
        // Retries and tasks passed on by a lost worker, then the planned order.
        let task = take_queued(plan, q, worker, false).or_else(|| {
            let s = self.schedule.as_ref()?;
            let task = q.pop_planned(worker, s.cursor[worker.index()].load(Ordering::Relaxed))?;
            if s.worker[task as usize] == worker {
                s.take(worker, task);
            }
            Some(task)
        })?;
        Some(Pick {
            task,
            stolen_from: None,
        })
    }

    fn expected_worker(&self, task: u32) -> Option<WorkerId> {
        self.assigned(task)
    }

    fn copies_ahead(&self) -> bool {
        self.schedule.is_some()
    }

    fn order_held_roots(&self, held: &mut [u32]) {
        if let Some(s) = &self.schedule {
            held.sort_by(|&a, &b| {
                s.start[a as usize]
                    .total_cmp(&s.start[b as usize])
                    .then(s.worker[a as usize].cmp(&s.worker[b as usize]))
                    .then(s.position[a as usize].cmp(&s.position[b as usize]))
            });
        }
    }
}

/// `random`: each ready task to a uniformly random eligible worker. The floor any policy
/// must beat. Deterministic for a given seed and sequence of calls.
#[derive(Debug)]
pub struct RandomPolicy {
    state: AtomicU64,
}

impl RandomPolicy {
    /// A policy with this seed.
    pub fn new(seed: u64) -> Self {
        RandomPolicy {
            state: AtomicU64::new(seed | 1),
        }
    }

    fn next_u64(&self) -> u64 {
        // xorshift64*, advanced atomically so that concurrent placers never share a draw.
        let mut x = self.state.load(Ordering::Relaxed);
        loop {
            let mut y = x;
            y ^= y >> 12;
            y ^= y << 25;
            y ^= y >> 27;
            match self
                .state
                .compare_exchange_weak(x, y, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return y.wrapping_mul(0x2545_F491_4F6C_DD1D),
                Err(cur) => x = cur,
            }
        }
    }
}

impl Policy for RandomPolicy {
    fn name(&self) -> &'static str {
        "random"
    }

    fn immediate_successor(&self) -> bool {
        false
    }

    fn place<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, task: u32, _releasing: Option<WorkerId>) {
        let workers = &plan.set(plan.task_set(task)).workers;
        let w = workers[(self.next_u64() % workers.len() as u64) as usize];
        q.push_mailbox(w, plan.band(task), task);
    }

    fn next<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, worker: WorkerId) -> Option<Pick> {
        take_queued(plan, q, worker, false).map(|task| Pick {
            task,
            stolen_from: None,
        })
    }
}
