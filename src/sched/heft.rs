//! `heft`: static list scheduling by upward rank (Topcuoglu et al.), the classic baseline for
//! graphs known in advance, and `random`, the floor.
//!
//! HEFT assigns every task before the run: tasks in decreasing upward rank go to the worker
//! with the earliest finish given its predecessors' finishes and the transfers their outputs
//! need. At run time a task goes to its assigned worker's mailbox, which is served in rank
//! order; nothing is stolen. Without costs for every task, HEFT behaves as `eager`.
//! Planning takes O(log n) per task for the choice of the next task (a heap of the ready
//! tasks by rank) plus its eligible workers times its predecessors for the choice of worker.

use std::cmp::Ordering as Cmp;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{place_unpreferred, take_queued, Pick, Plan, Policy, ReadyQueues};
use crate::sched::compile::Successors;
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

/// The HEFT policy: a precomputed worker per task.
#[derive(Clone, Debug)]
pub struct Heft {
    assignment: Option<Vec<WorkerId>>,
}

impl Heft {
    /// No assignment: behaves as `eager`.
    pub fn uncalibrated() -> Self {
        Heft { assignment: None }
    }

    /// Plans the whole graph. `cost(t, w)` is the compute time of `t` on `w` (`None` if
    /// unknown, which makes HEFT fall back to `eager`); `comm(p, t, from, to)` the time to move
    /// `p`'s outputs that `t` reads from `from`'s memory to `to`'s; `rank` the upward ranks.
    ///
    /// Tasks are taken in decreasing rank among those whose predecessors are planned. With
    /// positive costs that is exactly HEFT's decreasing-rank order (a predecessor always
    /// outranks its successors); with zero-cost tasks, whose ranks can tie out of order, it
    /// stays a valid topological order. The ready tasks are a heap keyed by rank, so each
    /// decision costs O(log n) plus the task's eligible workers times its predecessors.
    pub fn plan(
        plan: &Plan,
        edges: &Successors,
        rank: &[f64],
        cost: impl Fn(u32, WorkerId) -> Option<f64>,
        comm: impl Fn(u32, u32, WorkerId, WorkerId) -> f64,
    ) -> Self {
        let n = edges.indegree.len();
        // Predecessor lists as one CSR array (a `Vec` per task would cost an allocation and
        // 24 bytes each); filled in increasing task order, as the successor lists give them.
        let mut pred_off = vec![0usize; n + 1];
        for t in 0..n {
            pred_off[t + 1] = pred_off[t] + edges.indegree[t] as usize;
        }
        let mut pred = vec![0u32; pred_off[n]];
        let mut fill = pred_off.clone();
        for t in 0..n as u32 {
            for &s in edges.of_task(t) {
                pred[fill[s as usize]] = t;
                fill[s as usize] += 1;
            }
        }
        drop(fill);
        let preds = |t: u32| &pred[pred_off[t as usize]..pred_off[t as usize + 1]];
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
        let mut avail = vec![0.0f64; plan.num_workers()];
        let mut finish = vec![0.0f64; n];
        let mut assignment = vec![WorkerId(0); n];
        while let Some(ByRank { task: t, .. }) = ready.pop() {
            let mut best: Option<(f64, WorkerId)> = None;
            for &w in &plan.set(plan.task_set(t)).workers {
                let Some(c) = cost(t, w) else {
                    return Heft::uncalibrated();
                };
                let data_ready = preds(t)
                    .iter()
                    .map(|&p| {
                        finish[p as usize]
                            + if assignment[p as usize] == w {
                                0.0
                            } else {
                                comm(p, t, assignment[p as usize], w)
                            }
                    })
                    .fold(0.0, f64::max);
                let eft = avail[w.index()].max(data_ready) + c;
                if best.is_none_or(|(b, _)| eft < b) {
                    best = Some((eft, w));
                }
            }
            let Some((eft, w)) = best else {
                return Heft::uncalibrated();
            };
            assignment[t as usize] = w;
            finish[t as usize] = eft;
            avail[w.index()] = eft;
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
        Heft {
            assignment: Some(assignment),
        }
    }

    /// The planned worker of a task.
    pub fn assigned(&self, task: u32) -> Option<WorkerId> {
        self.assignment.as_ref().map(|a| a[task as usize])
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
        match self.assigned(task) {
            Some(w) => q.push_mailbox(w, plan.band(task), task),
            None => place_unpreferred(plan, q, task),
        }
    }

    fn next<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, worker: WorkerId) -> Option<Pick> {
        take_queued(plan, q, worker, false).map(|task| Pick {
            task,
            stolen_from: None,
        })
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
