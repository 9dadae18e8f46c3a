//! Deterministic tests of the policies over [`SimQueues`].

use super::*;
use crate::topology::DeviceKind;

fn mask(n: usize, ws: &[u32]) -> EligibleSet {
    let mut m = WorkerMask::empty(n);
    for &w in ws {
        m.insert(WorkerId(w));
    }
    EligibleSet {
        workers: ws.iter().map(|&w| WorkerId(w)).collect(),
        mask: m,
    }
}

/// What HEFT plans from, for the planner tests.
fn planning<'a>(
    plan: &'a Plan,
    edges: &'a crate::sched::compile::Successors,
    costs: &'a [TaskCost],
    kind_of: &'a [DeviceKind],
    comm: &'a dyn Fn(u32, u32, WorkerId, WorkerId) -> f64,
    mean_comm: &'a dyn Fn(u32, u32) -> f64,
) -> Planning<'a> {
    Planning {
        plan,
        edges,
        costs,
        kind_of,
        comm,
        mean_comm,
    }
}

/// 3 workers in one class; set 0 = all, set 1 = only worker 2.
fn plan(task_set: Vec<u16>, task_band: Vec<u8>, bands: u8) -> Plan {
    let victims = vec![
        vec![WorkerId(1), WorkerId(2)],
        vec![WorkerId(0), WorkerId(2)],
        vec![WorkerId(1), WorkerId(0)],
    ];
    Plan::new(
        task_set,
        task_band,
        bands,
        vec![mask(3, &[0, 1, 2]), mask(3, &[2])],
        victims,
    )
}

#[test]
fn eager_takes_higher_bands_first_and_respects_sets() {
    let p = plan(vec![0, 0, 1, 0], vec![1, 0, 0, 1], 2);
    let mut q = SimQueues::new(3, 2, 2);
    for t in 0..4 {
        Eager.place(&p, &mut q, t, None);
    }
    // Worker 0 may not run task 2 (restricted to worker 2); band 0 comes first.
    assert_eq!(Eager.next(&p, &mut q, WorkerId(0)).unwrap().task, 1);
    assert_eq!(Eager.next(&p, &mut q, WorkerId(0)).unwrap().task, 0);
    assert_eq!(Eager.next(&p, &mut q, WorkerId(0)).unwrap().task, 3);
    assert_eq!(Eager.next(&p, &mut q, WorkerId(0)), None);
    assert_eq!(Eager.next(&p, &mut q, WorkerId(2)).unwrap().task, 2);
    assert!(q.is_empty());
}

#[test]
fn ws_keeps_released_tasks_local_and_steals_oldest() {
    let p = plan(vec![0; 4], vec![0; 4], 1);
    let mut q = SimQueues::new(3, 2, 1);
    for t in 0..4 {
        WorkStealing.place(&p, &mut q, t, Some(WorkerId(0)));
    }
    assert_eq!(q.local(WorkerId(0)).len(), 4);
    // Owner pops newest; thief takes oldest.
    assert_eq!(
        WorkStealing.next(&p, &mut q, WorkerId(0)).unwrap(),
        Pick {
            task: 3,
            stolen_from: None
        }
    );
    assert_eq!(
        WorkStealing.next(&p, &mut q, WorkerId(1)).unwrap(),
        Pick {
            task: 0,
            stolen_from: Some(WorkerId(0))
        }
    );
}

#[test]
fn ws_thief_never_runs_what_it_may_not_and_requeues_it() {
    // Task 0 is restricted to worker 2 but sits in worker 0's deque (worker 0 released it
    // while eligible in an earlier plan is impossible; simulate by pushing directly).
    let p = plan(vec![1, 0], vec![0, 0], 1);
    let mut q = SimQueues::new(3, 2, 1);
    q.push_local(WorkerId(0), 0);
    q.push_local(WorkerId(0), 1);
    let pick = WorkStealing.next(&p, &mut q, WorkerId(1)).unwrap();
    assert_eq!(
        pick,
        Pick {
            task: 1,
            stolen_from: Some(WorkerId(0))
        }
    );
    // Task 0 went to worker 2's mailbox, and only worker 2 gets it.
    assert_eq!(WorkStealing.next(&p, &mut q, WorkerId(0)), None);
    assert_eq!(WorkStealing.next(&p, &mut q, WorkerId(2)).unwrap().task, 0);
}

