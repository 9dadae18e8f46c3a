//! Per-task costs as the planning policies and their drivers use them: expected compute time
//! on each device kind, priorities from upward ranks, and HEFT's plan. Shared by the runtime
//! and the simulator so that both plan the same way from the same costs.

use super::heft::{upward_ranks, Heft};
use super::Plan;
use crate::graph::Graph;
use crate::sched::compile::{Predecessors, Successors};
use crate::topology::{DeviceKind, WorkerId};

/// `[cpu, gpu]` expected seconds per task; `None` where unknown or impossible.
pub type TaskCost = [Option<f64>; 2];

/// The kernels whose duration a task states itself (replayed traces): `spin` and `sleep`
/// run for their first parameter in seconds, `noop` for none.
pub fn is_replayed(kernel: &str) -> bool {
    matches!(kernel, "spin" | "sleep" | "noop")
}

/// How long task `t` says it takes, when its kernel is a replayed one ([`is_replayed`]): the
/// one definition the runtime's prediction and the simulator's costs read.
pub fn recorded_seconds(graph: &Graph, t: usize) -> Option<f64> {
    match graph.task_kernel(t) {
        "spin" | "sleep" => graph.params[graph.tasks[t].params.range()].first().copied(),
        "noop" => Some(0.0),
        _ => None,
    }
}

/// The index of a kind in a [`TaskCost`].
pub fn kind_index(k: DeviceKind) -> usize {
    match k {
        DeviceKind::Cpu => 0,
        DeviceKind::Gpu => 1,
    }
}

/// `costs` where each task may run at all: `None` for a kind none of the workers its
/// eligible set holds is of (`kinds[w]`: worker `w`'s kind).
pub fn allowed_costs(plan: &Plan, kinds: &[DeviceKind], costs: &[TaskCost]) -> Vec<TaskCost> {
    costs
        .iter()
        .enumerate()
        .map(|(t, c)| {
            let set = plan.set(plan.task_set(t as u32));
            let mut c = *c;
            for kind in [DeviceKind::Cpu, DeviceKind::Gpu] {
                if !set.workers.iter().any(|w| kinds[w.index()] == kind) {
                    c[kind_index(kind)] = None;
                }
            }
            c
        })
        .collect()
}

/// The cost on the fastest kind that can run the task (0 when none is known).
pub fn fastest(c: &TaskCost) -> f64 {
    let f = c.iter().flatten().copied().fold(f64::INFINITY, f64::min);
    if f.is_finite() {
        f
    } else {
        0.0
    }
}

/// The cost averaged over the workers that can run the task.
pub fn average(c: &TaskCost, cpus: usize, gpus: usize) -> f64 {
    let w = [cpus as f64, gpus as f64];
    let (mut sum, mut n) = (0.0, 0.0);
    for k in 0..2 {
        if let Some(v) = c[k] {
            sum += v * w[k];
            n += w[k];
        }
    }
    if n > 0.0 {
        sum / n
    } else {
        0.0
    }
}

/// Priorities from the critical path: upward ranks on fastest-device costs, turned into
/// ranks (the highest rank gets the highest priority).
pub fn rank_priorities(edges: &Successors, costs: &[TaskCost]) -> Vec<i32> {
    let n = costs.len();
    let rank = upward_ranks(edges, |t| fastest(&costs[t as usize]), |_, _| 0.0);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| rank[b].total_cmp(&rank[a]).then(a.cmp(&b)));
    let mut prio = vec![0i32; n];
    for (pos, &t) in order.iter().enumerate() {
        prio[t] = (n - pos) as i32;
    }
    prio
}

/// How much shorter (relative) another plan must be than the textbook's to replace it in
/// [`best_heft_plan`].
pub const PLAN_MARGIN: f64 = 0.03;

/// Graphs past this many tasks get the textbook plan alone from [`best_heft_plan`]: a plan
/// costs about 3 µs per task on a 24-worker machine, paid before the run starts.
pub const SEVERAL_PLANS_MAX_TASKS: usize = 20_000;

/// The look-ahead's plan: the shortest of HEFT's plans under several rank weights
/// ([`shortest_ranked_plan`]), improved, when copies cost nothing, by a local search over
/// device classes ([`search_classes`]).
pub fn best_heft_plan(inputs: &Planning<'_>) -> Heft {
    let (best, weight, tried) = shortest_ranked_plan(inputs);
    // The search trusts the plan's makespan to the last percent, which holds only when copies
    // cost nothing: a plan does not see links busy with other copies, and with copies the
    // plans it found shorter did not run shorter on the schedule bench.
    let n = inputs.costs.len();
    if !inputs.copies_free() {
        return best;
    }
    let budget = PLANNING_BUDGET_TASKS.saturating_sub(tried * n);
    search_classes(inputs, best, weight, budget)
}

