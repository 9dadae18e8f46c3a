//! The scheduling core: policies as pure code, with no threads, clocks or I/O.
//!
//! A policy decides *where* a ready task goes (`Policy::place`) and *what* an idle worker
//! takes next (`Policy::next`). It does so through a `ReadyQueues` implementation: the
//! real runtime supplies deques, injectors and planned queues (`runtime::queues`), a simulator
//! supplies plain `VecDeque`s (`SimQueues`). Given the same sequence of calls, a policy
//! makes the same decisions on both.
//!
//! Invariants every policy keeps:
//! - a task is only returned by `next(w)` if `plan.eligible(task, w)`; a task taken from a
//!   victim that the thief may not run is placed again, never run;
//! - a thief only looks at `plan.victims(w)`, which holds workers of its own class;
//! - every task given to `place` is returned by exactly one later `next` (none is lost or
//!   duplicated), provided some eligible worker keeps calling `next`.

pub(crate) mod compile;
mod costs;
pub(crate) mod driver;
mod eager;
mod heft;
mod heteroprio;
mod locality;
pub mod perfmodel;
mod plan;
pub(crate) mod predict;
mod queues;
mod roots;
mod ws;

use std::fmt;

pub(crate) use costs::{
    allowed_costs, best_heft_plan, heft_plan, is_replayed, kind_index, plan_trust, rank_priorities, recorded_seconds,
    PlanTrust, Planning, TaskCost,
};
pub(crate) use driver::{build_policy, PolicyInputs};
pub(crate) use eager::Eager;
pub(crate) use heft::{Heft, RandomPolicy};
pub(crate) use heteroprio::HeteroPrio;
pub(crate) use locality::Locality;
pub(crate) use plan::{EligibleSet, Plan, WorkerMask, MAX_BANDS};
pub(crate) use queues::{pop_planned_from, PlannedQueue, ReadyQueues, SimQueues};
pub(crate) use roots::RootGate;
pub(crate) use ws::WorkStealing;

use crate::topology::WorkerId;

/// What `next` hands a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pick {
    pub task: u32,
    /// The victim, when the task was stolen.
    pub stolen_from: Option<WorkerId>,
}

/// A scheduling policy.
pub(crate) trait Policy: Send + Sync {
    /// The name used on the command line and in summaries.
    fn name(&self) -> &'static str;

