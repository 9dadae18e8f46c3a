//! Lower bounds no schedule can beat: the critical path with every task on its fastest
//! device class, and the area bound — the least time in which CPUs and GPUs together could
//! do all the work if tasks could be split between them (the linear-programming bound, exact
//! for two classes by a greedy fill in order of GPU advantage) — and the mixed bound, both at
//! once ([`mixed_bound`], a linear program solved with microlp).
//!
//! Costs are expected finite and non-negative (inputs are checked where they enter, see
//! [`crate::limits`]). Others never make these functions hang: a negative or NaN cost counts
//! as 0, and every loop has an iteration cap — the search for a feasible area bound gives up
//! after [`MAX_DOUBLINGS`] doublings and returns the largest time it proved too short (a
//! valid lower bound, if not the tightest), the bisection stops after 100 halvings.

use serde::Serialize;

use crate::sched::compile::Successors;

/// The bounds of one graph on one machine, in seconds.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct LowerBound {
    /// The critical path on the fastest class, seconds.
    pub critical_path_s: f64,
    /// The area bound (total work over the workers), seconds.
    pub area_s: f64,
    /// The mixed (LP) bound, when solved ([`crate::sim::mixed_bound`]), seconds.
    pub mixed_s: Option<f64>,
    /// The largest of them.
    pub bound_s: f64,
}

impl LowerBound {
    /// With the mixed bound, when it was solved: the bound is the largest of the three.
    pub fn with_mixed(mut self, mixed: Option<f64>) -> Self {
        self.mixed_s = mixed;
        if let Some(m) = mixed {
            self.bound_s = self.bound_s.max(m);
        }
        self
    }
}

/// Doublings of the area bound's upper end before giving up: from the smallest positive
/// `f64`, 2100 doublings pass `f64::MAX`, so a finite bound is always found before the cap.
pub const MAX_DOUBLINGS: usize = 2100;

/// A cost as the bounds read it: negative and NaN costs (never valid input) count as 0.
fn sane(c: f64) -> f64 {
    if c > 0.0 {
        c
    } else {
        0.0
    }
}

/// `costs[t] = [cpu, gpu]`, `None` where the task cannot run.
pub fn lower_bound(edges: &Successors, costs: &[[Option<f64>; 2]], cpus: usize, gpus: usize) -> LowerBound {
    let costs: Vec<[Option<f64>; 2]> = costs.iter().map(|c| c.map(|x| x.map(sane))).collect();
    let costs = costs.as_slice();
    let fastest: Vec<f64> = costs
        .iter()
        .map(|c| c.iter().flatten().copied().fold(f64::INFINITY, f64::min))
        .collect();
    let mut start = vec![0.0f64; fastest.len()];
    let mut cp = 0.0f64;
    for t in 0..fastest.len() {
        let finish = start[t] + fastest[t];
        cp = cp.max(finish);
        for &s in edges.of_task(t as u32) {
            start[s as usize] = start[s as usize].max(finish);
        }
    }
    let area = area_bound(costs, cpus, gpus);
    LowerBound {
        critical_path_s: cp,
        area_s: area,
        mixed_s: None,
        bound_s: cp.max(area),
    }
}