/// What HEFT plans from: the compiled graph's eligibility and edges, per-task costs, each
/// worker's kind, and the copy times (`comm(p, t, from, to)`: moving `p`'s outputs that `t`
/// reads between two workers' memories; `mean_comm(p, t)`: the same for ranks).
pub(crate) struct Planning<'a> {
    pub plan: &'a Plan,
    pub edges: &'a Successors,
    pub costs: &'a [TaskCost],
    pub kind_of: &'a [DeviceKind],
    pub comm: &'a dyn Fn(u32, u32, WorkerId, WorkerId) -> f64,
    pub mean_comm: &'a dyn Fn(u32, u32) -> f64,
}

impl Planning<'_> {
    /// Whether no copy between two tasks costs anything (free links, or tasks that hand
    /// each other no bytes): a plan's makespan then leaves out no copy.
    fn copies_free(&self) -> bool {
        (0..self.costs.len() as u32).all(|t| self.edges.of_task(t).iter().all(|&s| (self.mean_comm)(t, s) == 0.0))
    }

    /// HEFT's plan with upward ranks that weigh each task by rank weight `weight`
    /// ([`rank_weight`]); a task `t` with `forced[t]` runs on that kind only.
    fn ranked_by(&self, weight: usize, forced: &[Option<DeviceKind>]) -> Heft {
        let weigh = rank_weight(self.kind_of, weight);
        let rank = upward_ranks(self.edges, |t| weigh(&self.costs[t as usize]), self.mean_comm);
        Heft::plan(
            self.plan,
            self.edges,
            &rank,
            |t, w| {
                let kind = self.kind_of[w.index()];
                if forced.get(t as usize).copied().flatten().is_some_and(|f| f != kind) {
                    return Some(f64::INFINITY);
                }
                self.costs[t as usize][kind_index(kind)]
            },
            self.comm,
        )
    }
}

/// A plan whose busiest GPU link is planned busy for at most this share of its makespan is
/// trusted ([`plan_trust`]). A plan sees each copy as if its link were free, so the
/// fuller a link, the later copies come than planned. On the schedule bench, following plans
/// whose busiest link was busy at most 0.37 of the makespan (every row of mirage and attila,
/// sirocco 10×10, Skylake + 1 V100 10×10 of 128 with measured copies, every row of free
/// links) matched or beat earliest finish; from 0.48 up it did anything from 2% better to
/// 1.8 times slower (Skylake + V100 with copies of 3.1 ms); sirocco 20×20 and 40×40 (0.53,
/// 0.58) did 0.3–0.5% worse. (Measured once, following every plan by hand; no bench sweeps
/// the threshold.)
pub const TRUSTED_LINK_SHARE: f64 = 0.45;

/// How far `locality` may go by a plan ([`plan_trust`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanTrust {
    /// A guide only: its links are too busy for its times to hold.
    Guide,
    /// Its times roughly hold: its links are lightly used ([`TRUSTED_LINK_SHARE`]).
    Trusted,
    /// Its times hold exactly: the machine's links cost nothing (a simulated machine with
    /// free links), and the plan's costs are the run's.
    Exact,
}

/// How far a plan's times can be trusted: `Exact` on a machine whose links cost nothing
/// (`links_free`: the simulator's free links; never the runtime); `Trusted` when the copies
/// it plans into and out of each GPU, one per datum and memory, take at most
/// [`TRUSTED_LINK_SHARE`] of its makespan, by `inputs`' copy times; else `Guide`.
pub fn plan_trust(heft: &Heft, inputs: &Planning<'_>, links_free: bool) -> PlanTrust {
    if heft.planned_makespan().is_none() {
        PlanTrust::Guide
    } else if links_free {
        PlanTrust::Exact
    } else if links_lightly_used(heft, inputs) {
        PlanTrust::Trusted
    } else {
        PlanTrust::Guide
    }
}