#[test]
fn ws_batches_from_shared_queue_into_the_deque() {
    let p = plan(vec![0; 10], vec![0; 10], 1);
    let mut q = SimQueues::new(3, 2, 1);
    for t in 0..10 {
        WorkStealing.place(&p, &mut q, t, None);
    }
    assert_eq!(WorkStealing.next(&p, &mut q, WorkerId(0)).unwrap().task, 0);
    assert!(!q.local(WorkerId(0)).is_empty());
    // FIFO order is kept for the batch: the next pop is task 1.
    assert_eq!(WorkStealing.next(&p, &mut q, WorkerId(0)).unwrap().task, 1);
    let mut seen: Vec<u32> = vec![0, 1];
    for w in [1u32, 2, 0, 1, 2, 0, 1, 2, 0, 1] {
        if let Some(pk) = WorkStealing.next(&p, &mut q, WorkerId(w)) {
            seen.push(pk.task);
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
}

#[test]
fn policy_names_parse() {
    for k in PolicyKind::ALL {
        assert_eq!(PolicyKind::parse(k.name()), Some(k));
    }
    assert!("heft?".parse::<PolicyKind>().unwrap_err().contains("eager, ws"));
}

/// A fan-out: task 0 before tasks `1..n`.
fn fan_out(n: u32) -> crate::sched::compile::Successors {
    let mut off = vec![n - 1; n as usize + 1];
    off[0] = 0;
    crate::sched::compile::Successors {
        off,
        succ: (1..n).collect(),
        indegree: (0..n).map(|t| u32::from(t > 0)).collect(),
    }
}

/// Rank comparisons of one HEFT plan of a fan-out of `n` tasks (`ranks` of the successors
/// cycle through `distinct` values, so that ties and order both occur).
fn heft_comparisons(n: u32, distinct: u32) -> u64 {
    let p = plan(vec![0; n as usize], vec![0; n as usize], 1);
    let edges = fan_out(n);
    let rank: Vec<f64> = (0..n)
        .map(|t| if t == 0 { 1e9 } else { (t % distinct) as f64 })
        .collect();
    heft::COMPARISONS.with(|c| c.set(0));
    let h = Heft::plan(&p, &edges, &rank, |_, _| Some(1.0), |_, _, _, _| 0.0);
    assert!(h.assigned(n - 1).is_some());
    heft::COMPARISONS.with(|c| c.get())
}

/// HEFT used to scan the whole ready list per decision (quadratic: a fan-out of 200k tasks
/// planned in 21 s). Per task, the heap costs a few comparisons per level of its depth.
#[test]
fn heft_plan_compares_log_n_times_per_task() {
    for n in [1_000u32, 30_000] {
        for distinct in [1, 7, n] {
            let per_task = heft_comparisons(n, distinct) as f64 / n as f64;
            let bound = 3.0 * (n as f64).log2();
            assert!(
                per_task <= bound,
                "n = {n}: {per_task:.1} comparisons per task, over {bound:.1}"
            );
        }
    }
}

/// HEFT's order among equal ranks is by task id, lowest first, as the former scan of the
/// ready list picked: on one worker, `cost` is asked once per task, in planning order.
#[test]
fn heft_plan_breaks_rank_ties_by_task_id() {
    let n = 50u32;
    let one = Plan::new(
        vec![0; n as usize],
        vec![0; n as usize],
        1,
        vec![mask(1, &[0])],
        vec![vec![]],
    );
    let edges = fan_out(n);
    let rank: Vec<f64> = (0..n).map(|t| if t == 0 { 9.0 } else { (t % 3) as f64 }).collect();
    let mut order: Vec<u32> = (1..n).collect();
    order.sort_by(|&a, &b| rank[b as usize].total_cmp(&rank[a as usize]).then(a.cmp(&b)));
    let asked = std::cell::RefCell::new(Vec::new());
    let h = Heft::plan(
        &one,
        &edges,
        &rank,
        |t, _| {
            asked.borrow_mut().push(t);
            Some(1.0)
        },
        |_, _, _, _| 0.0,
    );
    assert!(h.assigned(0).is_some());
    let seen = asked.into_inner();
    assert_eq!(seen[0], 0);
    assert_eq!(seen[1..], order[..]);
}

/// [`SimQueues`] that count the operations a policy makes and may report a cost for every
/// task (so that `locality` plans).
struct Counting {
    q: SimQueues,
    ops: u64,
    cost: Option<f64>,
}

impl ReadyQueues for Counting {
    fn push_local(&mut self, w: WorkerId, t: u32) {
        self.ops += 1;
        self.q.push_local(w, t)
    }
    fn push_mailbox(&mut self, w: WorkerId, b: u8, t: u32) {
        self.ops += 1;
        self.q.push_mailbox(w, b, t)
    }
    fn push_shared(&mut self, s: u16, b: u8, t: u32) {
        self.ops += 1;
        self.q.push_shared(s, b, t)
    }
    fn pop_local(&mut self, w: WorkerId) -> Option<u32> {
        self.ops += 1;
        self.q.pop_local(w)
    }
    fn pop_mailbox(&mut self, w: WorkerId, b: u8) -> Option<u32> {
        self.ops += 1;
        self.q.pop_mailbox(w, b)
    }
    fn pop_shared(&mut self, w: WorkerId, s: u16, b: u8, batch: bool) -> Option<u32> {
        self.ops += 1;
        self.q.pop_shared(w, s, b, batch)
    }
    fn steal(&mut self, thief: WorkerId, victim: WorkerId) -> Option<u32> {
        self.ops += 1;
        self.q.steal(thief, victim)
    }
    fn push_planned(&mut self, w: WorkerId, position: u32, t: u32) {
        self.ops += 1;
        self.q.push_planned(w, position, t)
    }
    fn pop_planned(&mut self, w: WorkerId, upto: u32) -> Option<u32> {
        self.ops += 1;
        self.q.pop_planned(w, upto)
    }
    fn compute_time(&self, _: u32, _: WorkerId) -> Option<f64> {
        self.cost
    }
}

/// The most queue operations one `place` or `next` made, over `n` tasks placed (by worker 0
/// for even tasks, as roots for odd ones) and then taken by the workers in turn.
fn max_ops_per_decision<P: Policy>(policy: &P, n: u32, cost: Option<f64>) -> u64 {
    // Two bands, a tenth of the tasks restricted to worker 2.
    let p = plan(
        (0..n).map(|t| u16::from(t % 10 == 0)).collect(),
        (0..n).map(|t| (t % 2) as u8).collect(),
        2,
    );
    let mut q = Counting {
        q: SimQueues::new(3, 2, 2),
        ops: 0,
        cost,
    };
    let mut most = 0;
    let mut measure = |q: &mut Counting, f: &mut dyn FnMut(&mut Counting)| {
        let before = q.ops;
        f(q);
        most = most.max(q.ops - before);
    };
    for t in 0..n {
        let releasing = (t % 2 == 0).then_some(WorkerId(0));
        measure(&mut q, &mut |q| policy.place(&p, q, t, releasing));
    }
    let mut taken = 0;
    let mut idle = 0;
    while idle < 3 {
        let w = WorkerId(taken % 3);
        let mut got = false;
        measure(&mut q, &mut |q| got = policy.next(&p, q, w).is_some());
        taken += 1;
        idle = if got { 0 } else { idle + 1 };
    }
    assert!(q.q.is_empty(), "{}: tasks left", policy.name());
    most
}

/// No policy looks through the ready tasks to decide: the queue operations of one decision
/// do not grow with the number of tasks queued (a policy that scanned would make O(n)).
#[test]
fn policies_decide_in_queue_work_independent_of_tasks() {
    fn check<P: Policy>(policy: &P, cost: Option<f64>) {
        let small = max_ops_per_decision(policy, 1_000, cost);
        let large = max_ops_per_decision(policy, 50_000, cost);
        assert!(
            large <= 64,
            "{}: {large} queue operations in one decision",
            policy.name()
        );
        assert!(
            large <= small + 4,
            "{}: {small} at 1k tasks, {large} at 50k",
            policy.name()
        );
    }
    check(&Eager, None);
    check(&WorkStealing, None);
    check(&Locality::new(3), None);
    check(&Locality::new(3), Some(1e-3));
    check(&Heft::uncalibrated(), None);
    check(&RandomPolicy::new(7), None);
}

/// Insertion: a short task planned last goes into a gap of a worker's timeline before a task
/// planned earlier, and the worker then runs its tasks in that planned order, waiting for the
/// task planned first rather than running the later one.
#[test]
fn heft_inserts_into_gaps_and_a_worker_follows_its_planned_order() {
    // 0 (only on worker 2, 1 s) → 1 (10 s); 2 is a short root (0.5 s) planned last, by rank.
    // Worker 0 gets 1 at [1, 11], leaving [0, 1] free: 2 goes there.
    let edges = crate::sched::compile::Successors {
        off: vec![0, 1, 1, 1],
        succ: vec![1],
        indegree: vec![0, 1, 0],
    };
    let p = plan(vec![1, 0, 0], vec![0; 3], 1);
    let cost = |t: u32| [1.0, 10.0, 0.5][t as usize];
    let rank = super::heft::upward_ranks(&edges, cost, |_, _| 0.0);
    let h = Heft::plan(&p, &edges, &rank, |t, _| Some(cost(t)), |_, _, _, _| 0.0);
    assert_eq!(h.assigned(1), Some(WorkerId(0)));
    assert_eq!(h.planned_start(1), Some(1.0));
    assert_eq!(h.assigned(2), Some(WorkerId(0)));
    assert_eq!(h.planned_start(2), Some(0.0), "inserted into the gap before task 1");
    // At run time task 1 is ready first; worker 0 waits for 2, planned before it.
    let mut q = SimQueues::new(3, 2, 1);
    h.place(&p, &mut q, 1, None);
    assert_eq!(
        h.next(&p, &mut q, WorkerId(0)),
        None,
        "task 2 is planned first: wait for it"
    );
    h.place(&p, &mut q, 2, None);
    let order: Vec<u32> = std::iter::from_fn(|| h.next(&p, &mut q, WorkerId(0)).map(|pk| pk.task)).collect();
    assert_eq!(order, vec![2, 1]);
    // Held roots are released in planned-start order (both start at 0: by worker).
    let mut held = vec![0, 2];
    h.order_held_roots(&mut held);
    assert_eq!(held, vec![2, 0]);
}

/// The look-ahead's plan is never longer than the textbook's (it is one of those it
/// compares) and replaces it only when shorter by more than the margin.
#[test]
fn the_shortest_of_several_plans_is_never_longer_than_the_textbook_one() {
    // A random DAG over 3 workers of two kinds: 0 and 1 CPUs, 2 a GPU.
    let n = 200usize;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut succ: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (t, out) in succ.iter_mut().enumerate() {
        for _ in 0..2 {
            let span = (n - t - 1) as u64;
            if span > 0 {
                let s = t + 1 + (next() % span.min(20)) as usize;
                if !out.contains(&(s as u32)) {
                    out.push(s as u32);
                }
            }
        }
    }
    let mut off = vec![0u32];
    let mut flat = Vec::new();
    let mut indegree = vec![0u32; n];
    for s in &succ {
        let mut s = s.clone();
        s.sort_unstable();
        for &x in &s {
            indegree[x as usize] += 1;
        }
        flat.extend(s);
        off.push(flat.len() as u32);
    }
    let edges = crate::sched::compile::Successors {
        off,
        succ: flat,
        indegree,
    };
    let p = plan(vec![0; n], vec![0; n], 1);
    let kinds = [DeviceKind::Cpu, DeviceKind::Cpu, DeviceKind::Gpu];
    let costs: Vec<TaskCost> = (0..n)
        .map(|_| {
            let cpu = 1.0 + (next() % 100) as f64 / 10.0;
            [Some(cpu), Some(cpu / (1.0 + (next() % 30) as f64))]
        })
        .collect();
    let inputs = planning(&p, &edges, &costs, &kinds, &|_, _, _, _| 0.0, &|_, _| 0.0);
    let textbook = heft_plan(&inputs);
    let best = best_heft_plan(&inputs);
    let (t, b) = (textbook.planned_makespan().unwrap(), best.planned_makespan().unwrap());
    assert!(b <= t, "{b} > {t}");
    assert!(b == t || b < t * (1.0 - crate::sched::costs::PLAN_MARGIN), "{b} vs {t}");
}

/// With free copies, the look-ahead's search over device classes shortens HEFT's plan where
/// one fast GPU takes nearly everything (a tiled Cholesky of 10×10 tiles on 32 slow cores and one GPU, with
/// the per-kernel means McSweeney measured on Skylake and a V100 for tiles of 1024), and
/// only the critical chain's tasks change class. With copies that cost time, it does not run.
#[test]
fn the_search_over_classes_shortens_a_plan_that_saturates_the_gpu() {
    use crate::graph::formats::{cholesky, BuildOptions};
    let spec = cholesky::generate(10, 4);
    let graph = spec
        .build_virtual(&|_| crate::kernels::builtin::noop(), &BuildOptions::default())
        .unwrap();
    let edges = crate::sched::compile::Successors::of(&graph);
    let n = graph.len();
    // [cpu, gpu] ms per kernel.
    let costs: Vec<TaskCost> = (0..n)
        .map(|t| match spec.tasks[t].kernel.as_str() {
            "potrf" => [Some(16.2), Some(1.18)],
            "trsm" => [Some(22.2), Some(0.92)],
            "syrk" => [Some(23.4), Some(0.42)],
            _ => [Some(41.4), Some(0.45)],
        })
        .collect();
    let workers = 33usize;
    let mut kinds = vec![DeviceKind::Cpu; workers - 1];
    kinds.push(DeviceKind::Gpu);
    let all: Vec<u32> = (0..workers as u32).collect();
    let victims = (0..workers).map(|_| Vec::new()).collect();
    let p = Plan::new(vec![0; n], vec![0; n], 1, vec![mask(workers, &all)], victims);
    let free = planning(&p, &edges, &costs, &kinds, &|_, _, _, _| 0.0, &|_, _| 0.0);
    let textbook = heft_plan(&free);
    let searched = best_heft_plan(&free);
    let (t, s) = (
        textbook.planned_makespan().unwrap(),
        searched.planned_makespan().unwrap(),
    );
    assert!(
        s < t * (1.0 - crate::sched::costs::PLAN_MARGIN),
        "searched {s} vs textbook {t}"
    );
    // The same search with copies that cost anything leaves the plans as they were.
    let costly = |_, _, from: WorkerId, to: WorkerId| if from == to { 0.0 } else { 0.01 };
    let inputs = planning(&p, &edges, &costs, &kinds, &costly, &|_, _| 0.01);
    let with_copies = best_heft_plan(&inputs);
    let (unsearched, ..) = crate::sched::costs::shortest_ranked_plan(&inputs);
    assert_eq!(with_copies.planned_makespan(), unsearched.planned_makespan());
}

/// A plan is trusted when its busiest GPU link is busy for at most `TRUSTED_LINK_SHARE` of its
/// makespan: a CPU task feeding a GPU task over a link that costs 1 s (of a 3 s plan) is;
/// over one that costs 4 s (of 6 s), it is not; with free copies its times are exact.
#[test]
fn a_plan_is_trusted_while_its_links_are_lightly_used() {
    use crate::sched::costs::{plan_trust, PlanTrust, TRUSTED_LINK_SHARE};
    let edges = crate::sched::compile::Successors {
        off: vec![0, 1, 1],
        succ: vec![1],
        indegree: vec![0, 1],
    };
    // Task 0 may run anywhere but is 100 times faster on CPUs; task 1 runs on the GPU only.
    let p = plan(vec![0, 1], vec![0; 2], 1);
    let kinds = [DeviceKind::Cpu, DeviceKind::Cpu, DeviceKind::Gpu];
    let costs: Vec<TaskCost> = vec![[Some(1.0), Some(100.0)], [Some(100.0), Some(1.0)]];
    let with_copy = |copy: f64| {
        let comm = move |_, _, from: WorkerId, to: WorkerId| {
            if kinds[from.index()] == kinds[to.index()] {
                0.0
            } else {
                copy
            }
        };
        let mean = move |_, _| copy;
        let inputs = planning(&p, &edges, &costs, &kinds, &comm, &mean);
        let h = heft_plan(&inputs);
        assert_eq!(h.planned_makespan(), Some(2.0 + copy));
        plan_trust(&h, &inputs, copy == 0.0)
    };
    const { assert!(1.0 / 3.0 <= TRUSTED_LINK_SHARE && TRUSTED_LINK_SHARE < 4.0 / 6.0) };
    assert_eq!(with_copy(1.0), PlanTrust::Trusted);
    assert_eq!(with_copy(4.0), PlanTrust::Guide);
    assert_eq!(with_copy(0.0), PlanTrust::Exact);
}
