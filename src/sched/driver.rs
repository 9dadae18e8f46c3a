//! The driver contract: what the runtime and the simulator share when they drive a policy.
//! [`build_policy`] is the one place a policy is made from its kind and what the driver
//! knows of the machine and the graph; both drivers then hand [`AnyPolicy`] to the same
//! loop shape (place the roots, `next` for an idle worker, [`Policy::pick_immediate`] then
//! `place` for what a completion made ready).

use super::bound::{gpu_advantage_threshold, lower_bound};
use super::compile::Successors;
use super::{
    allowed_costs, heft_plan, Eager, Heft, Locality, Pick, Plan, Policy, PolicyKind, RandomPolicy, ReadyQueues,
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
}

/// Any policy hexec ships, behind one type: one `match` per call instead of one copy of
/// each driver per policy.
pub enum AnyPolicy {
    Eager(Eager),
    Ws(WorkStealing),
    Locality(Locality),
    Heft(Heft),
    Random(RandomPolicy),
}

/// Builds the policy `kind` for a run (the runtime) or a simulation.
///
/// `locality` gets the area-optimal device split ([`Locality::with_split`]) when the work,
/// not the critical path, bounds the schedule (otherwise the split would slow the critical
/// path down); costs count only where the task may run at all.
pub fn build_policy(kind: PolicyKind, i: &PolicyInputs<'_>) -> AnyPolicy {
    let kinds: Vec<DeviceKind> = i.machine.workers.iter().map(|w| w.kind).collect();
    match kind {
        PolicyKind::Eager => AnyPolicy::Eager(Eager),
        PolicyKind::Ws => AnyPolicy::Ws(WorkStealing),
        PolicyKind::Random => AnyPolicy::Random(RandomPolicy::new(RANDOM_SEED)),
        PolicyKind::Locality => {
            let (cpus, gpus) = (i.machine.count(DeviceKind::Cpu), i.machine.count(DeviceKind::Gpu));
            let mut policy = Locality::new(i.machine.num_workers());
            if gpus > 0 && !i.costs.is_empty() {
                let allowed = allowed_costs(i.plan, &kinds, i.costs);
                let bound = lower_bound(i.edges, &allowed, cpus, gpus);
                if bound.area_s > 2.0 * bound.critical_path_s {
                    let threshold = gpu_advantage_threshold(&allowed, cpus, gpus, bound.bound_s);
                    policy = policy.with_split(threshold, kinds);
                }
            }
            AnyPolicy::Locality(policy)
        }
        PolicyKind::Heft => AnyPolicy::Heft(heft_plan(i.plan, i.edges, i.costs, &kinds, i.comm, i.mean_comm)),
    }
}

macro_rules! each {
    ($self:expr, $p:ident => $e:expr) => {
        match $self {
            AnyPolicy::Eager($p) => $e,
            AnyPolicy::Ws($p) => $e,
            AnyPolicy::Locality($p) => $e,
            AnyPolicy::Heft($p) => $e,
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

    /// Independent tasks (the work, not the critical path, bounds the schedule) with GPU
    /// advantages from 1 to 16: `locality` gets the device split in every driver, the
    /// runtime included (it used to get none; the simulator always did).
    #[test]
    fn locality_gets_the_device_split_when_the_work_bounds_the_schedule() {
        let n = 40;
        let (m, plan) = machine_and_plan(n);
        let edges = Successors {
            off: vec![0; n + 1],
            succ: Vec::new(),
            indegree: vec![0; n],
        };
        let costs: Vec<TaskCost> = (0..n).map(|t| [Some(1.0), Some(1.0 / (1 + t % 16) as f64)]).collect();
        let inputs = PolicyInputs {
            machine: &m,
            plan: &plan,
            edges: &edges,
            costs: &costs,
            comm: &|_, _, _, _| 0.0,
            mean_comm: &|_, _| 0.0,
        };
        let AnyPolicy::Locality(l) = build_policy(PolicyKind::Locality, &inputs) else {
            panic!("not locality");
        };
        assert!(
            l.split_threshold().is_some_and(|t| t > 1.0),
            "{:?}",
            l.split_threshold()
        );
        // A chain is bounded by its critical path: no split.
        let chain = Successors {
            off: (0..=n as u32).map(|i| i.min(n as u32 - 1)).collect(),
            succ: (1..n as u32).collect(),
            indegree: (0..n).map(|t| u32::from(t > 0)).collect(),
        };
        let inputs = PolicyInputs {
            edges: &chain,
            ..inputs
        };
        let AnyPolicy::Locality(l) = build_policy(PolicyKind::Locality, &inputs) else {
            panic!("not locality");
        };
        assert_eq!(l.split_threshold(), None);
    }
}