/// Whether the copies `heft` plans into and out of each GPU take at most
/// [`TRUSTED_LINK_SHARE`] of its makespan.
fn links_lightly_used(heft: &Heft, inputs: &Planning<'_>) -> bool {
    let (edges, kind_of, comm) = (inputs.edges, inputs.kind_of, inputs.comm);
    let Some(makespan) = heft.planned_makespan() else {
        return false;
    };
    // A memory: the host's (every CPU) or one GPU's.
    let memory = |w: WorkerId| (kind_of[w.index()] == DeviceKind::Gpu).then_some(w.index());
    let mut busy = vec![0.0f64; 2 * kind_of.len()];
    let mut copied_to: Vec<Option<usize>> = Vec::new();
    for p in 0..heft.tasks() as u32 {
        let Some(from) = heft.assigned(p) else { continue };
        copied_to.clear();
        for &t in edges.of_task(p) {
            let Some(to) = heft.assigned(t) else { continue };
            if memory(from) == memory(to) || copied_to.contains(&memory(to)) {
                continue;
            }
            copied_to.push(memory(to));
            let c = comm(p, t, from, to);
            if let Some(g) = memory(from) {
                busy[2 * g] += c;
            }
            if let Some(g) = memory(to) {
                busy[2 * g + 1] += c;
            }
        }
    }
    busy.iter().all(|&b| b <= TRUSTED_LINK_SHARE * makespan)
}

/// Upward-rank weights [`shortest_ranked_plan`] compares, the textbook's first.
const RANK_WEIGHTS: usize = 5;

/// The `i`-th rank weight on a machine of these workers: the mean over the workers (the
/// textbook's), the fastest class's cost, the machine's combined rate, the slowest class's
/// cost, the geometric mean of the two classes' costs.
fn rank_weight(kind_of: &[DeviceKind], i: usize) -> impl Fn(&TaskCost) -> f64 {
    let (cpus, gpus) = classes(kind_of);
    move |c: &TaskCost| match i {
        0 => average(c, cpus, gpus),
        1 => fastest(c),
        2 => {
            let rate =
                c[0].map_or(0.0, |x| cpus as f64 / x.max(1e-12)) + c[1].map_or(0.0, |x| gpus as f64 / x.max(1e-12));
            if rate > 0.0 {
                (cpus + gpus) as f64 / rate
            } else {
                0.0
            }
        }
        3 => c.iter().flatten().copied().fold(0.0, f64::max),
        _ => match (c[0], c[1]) {
            (Some(a), Some(b)) => (a * b).sqrt(),
            _ => fastest(c),
        },
    }
}

/// The best of HEFT's plans under five task weights for the upward ranks ([`rank_weight`]),
/// by planned makespan: the mean over the workers (the textbook's), the fastest class's (the
/// critical path as the fast device sees it), the machine's combined rate (`n / Σ 1/cost`,
/// what a task costs when every worker shares it), the slowest class's, and the geometric
/// mean of the two classes'. Which ranks order a heterogeneous machine best depends on the
/// graph and the machine (on the simulated Cholesky rows each wins somewhere, by up to 15%);
/// a plan predicts its own makespan, so the look-ahead takes the shortest. Returns the plan,
/// its weight's index and how many plans were made.
pub(crate) fn shortest_ranked_plan(inputs: &Planning<'_>) -> (Heft, usize, usize) {
    let tried = if inputs.costs.len() > SEVERAL_PLANS_MAX_TASKS {
        1
    } else {
        RANK_WEIGHTS
    };
    let mut best: Option<(Heft, usize)> = None;
    for i in 0..tried {
        let h = inputs.ranked_by(i, &[]);
        let Some(m) = h.planned_makespan() else {
            return (h, 0, i + 1); // uncalibrated: every weight gives the same answer
        };
        // Another weight replaces the textbook's only when its plan is clearly shorter: a
        // plan does not see links busy with other copies, and differences of a few percent
        // between plans are within that error.
        let margin = if best.is_none() { 1.0 } else { 1.0 - PLAN_MARGIN };
        if best
            .as_ref()
            .and_then(|(b, _)| b.planned_makespan())
            .is_none_or(|b| m < b * margin)
        {
            best = Some((h, i));
        }
    }
    match best {
        Some((h, i)) => (h, i, tried),
        None => (Heft::uncalibrated(), 0, tried),
    }
}

/// Plans at most this many tasks in all, over every plan [`best_heft_plan`] tries.
pub const PLANNING_BUDGET_TASKS: usize = 100_000;

