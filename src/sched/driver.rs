//! The driver contract: what the runtime and the simulator share when they drive a policy.
//! [`build_policy`] is the one place a policy is made from its kind and what the driver
//! knows of the machine and the graph; both drivers then hand [`AnyPolicy`] to the same
//! loop shape (place the roots, `next` for an idle worker, [`Policy::pick_immediate`] then
//! `place` for what a completion made ready).

use super::compile::Successors;
use super::{
    allowed_costs, best_heft_plan, heft_plan, plan_trust, Eager, Heft, HeteroPrio, Locality, Pick, Plan, Planning,
    Policy, PolicyKind, RandomPolicy, ReadyQueues,
};
use super::{TaskCost, WorkStealing};
use crate::topology::{DeviceKind, Machine, WorkerId};

/// The seed of `random`'s draws: fixed, so that a run and its simulation draw alike.
pub const RANDOM_SEED: u64 = 0x5eed;

/// What a driver knows when it builds a policy.
pub struct PolicyInputs<'a> {
    pub machine: &'a Machine,
    pub plan: &'a Plan,
    pub edges: &'a Successors,
    /// Expected `[cpu, gpu]` seconds per task (empty for the policies that plan nothing).
    pub costs: &'a [TaskCost],
    /// HEFT's copy time of the data task `.0` hands task `.1` between two workers.
    pub comm: &'a dyn Fn(u32, u32, WorkerId, WorkerId) -> f64,
    /// The same, averaged over pairs of workers (HEFT's ranks).
    pub mean_comm: &'a dyn Fn(u32, u32) -> f64,
    /// Whether the host's memory is limited (what does not fit spills to disk).
    pub host_memory_limited: bool,
    /// Whether every copy between memories costs nothing: a simulated machine with free
    /// links, whose runs cost what a plan says. Never in the runtime, where copies take time.
    pub links_free: bool,
}

impl<'a> PolicyInputs<'a> {
    /// What HEFT plans from, with these costs (`kinds`: each worker's kind).
    fn planning<'b>(&'b self, costs: &'b [TaskCost], kinds: &'b [DeviceKind]) -> Planning<'b> {
        Planning {
            plan: self.plan,
            edges: self.edges,
            costs,
            kind_of: kinds,
            comm: self.comm,
            mean_comm: self.mean_comm,
        }
    }
}

/// Any policy hexec ships, behind one type: one `match` per call instead of one copy of
/// each driver per policy.
pub enum AnyPolicy {
    Eager(Eager),
    Ws(WorkStealing),
    Locality(Locality),
    Heft(Heft),
    HeteroPrio(HeteroPrio),
    Random(RandomPolicy),
}

/// Builds the policy `kind` for a run (the runtime) or a simulation.
///
/// On a machine with CPUs and GPUs and with costs for every task, and unless the host's
/// memory is limited, `locality` gets a look-ahead from the shortest of HEFT's plans of the whole graph
/// ([`super::best_heft_plan`], [`Locality::with_look_ahead`]); costs count only where the
/// task may run at all.
pub fn build_policy(kind: PolicyKind, i: &PolicyInputs<'_>) -> AnyPolicy {
    let kinds: Vec<DeviceKind> = i.machine.workers.iter().map(|w| w.kind).collect();
    match kind {
        PolicyKind::Eager => AnyPolicy::Eager(Eager),
        PolicyKind::Ws => AnyPolicy::Ws(WorkStealing),
        PolicyKind::Random => AnyPolicy::Random(RandomPolicy::new(RANDOM_SEED)),
        PolicyKind::Locality => {
            let mut policy = Locality::new(i.machine.num_workers());
            let mixed = kinds.contains(&DeviceKind::Cpu) && kinds.contains(&DeviceKind::Gpu);
            // Under a host memory limit, memory first: a worker keeps what it releases (depth
            // first, so consumers free their inputs before more are produced) and no plan is
            // followed, since a plan that ignores memory produces ahead of its consumers and
            // the host spills. Sirocco, 20×20 Cholesky, host limited to 194 MiB: 0.63 s so,
            // 1.76 s with a look-ahead and placing what a worker releases.
            let memory_first = i.host_memory_limited;
            if mixed && !memory_first {
                policy = policy.on_mixed_machine();
            }
            if mixed && !memory_first && !i.costs.is_empty() {
                let allowed = allowed_costs(i.plan, &kinds, i.costs);
                let planning = i.planning(&allowed, &kinds);
                let heft = best_heft_plan(&planning);
                let trust = plan_trust(&heft, &planning, i.links_free);
                policy = policy.with_look_ahead(heft, kinds, trust);
            }
            AnyPolicy::Locality(policy)
        }
        PolicyKind::HeteroPrio => {
            AnyPolicy::HeteroPrio(HeteroPrio::new(&allowed_costs(i.plan, &kinds, i.costs), &kinds))
        }
        PolicyKind::Heft => AnyPolicy::Heft(heft_plan(&i.planning(i.costs, &kinds))),
    }
}

macro_rules! each {
    ($self:expr, $p:ident => $e:expr) => {
        match $self {
            AnyPolicy::Eager($p) => $e,
            AnyPolicy::Ws($p) => $e,
            AnyPolicy::Locality($p) => $e,
            AnyPolicy::Heft($p) => $e,
            AnyPolicy::HeteroPrio($p) => $e,
            AnyPolicy::Random($p) => $e,
        }
    };
}

