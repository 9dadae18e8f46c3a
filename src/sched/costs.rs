//! Per-task costs as the planning policies and their drivers use them: expected compute time
//! on each device kind, priorities from upward ranks, and HEFT's plan. Shared by the runtime
//! and the simulator so that both plan the same way from the same costs.

use super::heft::{upward_ranks, Heft};
use super::Plan;
use crate::graph::Graph;
use crate::sched::compile::Successors;
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

/// The best of HEFT's plans under five task weights for the upward ranks, by planned
/// makespan: the mean over the workers (the textbook's), the fastest class's (the critical
/// path as the fast device sees it), the machine's combined rate (`n / Σ 1/cost`, what a task
/// costs when every worker shares it), the slowest class's, and the geometric mean of the
/// two classes'. Which ranks order a heterogeneous machine best depends on the graph and the
/// machine (on the simulated Cholesky rows each wins somewhere, by up to 15%); a plan
/// predicts its own makespan, so the look-ahead takes the shortest.
pub fn best_heft_plan(
    plan: &Plan,
    edges: &Successors,
    costs: &[TaskCost],
    kind_of: &[DeviceKind],
    comm: impl Fn(u32, u32, WorkerId, WorkerId) -> f64,
    mean_comm: impl Fn(u32, u32) -> f64,
) -> Heft {
    let (cpus, gpus) = classes(kind_of);
    let combined = |c: &TaskCost| {
        let rate = c[0].map_or(0.0, |x| cpus as f64 / x.max(1e-12)) + c[1].map_or(0.0, |x| gpus as f64 / x.max(1e-12));
        if rate > 0.0 {
            (cpus + gpus) as f64 / rate
        } else {
            0.0
        }
    };
    let slowest = |c: &TaskCost| c.iter().flatten().copied().fold(0.0, f64::max);
    let geometric = |c: &TaskCost| match (c[0], c[1]) {
        (Some(a), Some(b)) => (a * b).sqrt(),
        _ => fastest(c),
    };
    let weights: [&dyn Fn(&TaskCost) -> f64; 5] = [
        &|c| average(c, cpus, gpus),
        &|c| fastest(c),
        &combined,
        &slowest,
        &geometric,
    ];
    let tried = if costs.len() > SEVERAL_PLANS_MAX_TASKS {
        1
    } else {
        weights.len()
    };
    let mut best: Option<Heft> = None;
    for weight in weights.into_iter().take(tried) {
        let h = plan_ranked_by(plan, edges, costs, kind_of, &comm, &mean_comm, weight);
        let Some(m) = h.planned_makespan() else {
            return h; // uncalibrated: every weight gives the same answer
        };
        // Another weight replaces the textbook's only when its plan is clearly shorter: a
        // plan does not see links busy with other copies, and differences of a few percent
        // between plans are within that error.
        let margin = if best.is_none() { 1.0 } else { 1.0 - PLAN_MARGIN };
        if best
            .as_ref()
            .and_then(Heft::planned_makespan)
            .is_none_or(|b| m < b * margin)
        {
            best = Some(h);
        }
    }
    best.unwrap_or_else(Heft::uncalibrated)
}

/// HEFT's plan from per-task costs: `kind_of[w]` gives each worker's kind, `comm(p, t, from,
/// to)` the time to move `p`'s outputs read by `t` between two workers' memories. Ranks
/// weigh each task by its mean cost over the workers, as the textbook does.
pub fn heft_plan(
    plan: &Plan,
    edges: &Successors,
    costs: &[TaskCost],
    kind_of: &[DeviceKind],
    comm: impl Fn(u32, u32, WorkerId, WorkerId) -> f64,
    mean_comm: impl Fn(u32, u32) -> f64,
) -> Heft {
    let (cpus, gpus) = classes(kind_of);
    plan_ranked_by(plan, edges, costs, kind_of, &comm, &mean_comm, &|c| {
        average(c, cpus, gpus)
    })
}

/// CPU and GPU workers.
fn classes(kind_of: &[DeviceKind]) -> (usize, usize) {
    let cpus = kind_of.iter().filter(|k| **k == DeviceKind::Cpu).count();
    (cpus, kind_of.len() - cpus)
}

/// HEFT's plan with upward ranks that weigh each task by `weight` of its costs.
fn plan_ranked_by(
    plan: &Plan,
    edges: &Successors,
    costs: &[TaskCost],
    kind_of: &[DeviceKind],
    comm: &dyn Fn(u32, u32, WorkerId, WorkerId) -> f64,
    mean_comm: &dyn Fn(u32, u32) -> f64,
    weight: &dyn Fn(&TaskCost) -> f64,
) -> Heft {
    let rank = upward_ranks(edges, |t| weight(&costs[t as usize]), mean_comm);
    Heft::plan(
        plan,
        edges,
        &rank,
        |t, w| costs[t as usize][kind_index(kind_of[w.index()])],
        comm,
    )
}