/// A local search over device classes from HEFT's plan `start`: a task of the plan's critical
/// chain ([`critical_chain`]) is forced onto the other class and the graph replanned with
/// the same rank weight; a shorter plan is kept, and the search goes on from its chain.
/// Candidates come most time saved on the class they leave per time added on the other
/// first; a move that did not shorten the plan is not tried again. Stops when no move of the
/// chain shortens the plan or after `budget` planned tasks. The result replaces `start`
/// only when [`PLAN_MARGIN`] shorter: `locality` does not replay a plan, and smaller gains
/// did not carry over to its runs on the schedule bench.
///
/// Why: HEFT places each task where it finishes first, blind to what that costs the tasks
/// behind it. On a machine of one fast GPU and many slow cores the GPU takes nearly
/// everything, becomes the chain, and the cores idle; moving a few tasks of least GPU gain
/// onto the cores shortens the whole (Cholesky N=10 on 32 Skylake cores + 1 V100: 116.2 ms
/// planned → 111.6).
fn search_classes(inputs: &Planning<'_>, start: Heft, weight: usize, mut budget: usize) -> Heft {
    let (costs, kind_of) = (inputs.costs, inputs.kind_of);
    let n = costs.len();
    let Some(m0) = start.planned_makespan() else {
        return start;
    };
    let preds = Predecessors::of(inputs.edges);
    let mut forced: Vec<Option<DeviceKind>> = vec![None; n];
    let mut failed = vec![false; n];
    // The shortest plan found, when shorter than `start`.
    let mut found: Option<(Heft, f64)> = None;
    'search: loop {
        let (current, current_m) = found.as_ref().map_or((&start, m0), |(h, m)| (h, *m));
        let class = |t: u32| current.assigned(t).map(|w| kind_of[w.index()]);
        // Time saved on the class the task leaves per time added on the other.
        let gain = |t: u32| -> Option<f64> {
            let c = &costs[t as usize];
            let (cpu, gpu) = (c[0]?, c[1]?);
            Some(match class(t)? {
                DeviceKind::Gpu => gpu / cpu.max(1e-12),
                DeviceKind::Cpu => cpu / gpu.max(1e-12),
            })
        };
        let mut chain: Vec<(f64, u32)> = critical_chain(current, &preds, n)
            .into_iter()
            .filter(|&t| forced[t as usize].is_none() && !failed[t as usize])
            .filter_map(|t| Some((gain(t)?, t)))
            .collect();
        chain.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, t) in chain {
            if budget < n {
                break 'search;
            }
            budget -= n;
            forced[t as usize] = match class(t) {
                Some(DeviceKind::Gpu) => Some(DeviceKind::Cpu),
                _ => Some(DeviceKind::Gpu),
            };
            let h = inputs.ranked_by(weight, &forced);
            if let Some(m) = h.planned_makespan().filter(|&m| m < current_m * (1.0 - 1e-9)) {
                found = Some((h, m));
                continue 'search;
            }
            forced[t as usize] = None;
            failed[t as usize] = true;
        }
        break;
    }
    match found {
        Some((h, m)) if m < m0 * (1.0 - PLAN_MARGIN) => h,
        _ => start,
    }
}

/// The tasks whose finishes set a plan's makespan (copies free), last first: from the task
/// that ends last, each step goes to what it waited for, the predecessor that finished just
/// as it started or else the task before it on its worker.
fn critical_chain(h: &Heft, preds: &Predecessors, tasks: usize) -> Vec<u32> {
    let Some(mut cur) = (0..tasks as u32).max_by(|&a, &b| {
        h.planned_finish(a)
            .unwrap_or(0.0)
            .total_cmp(&h.planned_finish(b).unwrap_or(0.0))
    }) else {
        return Vec::new();
    };
    let eps = 1e-9 * h.planned_makespan().unwrap_or(0.0).max(1e-12);
    let mut chain = vec![cur];
    while let Some(start) = h.planned_start(cur) {
        if start <= eps {
            break;
        }
        let by_data = preds
            .of_task(cur)
            .iter()
            .copied()
            .find(|&p| h.planned_finish(p).is_some_and(|f| (f - start).abs() <= eps));
        let next = by_data.or_else(|| {
            h.planned_before(cur)
                .filter(|&b| h.planned_finish(b).is_some_and(|f| (f - start).abs() <= eps))
        });
        match next {
            Some(p) => {
                chain.push(p);
                cur = p;
            }
            None => break,
        }
    }
    chain
}

/// HEFT's plan, as the textbook makes it: ranks weigh each task by its mean cost over the
/// workers.
pub fn heft_plan(inputs: &Planning<'_>) -> Heft {
    inputs.ranked_by(0, &[])
}

/// CPU and GPU workers.
fn classes(kind_of: &[DeviceKind]) -> (usize, usize) {
    let cpus = kind_of.iter().filter(|k| **k == DeviceKind::Cpu).count();
    (cpus, kind_of.len() - cpus)
}
