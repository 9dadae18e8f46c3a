//! `locality`: earliest expected finish, paying for data movement.
//!
//! A ready task goes to the eligible worker with the earliest expected finish: when that
//! worker could start it (after its running task and the planned work queued in the same or
//! higher priority bands), or when its inputs can be there if later (copies start at
//! placement), plus the expected compute time. Ties go to the worker holding the most input
//! bytes. An idle worker steals from workers of its own class only when it would finish the
//! stolen task sooner, transfer included, than its owner could.
//!
//! A worker runs the tasks placed on it in exact priority order: by band from its lock-free
//! mailbox when each band holds one priority, else from its planned queue, keyed by
//! [`Plan::priority_key`] or the look-ahead's order (bands then only estimate start times).
//! On a machine of one class it first runs what it released itself and kept (its deque,
//! newest first: depth first, so that consumers free their inputs early).
//!
//! On a machine with CPUs and GPUs, with costs for every task and no host memory limit (under
//! one, memory comes first: depth first, no plan; see `build_policy`), a look-ahead sets what a
//! greedy rule cannot see ([`Locality::with_look_ahead`]), from HEFT's plan of the whole
//! graph (insertion-based; the shortest over five rank weights, improved by a search over
//! device classes when copies are free: `best_heft_plan`):
//! - the device class: a task the plan runs on a CPU is kept on CPUs. An earliest-finish
//!   rule alone sees only the ready tasks: while the GPU's queue is short it keeps
//!   everything there, and the CPUs idle while the GPUs work through what follows. The other
//!   tasks are placed among all eligible workers, so the critical path keeps the fastest
//!   device, and transfers the plan did not foresee (links busy with other copies) are
//!   still weighed;
//! - the order: a worker runs its tasks in the order of their planned starts, which weighs
//!   the critical path against what keeps every device fed. (On machines of one class the
//!   planned order measured 1% worse than priorities on the STG and WfCommons rows, and a
//!   plan that keeps nothing on CPUs adds nothing to them: priorities then.)
//!
//! - the workers, when the plan can be trusted (its links lightly used,
//!   [`PlanTrust::Trusted`]): a ready task goes to its planned worker while that worker can
//!   finish it by its planned finish stretched by [`FOLLOW_SLACK`], and a finished task's
//!   outputs are copied ahead to the GPU a consumer is planned on. A plan assumes each copy
//!   has its link to itself; where links are busy its times do not hold, and following it
//!   made runs up to 1.8 times longer.
//!
//! Otherwise the plan is a guide, not a schedule: placement is decided when a task is ready,
//! from what the workers and links are doing then. Idle workers steal either way.
//!
//! When the machine's links cost nothing ([`PlanTrust::Exact`]: a simulated machine with free
//! links, where the run's costs are the plan's; never the runtime), nothing the plan leaves
//! out can make a task late, and the plan is run as planned: each worker takes its tasks in
//! planned order, as `heft` runs its own (no fused chains either: a link handed to the
//! worker that finished its predecessor would leave its planned worker waiting for it).
//! Placing by earliest finish there drifted from the plan and lost to it: sirocco, 20×20
//! Cholesky, 336.5 ms against the plan's 322.6.
//!
//! Until the costs know a task's time on every eligible worker, the task is placed as `eager`
//! places it (a shared queue), so an uncalibrated run is sensible. (The runtime's costs are
//! the performance model's and, on machines with GPUs, what the run has measured of the same
//! kernel and size so far: `runtime::costs::LearnedCosts`.)

use std::sync::atomic::{AtomicU64, Ordering};

use super::{place_unpreferred, take_queued, Pick, Plan, PlanTrust, Policy, ReadyQueues};
use crate::topology::{DeviceKind, WorkerId};

/// The locality policy. Per worker, it keeps when the running task should end and how much
/// planned work waits in each priority band: a task placed in band `b` starts after the work
/// queued in bands up to `b` (higher bands are served first).
#[derive(Debug)]
pub struct Locality {
    running_end: Vec<AtomicU64>,
    /// `[worker][band]`: expected seconds of work queued there.
    queued: Vec<Vec<AtomicU64>>,
    /// The order and device classes from a whole-graph plan.
    look_ahead: Option<LookAhead>,
    /// Whether a worker runs what it released itself next (its LIFO deque): on machines of
    /// one class (see the module's documentation).
    depth_first: bool,
    /// Whether fused chains are followed: not when a plan is run as planned (kept apart from
    /// the look-ahead so that the check, made once per finished task, is one load).
    fused_chains: bool,
}