fn area_bound(costs: &[[Option<f64>; 2]], cpus: usize, gpus: usize) -> f64 {
    let (cpus, gpus) = (cpus as f64, gpus as f64);
    let mut forced_cpu = 0.0;
    let mut forced_gpu = 0.0;
    let mut flexible: Vec<(f64, f64)> = Vec::new();
    for c in costs {
        match (c[0], c[1]) {
            (Some(a), Some(b)) if gpus > 0.0 && cpus > 0.0 => flexible.push((a, b)),
            (Some(a), _) if cpus > 0.0 => forced_cpu += a,
            (_, Some(b)) if gpus > 0.0 => forced_gpu += b,
            _ => {}
        }
    }
    // Most GPU-favourable first.
    flexible.sort_by(|x, y| (y.0 / y.1.max(1e-300)).total_cmp(&(x.0 / x.1.max(1e-300))));
    let feasible = |t: f64| {
        let mut gpu_room = gpus * t - forced_gpu;
        if gpu_room < 0.0 {
            return false;
        }
        let mut cpu_load = forced_cpu;
        for &(a, b) in &flexible {
            if gpu_room >= b {
                gpu_room -= b;
            } else {
                let frac = if b > 0.0 { gpu_room / b } else { 1.0 };
                gpu_room = 0.0;
                cpu_load += (1.0 - frac) * a;
            }
        }
        cpu_load <= cpus * t * (1.0 + 1e-12)
    };
    let mut hi = forced_cpu / cpus.max(1.0)
        + forced_gpu / gpus.max(1.0)
        + flexible.iter().map(|f| f.0.min(f.1)).sum::<f64>()
        + 1e-12;
    // Capped: with costs that are not durations (infinite, or negative had they not been
    // read as 0) no time may be feasible, and doubling would go on for ever.
    let mut lo = 0.0;
    let mut doublings = 0;
    while !feasible(hi) {
        if doublings == MAX_DOUBLINGS || !hi.is_finite() {
            // The best bound proved: every time up to `hi` is too short.
            return hi;
        }
        lo = hi;
        hi *= 2.0;
        doublings += 1;
    }
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if feasible(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// Largest graph whose LP bound is solved ([`mixed_bound`]): past it the LP (two variables
/// and about three constraints per task) takes seconds.
pub const MIXED_BOUND_MAX_TASKS: usize = 4000;

/// How long the LP may take before [`mixed_bound`] gives up.
#[cfg(feature = "lp-bound")]
const MIXED_BOUND_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The mixed bound: the least makespan when each task may be split between a CPU and a GPU
/// (a fraction `x` of it on the GPU, taking `x·gpu + (1−x)·cpu`), its dependencies hold as in
/// the critical path, and the CPUs and the GPUs each do their share of the work within it
/// (the area constraints). A linear program; at least the critical path on the fastest class
/// and the area bound, usually above both, since no schedule reaches both at once. Transfers
/// cost nothing, as in the other bounds.
///
/// `None` when it does not apply (one device class: it equals the other bounds), the graph
/// has more than `MIXED_BOUND_MAX_TASKS` (4,000) tasks, the solver gives no proven optimum within
/// its time limit, or hexec was built without the `lp-bound` feature.
pub fn mixed_bound(edges: &Successors, costs: &[[Option<f64>; 2]], cpus: usize, gpus: usize) -> Option<f64> {
    if cpus == 0 || gpus == 0 || costs.len() > MIXED_BOUND_MAX_TASKS || costs.is_empty() {
        return None;
    }
    #[cfg(feature = "lp-bound")]
    {
        solve_mixed(edges, costs, cpus, gpus)
    }
    #[cfg(not(feature = "lp-bound"))]
    {
        let _ = edges;
        None
    }
}

#[cfg(feature = "lp-bound")]
fn solve_mixed(edges: &Successors, costs: &[[Option<f64>; 2]], cpus: usize, gpus: usize) -> Option<f64> {
    use microlp::{ComparisonOp, OptimizationDirection, Problem, SolutionStatus, SolveOutcome};
    let mut lp = Problem::new(OptimizationDirection::Minimize);
    lp.set_time_limit(MIXED_BOUND_TIME_LIMIT);
    let makespan = lp.add_var(1.0, (0.0, f64::INFINITY));
    // Per task: its start, and for a task either class may run, the fraction on the GPU.
    // Its duration is `base + slope·x`.
    let (mut forced_cpu, mut forced_gpu, mut flexible_cpu) = (0.0, 0.0, 0.0);
    let mut cpu_area = Vec::new();
    let mut gpu_area = Vec::new();
    let mut tasks = Vec::with_capacity(costs.len());
    for c in costs {
        let start = lp.add_var(0.0, (0.0, f64::INFINITY));
        let (base, on_gpu) = match (c[0].map(sane), c[1].map(sane)) {
            (Some(cpu), Some(gpu)) => {
                let x = lp.add_var(0.0, (0.0, 1.0));
                flexible_cpu += cpu;
                cpu_area.push((x, -cpu));
                gpu_area.push((x, gpu));
                (cpu, Some((x, gpu - cpu)))
            }
            (Some(cpu), None) => {
                forced_cpu += cpu;
                (cpu, None)
            }
            (None, Some(gpu)) => {
                forced_gpu += gpu;
                (gpu, None)
            }
            (None, None) => (0.0, None),
        };
        tasks.push((start, base, on_gpu));
    }
    // `start[s] ≥ start[t] + duration[t]` for every edge, `makespan ≥ finish` for every sink.
    for (t, &(start, base, on_gpu)) in tasks.iter().enumerate() {
        let after: Vec<microlp::Variable> = edges.of_task(t as u32).iter().map(|&s| tasks[s as usize].0).collect();
        let ends = if after.is_empty() { vec![makespan] } else { after };
        for later in ends {
            let mut row = vec![(later, 1.0), (start, -1.0)];
            if let Some((x, slope)) = on_gpu {
                row.push((x, -slope));
            }
            lp.add_constraint(row.as_slice(), ComparisonOp::Ge, base);
        }
    }
    // CPU work `forced + Σ cpu·(1−x) ≤ cpus·T`, GPU work `forced + Σ gpu·x ≤ gpus·T`.
    cpu_area.push((makespan, -(cpus as f64)));
    lp.add_constraint(cpu_area.as_slice(), ComparisonOp::Le, -(forced_cpu + flexible_cpu));
    gpu_area.push((makespan, -(gpus as f64)));
    lp.add_constraint(gpu_area.as_slice(), ComparisonOp::Le, -forced_gpu);
    match lp.solve() {
        Ok(SolveOutcome::Solution(s)) if s.status() == SolutionStatus::Optimal => {
            // Shaved by the solver's relative tolerance, so that rounding never makes it
            // exceed a schedule that meets it.
            Some(s.objective() * (1.0 - 1e-7))
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("the LP lower bound was not solved: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Graph;
    use crate::kernels::builtin;

    #[test]
    fn costs_that_are_not_durations_end_the_search() {
        // Negative costs kept the area bound's search doubling a negative time for ever;
        // infinite ones doubled infinity. Both end now, the first as if 0.
        let mut g = Graph::new();
        for _ in 0..3 {
            g.task(&builtin::noop()).add();
        }
        let e = Successors::of(&g);
        let b = lower_bound(&e, &[[Some(-1.0), None]; 3], 2, 0);
        assert!(b.bound_s >= 0.0 && b.bound_s < 1e-9, "{b:?}");
        let b = lower_bound(
            &e,
            &[
                [Some(-1.0), Some(-2.0)],
                [Some(f64::NAN), Some(1.0)],
                [None, Some(-5.0)],
            ],
            2,
            1,
        );
        assert!(b.bound_s.is_finite() && b.bound_s >= 0.0, "{b:?}");
        let b = lower_bound(
            &e,
            &[
                [Some(f64::INFINITY), Some(1.0)],
                [Some(1.0), None],
                [None, Some(f64::INFINITY)],
            ],
            2,
            1,
        );
        assert_eq!(b.bound_s, f64::INFINITY);
    }

    #[test]
    fn bounds_of_simple_cases() {
        // 10 independent tasks, 1 s on CPU, 0.1 s on GPU; 2 CPUs + 1 GPU: capacity
        // 2 + 10 = 12 task-seconds-of-CPU per second, so the area bound is 10 / 12 s.
        let mut g = Graph::new();
        for _ in 0..10 {
            g.task(&builtin::noop()).add();
        }
        let e = Successors::of(&g);
        let costs = vec![[Some(1.0), Some(0.1)]; 10];
        let b = lower_bound(&e, &costs, 2, 1);
        assert!((b.area_s - 10.0 / 12.0).abs() < 1e-9, "{b:?}");
        assert!((b.critical_path_s - 0.1).abs() < 1e-12);
        // A chain: the critical path dominates.
        let mut g = Graph::new();
        let mut prev = g.task(&builtin::noop()).add();
        for _ in 0..4 {
            prev = g.task(&builtin::noop()).after(prev).add();
        }
        let b = lower_bound(&Successors::of(&g), &[[Some(1.0), None]; 5], 4, 0);
        assert_eq!(b.bound_s, 5.0);
        assert!((b.area_s - 1.25).abs() < 1e-9);
    }

    /// A chain of tasks the GPU runs 3 times faster, beside independent tasks it runs 10
    /// times faster, on 1 CPU and 1 GPU. The area bound gives the GPU the independent tasks
    /// and 1.25 s of the chain (5.25 s), but then the chain alone takes 6.5 s; the LP sees
    /// both at once.
    #[cfg(feature = "lp-bound")]
    #[test]
    fn the_mixed_bound_sees_the_critical_path_and_the_area_at_once() {
        let mut g = Graph::new();
        let mut prev = g.task(&builtin::noop()).add();
        for _ in 0..2 {
            prev = g.task(&builtin::noop()).after(prev).add();
        }
        for _ in 0..4 {
            g.task(&builtin::noop()).add();
        }
        let e = Successors::of(&g);
        let mut costs = vec![[Some(3.0), Some(1.0)]; 3];
        costs.extend([[Some(10.0), Some(1.0)]; 4]);
        let b = lower_bound(&e, &costs, 1, 1);
        assert!((b.area_s - 5.25).abs() < 1e-6, "{b:?}");
        assert!((b.critical_path_s - 3.0).abs() < 1e-12);
        let mixed = mixed_bound(&e, &costs, 1, 1).expect("solved");
        assert!(mixed > b.area_s + 0.1, "{mixed} vs {b:?}");
        // Every task on the GPU, one after another, takes 7 s: a schedule that exists.
        assert!(mixed <= 7.0, "{mixed}");
        let b = b.with_mixed(Some(mixed));
        assert_eq!(b.bound_s, mixed);
        // One class: no LP.
        assert_eq!(mixed_bound(&e, &costs, 2, 0), None);
    }
}