    /// Puts a ready task somewhere. `releasing` is the worker whose completed task made it
    /// ready (`None` for the graph's roots).
    fn place<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, task: u32, releasing: Option<WorkerId>);

    /// The next task for `worker`, or `None` when it finds nothing it may run.
    fn next<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, worker: WorkerId) -> Option<Pick>;

    /// Whether a worker may run one task its completion made ready right away, without
    /// placing it (the immediate-successor shortcut). Policies that plan where every task
    /// goes (`locality`, `heft`, `random`) say no: the shortcut would overrule them.
    fn immediate_successor(&self) -> bool {
        true
    }

    /// Whether the worker that finishes a task runs the next link of its fused chain
    /// ([`Plan::fused_next`]). Policies that plan every task's worker in advance (`heft`) say
    /// no: their plan already keeps a chain together where that pays, and moving a link
    /// would break the order planned for its worker.
    fn follows_fused_chains(&self) -> bool {
        true
    }

    /// Puts the roots a memory limit holds back ([`RootGate`]) in the order they are to be
    /// released. Policies that plan each worker's order (`heft`) release them in planned
    /// order, so that no worker waits for a root the gate still holds while the gate waits for
    /// that worker.
    fn order_held_roots(&self, _held: &mut [u32]) {}

    /// The worker a task not yet ready is expected to run on, when the policy's plan says
    /// (`heft`; `locality` while it follows a trusted or exact plan): the drivers copy each of its
    /// inputs to that worker's memory as soon as the input's producer finishes, not when the
    /// task is placed. (With a plan it does not trust, `locality` says nothing: on the
    /// simulated rows with measured links, copying ahead to where such a plan put a task made
    /// the runs up to 1.5 times longer, since the task often went elsewhere.)
    fn expected_worker(&self, _task: u32) -> Option<WorkerId> {
        None
    }

    /// Whether [`Policy::expected_worker`] may name a worker at all: the drivers skip the
    /// early-copy pass over a finished task's successors otherwise (one test per task, where
    /// asking per successor cost a chain about 21 instructions per task).
    fn copies_ahead(&self) -> bool {
        false
    }

    /// Of `ready` (the tasks `worker`'s completion of `finished` just made ready, in release
    /// order), the index of the one it runs at once, without placing it: the next link of
    /// `finished`'s fused chain when the policy follows them ([`Plan::fused_next`]), else the
    /// highest-priority one it may run, the first among equals; `None` when the policy turns
    /// the shortcut off. Both drivers ask this, so that they take the same shortcut.
    /// `follows_chains` is [`Policy::follows_fused_chains`], which the drivers read once per
    /// run: asked per finished task, it cost a chain about 11 instructions per task.
    #[inline]
    fn pick_immediate(
        &self,
        plan: &Plan,
        finished: u32,
        ready: &[u32],
        worker: WorkerId,
        follows_chains: bool,
        priority: impl Fn(u32) -> i32,
    ) -> Option<usize> {
        debug_assert_eq!(follows_chains, self.follows_fused_chains());
        if let Some(next) = plan.fused_next(finished).filter(|_| follows_chains) {
            // Its only predecessor just finished: it is in `ready`, and eligible here.
            if let Some(i) = ready.iter().position(|&s| s == next) {
                return Some(i);
            }
        }
        if !self.immediate_successor() {
            return None;
        }
        let mut best: Option<(usize, i32)> = None;
        for (i, &s) in ready.iter().enumerate() {
            if !plan.eligible(s, worker) {
                continue;
            }
            let p = priority(s);
            if best.is_none_or(|(_, b)| p > b) {
                best = Some((i, p));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// The policies hexec ships, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// Shared ready queues; a worker takes the first task it may run.
    Eager,
    /// Per-worker deques and compatibility-aware stealing, victims by locality.
    Ws,
    /// Earliest expected finish, transfers included; steals only when it pays. The default:
    /// without a performance model it places like `eager`, and it measures one as it runs.
    #[default]
    Locality,
    /// Static list scheduling by upward rank, insertion-based; each worker follows its
    /// planned order.
    Heft,
    /// StarPU's HeteroPrio: shared buckets by acceleration factor, GPUs take the most
    /// accelerated tasks, CPUs the least (no spoliation).
    #[serde(rename = "heteroprio")]
    HeteroPrio,
    /// A uniformly random eligible worker: the floor.
    Random,
}

impl PolicyKind {
    /// Every policy, for help texts and benches.
    pub const ALL: [PolicyKind; 6] = [
        PolicyKind::Eager,
        PolicyKind::Ws,
        PolicyKind::Locality,
        PolicyKind::Heft,
        PolicyKind::HeteroPrio,
        PolicyKind::Random,
    ];

    /// Parses a policy name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "eager" => Some(PolicyKind::Eager),
            "ws" => Some(PolicyKind::Ws),
            "locality" => Some(PolicyKind::Locality),
            "heft" => Some(PolicyKind::Heft),
            "heteroprio" => Some(PolicyKind::HeteroPrio),
            "random" => Some(PolicyKind::Random),
            _ => None,
        }
    }

    /// Whether the policy decides from expected task costs: the drivers compute them from
    /// the model (which the runtime calibrates as it runs) and rank priorities by the
    /// critical path unless the graph sets its own.
    pub fn uses_costs(self) -> bool {
        matches!(self, PolicyKind::Locality | PolicyKind::Heft | PolicyKind::HeteroPrio)
    }

    /// The name.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Eager => "eager",
            PolicyKind::Ws => "ws",
            PolicyKind::Locality => "locality",
            PolicyKind::Heft => "heft",
            PolicyKind::HeteroPrio => "heteroprio",
            PolicyKind::Random => "random",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PolicyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PolicyKind::parse(s)
            .ok_or_else(|| format!("unknown policy '{s}' (known: eager, ws, locality, heft, heteroprio, random)"))
    }
}

/// Puts a task in the queue its eligibility calls for when no worker is preferred: the one
/// worker's mailbox when only one may run it, else the shared queue of its eligibility set.
fn place_unpreferred<Q: ReadyQueues>(plan: &Plan, q: &mut Q, task: u32) {
    let set = plan.task_set(task);
    let band = plan.band(task);
    match plan.set(set).workers.as_slice() {
        [only] => q.push_mailbox(*only, band, task),
        _ => q.push_shared(set, band, task),
    }
}

/// Looks in `worker`'s mailbox and the shared queues of its eligibility sets, band by band
/// (highest priority first).
fn take_queued<Q: ReadyQueues>(plan: &Plan, q: &mut Q, worker: WorkerId, batch: bool) -> Option<u32> {
    for band in 0..plan.num_bands() {
        if let Some(t) = q.pop_mailbox(worker, band) {
            return Some(t);
        }
        for &set in plan.sets_of(worker) {
            if let Some(t) = q.pop_shared(worker, set, band, batch) {
                return Some(t);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