/// What a whole-graph plan tells `locality` (see the module's documentation).
#[derive(Debug)]
struct LookAhead {
    /// Per task, its rank by planned start: the key of the planned queues.
    order: Vec<u32>,
    /// Each worker's kind.
    kinds: Vec<DeviceKind>,
    /// How far placement follows the plan (see [`Locality::with_look_ahead`]).
    trust: PlanTrust,
    /// The plan: each task's worker, start and finish.
    heft: super::Heft,
}

impl LookAhead {
    /// Whether the plan runs `task` on a CPU (it is then kept on CPUs).
    #[inline]
    fn on_cpu(&self, task: u32) -> bool {
        self.heft
            .assigned(task)
            .is_some_and(|w| self.kinds[w.index()] == DeviceKind::Cpu)
    }
}

fn load(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Ordering::Relaxed))
}

fn store(a: &AtomicU64, v: f64) {
    a.store(v.to_bits(), Ordering::Relaxed);
}

fn add(a: &AtomicU64, d: f64) {
    let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| {
        Some((f64::from_bits(x) + d).max(0.0).to_bits())
    });
}

impl Locality {
    /// For a machine of `workers` workers.
    pub fn new(workers: usize) -> Self {
        let zero = || AtomicU64::new(0f64.to_bits());
        Locality {
            running_end: (0..workers).map(|_| zero()).collect(),
            queued: (0..workers)
                .map(|_| (0..super::MAX_BANDS).map(|_| zero()).collect())
                .collect(),
            look_ahead: None,
            depth_first: true,
            fused_chains: true,
        }
    }

    /// For a machine of CPUs and GPUs: what a worker releases is placed like any ready task,
    /// never kept for itself. On the Skylake + V100 rows, keeping it put chains of transfers
    /// behind one GPU (up to 1.9 times the makespan of placing it).
    pub fn on_mixed_machine(mut self) -> Self {
        self.depth_first = false;
        self
    }

    /// Adds a look-ahead from a whole-graph plan `heft` (`kinds`: each worker's kind). Only
    /// on a machine of CPUs and GPUs, and only when the plan keeps some task on CPUs.
    ///
    /// With a [`PlanTrust::Trusted`] plan, a ready task goes to its planned worker whenever
    /// that worker can finish it by its planned finish stretched by [`FOLLOW_SLACK`], and a
    /// finished task's outputs are copied ahead to the GPUs its consumers are planned on
    /// ([`Policy::expected_worker`]). A run that falls further behind its plan is placed by
    /// earliest finish again. An [`PlanTrust::Exact`] plan is run as planned, as `heft` runs
    /// its own (its liveness argument holds unchanged).
    pub fn with_look_ahead(mut self, heft: super::Heft, kinds: Vec<DeviceKind>, trust: PlanTrust) -> Self {
        let n = heft.tasks();
        let planned: Option<Vec<(f64, WorkerId)>> = (0..n as u32)
            .map(|t| Some((heft.planned_start(t)?, heft.assigned(t)?)))
            .collect();
        let Some(planned) = planned else {
            return self; // uncalibrated: no plan
        };
        let mut by_start: Vec<u32> = (0..n as u32).collect();
        by_start.sort_by(|&a, &b| planned[a as usize].0.total_cmp(&planned[b as usize].0).then(a.cmp(&b)));
        let mut order = vec![0u32; n];
        for (rank, &t) in by_start.iter().enumerate() {
            order[t as usize] = rank as u32;
        }
        let mixed = kinds.contains(&DeviceKind::Cpu) && kinds.contains(&DeviceKind::Gpu);
        // A plan that keeps nothing on CPUs says nothing a priority order does not (and on
        // the small Skylake + 4 V100 row, priorities did 19% better).
        if mixed && planned.iter().any(|p| kinds[p.1.index()] == DeviceKind::Cpu) {
            // Run as planned, each task is taken from its planned worker's order (see `heft`).
            self.fused_chains = trust != PlanTrust::Exact;
            self.look_ahead = Some(LookAhead {
                order,
                kinds,
                trust,
                heft,
            });
        }
        self
    }

    /// The planned worker of `task` when the look-ahead follows its plan and that worker can
    /// finish it on time ([`FOLLOW_SLACK`]).
    #[inline]
    fn on_plan<Q: ReadyQueues>(&self, plan: &Plan, q: &Q, task: u32, now: f64) -> Option<WorkerId> {
        let o = self.look_ahead.as_ref().filter(|o| o.trust == PlanTrust::Trusted)?;
        let w = o.heft.assigned(task)?;
        if !plan.eligible(task, w) {
            return None;
        }
        let (finish, _) = self.finish_on(plan, q, task, w, now)?;
        (finish <= o.heft.planned_finish(task)? * (1.0 + FOLLOW_SLACK)).then_some(w)
    }

