//! `locality`: earliest expected finish, paying for data movement.
//!
//! A ready task goes to the eligible worker with the earliest expected finish: when that
//! worker could start it (after its running task and the planned work queued in the same or
//! higher priority bands), or when its inputs can be there if later (copies start at
//! placement), plus the expected compute time. Ties go to the worker holding the most input
//! bytes. An idle worker steals from workers of its own class only when it would finish the
//! stolen task sooner, transfer included, than its owner could.
//!
//! Until the performance model knows a task's cost on every eligible worker, the task is
//! placed as `eager` places it (a shared queue), so an uncalibrated run is sensible.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{place_unpreferred, take_queued, Pick, Plan, Policy, ReadyQueues};
use crate::topology::{DeviceKind, WorkerId};

/// The locality policy. Per worker, it keeps when the running task should end and how much
/// planned work waits in each priority band: a task placed in band `b` starts after the work
/// queued in bands up to `b` (higher bands are served first).
#[derive(Debug)]
pub struct Locality {
    running_end: Vec<AtomicU64>,
    /// `[worker][band]`: expected seconds of work queued there.
    queued: Vec<Vec<AtomicU64>>,
    /// With the device split of the area-optimal schedule: the CPU/GPU time ratio below
    /// which a task goes to CPUs, and each worker's kind.
    split: Option<(f64, Vec<DeviceKind>)>,
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
            split: None,
        }
    }

    /// Adds the device split of the area-optimal schedule: tasks whose CPU/GPU time ratio is
    /// below `threshold` run on CPUs. A greedy earliest-finish rule does not see this split
    /// (while the fast device's queue is short it keeps everything there, and the slow
    /// devices idle); the lower bound's linear program does.
    pub fn with_split(mut self, threshold: f64, kinds: Vec<DeviceKind>) -> Self {
        self.split = (threshold > 0.0).then_some((threshold, kinds));
        self
    }

    /// Whether the split sends `task` to CPUs. Tasks in the highest priority band (those
    /// on or near the critical path) stay free to take the fastest device.
    fn cpu_preferred<Q: ReadyQueues>(&self, plan: &Plan, q: &Q, task: u32) -> bool {
        let Some((threshold, kinds)) = &self.split else {
            return false;
        };
        if plan.band(task) == 0 {
            return false;
        }
        let workers = &plan.set(plan.task_set(task)).workers;
        let cost_on = |k: DeviceKind| {
            workers
                .iter()
                .find(|w| kinds[w.index()] == k)
                .and_then(|&w| q.compute_time(task, w))
        };
        match (cost_on(DeviceKind::Cpu), cost_on(DeviceKind::Gpu)) {
            (Some(c), Some(g)) if g > 0.0 => c / g < *threshold,
            _ => false,
        }
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

impl Policy for Locality {
    fn name(&self) -> &'static str {
        "locality"
    }

    fn immediate_successor(&self) -> bool {
        false
    }

    fn place<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, task: u32, releasing: Option<WorkerId>) {
        let now = q.now();
        let mut best: Option<(f64, u64, WorkerId)> = None;
        let cpu_only = self.cpu_preferred(plan, q, task);
        for &w in &plan.set(plan.task_set(task)).workers {
            if cpu_only
                && self
                    .split
                    .as_ref()
                    .is_some_and(|(_, k)| k[w.index()] != DeviceKind::Cpu)
            {
                continue;
            }
            let Some((finish, resident)) = self.finish_on(plan, q, task, w, now) else {
                // Not calibrated for this worker: share the task as eager would.
                return place_unpreferred(plan, q, task);
            };
            let tie = TIE * finish.abs().max(1e-12);
            let better = match best {
                None => true,
                Some((bf, br, _)) => finish < bf - tie || ((finish - bf).abs() <= tie && resident > br),
            };
            if better {
                best = Some((finish, resident, w));
            }
        }
        let Some((_, _, w)) = best else {
            return place_unpreferred(plan, q, task);
        };
        if let Some(c) = q.compute_time(task, w) {
            add(&self.queued[w.index()][plan.band(task) as usize], c);
        }
        if releasing == Some(w) {
            q.push_local(w, task);
        } else {
            q.push_mailbox(w, plan.band(task), task);
        }
    }

    fn next<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, worker: WorkerId) -> Option<Pick> {
        let now = q.now();
        // Planned work first (own deque, then mailbox by band), then shared (unplanned) work.
        let planned = q
            .pop_local(worker)
            .or_else(|| (0..plan.num_bands()).find_map(|b| q.pop_mailbox(worker, b)));
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
            for band in 0..plan.num_bands() {
                let stolen = q
                    .steal_mailbox(worker, victim, band)
                    .or_else(|| q.steal(worker, victim));
                let Some(task) = stolen else { continue };
                if !plan.eligible(task, worker) {
                    place_unpreferred(plan, q, task);
                    continue;
                }
                let mine = self.finish_on(plan, q, task, worker, now).map(|(f, _)| f);
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
                    // Not worth moving: give it back to its owner.
                    _ => {
                        q.push_mailbox(victim, plan.band(task), task);
                        break;
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
impl Locality {
    /// The split's threshold, for tests of how a driver builds the policy.
    pub(crate) fn split_threshold(&self) -> Option<f64> {
        self.split.as_ref().map(|(t, _)| *t)
    }
}