impl Policy for AnyPolicy {
    fn name(&self) -> &'static str {
        each!(self, p => p.name())
    }

    fn place<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, task: u32, releasing: Option<WorkerId>) {
        each!(self, p => p.place(plan, q, task, releasing))
    }

    fn next<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, worker: WorkerId) -> Option<Pick> {
        each!(self, p => p.next(plan, q, worker))
    }

    fn immediate_successor(&self) -> bool {
        each!(self, p => p.immediate_successor())
    }

    fn follows_fused_chains(&self) -> bool {
        each!(self, p => p.follows_fused_chains())
    }

    fn order_held_roots(&self, held: &mut [u32]) {
        each!(self, p => p.order_held_roots(held))
    }

    fn expected_worker(&self, task: u32) -> Option<WorkerId> {
        each!(self, p => p.expected_worker(task))
    }

    fn copies_ahead(&self) -> bool {
        each!(self, p => p.copies_ahead())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::{EligibleSet, WorkerMask};
    use crate::topology::GpuDesc;

    /// Two CPUs and a GPU; every task may run anywhere.
    fn machine_and_plan(tasks: usize) -> (Machine, Plan) {
        let mut m = Machine::synthetic_cpus(2);
        m.add_gpus(vec![GpuDesc::modelled("model", 0)]);
        let mut mask = WorkerMask::empty(3);
        let workers: Vec<WorkerId> = (0..3).map(WorkerId).collect();
        workers.iter().for_each(|&w| mask.insert(w));
        let set = EligibleSet { mask, workers };
        let plan = Plan::new(vec![0; tasks], vec![1; tasks], 2, vec![set], vec![Vec::new(); 3]);
        (m, plan)
    }

    /// Independent tasks with GPU advantages from 1 to 16 (the work, not the critical path,
    /// bounds the schedule): `locality` keeps on CPUs the tasks HEFT's plan gives them, which
    /// are those the GPU gains least on, in every driver (both build the policy here).
    #[test]
    fn locality_keeps_on_cpus_what_the_look_ahead_runs_there() {
        let n = 40;
        let (m, plan) = machine_and_plan(n);
        let edges = Successors {
            off: vec![0; n + 1],
            succ: Vec::new(),
            indegree: vec![0; n],
        };
        let advantage = |t: usize| (1 + t % 16) as f64;
        let costs: Vec<TaskCost> = (0..n).map(|t| [Some(1.0), Some(1.0 / advantage(t))]).collect();
        let inputs = PolicyInputs {
            machine: &m,
            plan: &plan,
            edges: &edges,
            costs: &costs,
            comm: &|_, _, _, _| 0.0,
            mean_comm: &|_, _| 0.0,
            host_memory_limited: false,
            links_free: false,
        };
        let AnyPolicy::Locality(l) = build_policy(PolicyKind::Locality, &inputs) else {
            panic!("not locality");
        };
        assert!(l.has_look_ahead());
        let on_cpus = l.kept_on_cpus();
        assert!(!on_cpus.is_empty(), "the CPUs are used");
        let mean = |ts: &mut dyn Iterator<Item = usize>| {
            let v: Vec<f64> = ts.map(advantage).collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        let cpu_mean = mean(&mut on_cpus.iter().map(|&t| t as usize));
        let gpu_mean = mean(&mut (0..n).filter(|t| !on_cpus.contains(&(*t as u32))));
        assert!(
            cpu_mean < gpu_mean,
            "CPUs get the tasks the GPU gains least on: {cpu_mean} vs {gpu_mean}"
        );
        // Copies are free, so the plan's times hold: locality follows it, and copies go
        // ahead to each task's planned worker.
        for t in 0..n as u32 {
            let w = l.expected_worker(t).expect("a followed plan names each task's worker");
            assert_eq!(m.workers[w.index()].kind == DeviceKind::Cpu, on_cpus.contains(&t));
        }
        // A chain whose tasks all run faster on the GPU: the critical path stays there.
        let faster_on_gpu: Vec<TaskCost> = (0..n).map(|t| [Some(1.0), Some(0.5 / advantage(t))]).collect();
        let chain = Successors {
            off: (0..=n as u32).map(|i| i.min(n as u32 - 1)).collect(),
            succ: (1..n as u32).collect(),
            indegree: (0..n).map(|t| u32::from(t > 0)).collect(),
        };
        let inputs = PolicyInputs {
            edges: &chain,
            costs: &faster_on_gpu,
            ..inputs
        };
        let AnyPolicy::Locality(l) = build_policy(PolicyKind::Locality, &inputs) else {
            panic!("not locality");
        };
        assert_eq!(l.kept_on_cpus(), Vec::<u32>::new());
        // Under a host memory limit, no look-ahead either: memory first.
        let limited = PolicyInputs {
            host_memory_limited: true,
            costs: &costs,
            edges: &edges,
            ..inputs
        };
        let AnyPolicy::Locality(l) = build_policy(PolicyKind::Locality, &limited) else {
            panic!("not locality");
        };
        assert!(!l.has_look_ahead());
        // Without costs, no look-ahead: the queues follow priorities.
        let inputs = PolicyInputs { costs: &[], ..inputs };
        let AnyPolicy::Locality(l) = build_policy(PolicyKind::Locality, &inputs) else {
            panic!("not locality");
        };
        assert!(!l.has_look_ahead());
    }
}