    /// The plan, when it is run as planned ([`PlanTrust::Exact`]).
    #[inline]
    fn run_as_planned(&self) -> Option<&super::Heft> {
        self.look_ahead
            .as_ref()
            .filter(|o| o.trust == PlanTrust::Exact)
            .map(|o| &o.heft)
    }

    /// Whether the tasks placed on a worker wait in its planned queue, in exact order (with a
    /// look-ahead, or when bands fold several priorities), rather than in its mailbox, whose
    /// bands then hold one priority each and are lock-free.
    #[inline]
    fn ordered(&self, plan: &Plan) -> bool {
        self.look_ahead.is_some() || plan.bands_fold()
    }

    /// Queues `task`, placed on `w`, where `w` takes placed tasks from.
    #[inline]
    fn push_placed<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, w: WorkerId, task: u32) {
        if self.ordered(plan) {
            q.push_planned(w, self.key(plan, task), task);
        } else {
            q.push_mailbox(w, plan.band(task), task);
        }
    }

    /// The next task placed on `w`, first in its order.
    #[inline]
    fn pop_placed<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, w: WorkerId) -> Option<u32> {
        if self.ordered(plan) {
            q.pop_planned(w, u32::MAX)
        } else {
            (0..plan.num_bands()).find_map(|b| q.pop_mailbox(w, b))
        }
    }

    /// The key `task` is queued by on a worker: its planned-start rank with a look-ahead, else
    /// its priority.
    #[inline]
    fn key(&self, plan: &Plan, task: u32) -> u32 {
        match &self.look_ahead {
            Some(l) => l.order[task as usize],
            None => plan.priority_key(task),
        }
    }

    /// Whether `w` is left out of `task`'s candidates: the task is kept on CPUs and `w` is
    /// not one. (The plan ran the task on an eligible CPU, so the task always keeps some
    /// candidate.)
    fn left_out(&self, task: u32, w: WorkerId) -> bool {
        let Some(o) = &self.look_ahead else { return false };
        o.kinds[w.index()] != DeviceKind::Cpu && o.on_cpu(task)
    }

    /// The candidate worker where `task` finishes first (ties: the one holding the most input
    /// bytes); `None` when some candidate is not calibrated for it.
    #[inline]
    fn earliest_finish<Q: ReadyQueues>(&self, plan: &Plan, q: &Q, task: u32, now: f64) -> Option<WorkerId> {
        let mut best: Option<(f64, u64, WorkerId)> = None;
        for &w in &plan.set(plan.task_set(task)).workers {
            if self.left_out(task, w) {
                continue;
            }
            // Not calibrated for this worker: the caller shares the task as eager would.
            let (finish, resident) = self.finish_on(plan, q, task, w, now)?;
            let tie = TIE * finish.abs().max(1e-12);
            let better = match best {
                None => true,
                Some((bf, br, _)) => finish < bf - tie || ((finish - bf).abs() <= tie && resident > br),
            };
            if better {
                best = Some((finish, resident, w));
            }
        }
        best.map(|(.., w)| w)
    }

    /// When `w` could start a task of band `band`: after its running task and the work
    /// queued in bands up to `band`.
    fn start_on(&self, w: WorkerId, band: u8, now: f64) -> f64 {
        let ahead: f64 = self.queued[w.index()].iter().take(band as usize + 1).map(load).sum();
        now.max(load(&self.running_end[w.index()])) + ahead
    }

    /// Expected finish of `task` on `w`, with its input copies started now (prefetch), so
    /// that they overlap the work ahead of it.
    fn finish_on<Q: ReadyQueues>(&self, plan: &Plan, q: &Q, task: u32, w: WorkerId, now: f64) -> Option<(f64, u64)> {
        let compute = q.compute_time(task, w)?;
        let (transfer, resident) = q.transfer(task, w);
        Some((
            self.start_on(w, plan.band(task), now).max(now + transfer) + compute,
            resident,
        ))
    }

    /// `worker` starts `task`, which was planned on `owner`.
    fn started<Q: ReadyQueues>(
        &self,
        plan: &Plan,
        q: &Q,
        task: u32,
        worker: WorkerId,
        owner: Option<WorkerId>,
        now: f64,
    ) {
        if let Some(o) = owner {
            if let Some(c) = q.compute_time(task, o) {
                add(&self.queued[o.index()][plan.band(task) as usize], -c);
            }
        }
        store(
            &self.running_end[worker.index()],
            now + q.compute_time(task, worker).unwrap_or(0.0),
        );
    }
}

/// Finishes closer than this (relative) count as a tie.
const TIE: f64 = 1e-9;

/// How far behind its plan (relative to the planned finish) a task's planned worker may be
/// and still get it, when the look-ahead follows its plan. On attila's 10×10 Cholesky, 0.2
/// reproduced `heft`'s makespan (0.527 s) where 0.05 gave 0.555 s and earliest finish alone
/// 0.562 s; over the schedule bench (following every plan, trusted or not), 0.1 and 0.5 left
/// 12 and 11 rows behind `heft` where 0.2 left 9. (Measured once, changing this constant by
/// hand; no bench sweeps it.)
pub const FOLLOW_SLACK: f64 = 0.2;

impl Policy for Locality {
    fn name(&self) -> &'static str {
        "locality"
    }

    fn immediate_successor(&self) -> bool {
        false
    }

    fn expected_worker(&self, task: u32) -> Option<WorkerId> {
        let o = self.look_ahead.as_ref().filter(|o| o.trust != PlanTrust::Guide)?;
        o.heft.assigned(task)
    }

    fn copies_ahead(&self) -> bool {
        self.look_ahead.as_ref().is_some_and(|o| o.trust != PlanTrust::Guide)
    }

    fn follows_fused_chains(&self) -> bool {
        self.fused_chains
    }

    fn order_held_roots(&self, held: &mut [u32]) {
        if let Some(h) = self.run_as_planned() {
            h.order_held_roots(held);
        }
    }

    fn place<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, task: u32, releasing: Option<WorkerId>) {
        if let Some(h) = self.run_as_planned() {
            return h.place(plan, q, task, releasing);
        }
        let now = q.now();
        let w = match self.on_plan(plan, q, task, now) {
            Some(w) => w,
            None => match self.earliest_finish(plan, q, task, now) {
                Some(w) => w,
                None => return place_unpreferred(plan, q, task),
            },
        };
        if let Some(c) = q.compute_time(task, w) {
            add(&self.queued[w.index()][plan.band(task) as usize], c);
        }
        if releasing == Some(w) && self.depth_first {
            // Without a plan, the releasing worker runs what it released next (its deque is
            // LIFO): depth first, so a consumer frees its inputs before more are produced.
            q.push_local(w, task);
        } else {
            self.push_placed(plan, q, w, task);
        }
    }

    fn next<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, worker: WorkerId) -> Option<Pick> {
        if let Some(h) = self.run_as_planned() {
            return h.next(plan, q, worker);
        }
        let now = q.now();
        // Planned work first (own deque, then what was placed here, in order), then retries
        // and shared (unplanned) work.
        let planned = q.pop_local(worker).or_else(|| self.pop_placed(plan, q, worker));
        if let Some(task) = planned {
            self.started(plan, q, task, worker, Some(worker), now);
            return Some(Pick {
                task,
                stolen_from: None,
            });
        }
        if let Some(task) = take_queued(plan, q, worker, false) {
            self.started(plan, q, task, worker, None, now);
            return Some(Pick {
                task,
                stolen_from: None,
            });
        }
        // Idle: nothing is queued here any more.
        store(&self.running_end[worker.index()], now);
        self.queued[worker.index()].iter().for_each(|b| store(b, 0.0));
        for &victim in plan.victims(worker) {
            // The victim's next planned task, else the oldest of its deque: one look each.
            let stolen = self.pop_placed(plan, q, victim).or_else(|| q.steal(worker, victim));
            let Some(task) = stolen else { continue };
            let mine = (plan.eligible(task, worker) && !self.left_out(task, worker))
                .then(|| self.finish_on(plan, q, task, worker, now).map(|(f, _)| f))
                .flatten();
            let theirs = q
                .compute_time(task, victim)
                .map(|c| self.start_on(victim, plan.band(task), now) + c);
            match (mine, theirs) {
                (Some(m), Some(t)) if m < t => {
                    self.started(plan, q, task, worker, Some(victim), now);
                    return Some(Pick {
                        task,
                        stolen_from: Some(victim),
                    });
                }
                // Not allowed here, or not worth moving: give it back to its owner.
                _ => self.push_placed(plan, q, victim, task),
            }
        }
        None
    }
}

#[cfg(test)]
impl Locality {
    /// The tasks kept on CPUs, for tests of how a driver builds the policy.
    pub(crate) fn kept_on_cpus(&self) -> Vec<u32> {
        self.look_ahead.as_ref().map_or_else(Vec::new, |o| {
            (0..o.order.len() as u32).filter(|&t| o.on_cpu(t)).collect()
        })
    }

    /// Whether a look-ahead orders the queues.
    pub(crate) fn has_look_ahead(&self) -> bool {
        self.look_ahead.is_some()
    }
}
