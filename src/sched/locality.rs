//! `locality`: earliest expected finish, paying for data movement.
//!
//! A ready task goes to the eligible worker with the earliest expected finish: when that
//! worker frees up (its queued work, as this policy placed it), plus the time to bring the
//! inputs it does not hold, plus the expected compute time. Ties go to the worker holding the
//! most input bytes. An idle worker steals from workers of its own class only when it would
//! finish the stolen task sooner, transfer included, than its owner would.
//!
//! Until the performance model knows a task's cost on every eligible worker, the task is
//! placed as `eager` places it (a shared queue), so an uncalibrated run is sensible.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{place_unpreferred, take_queued, Pick, Plan, Policy, ReadyQueues};
use crate::topology::{DeviceKind, WorkerId};

/// The locality policy. Holds, per worker, the expected time its queued work ends.
#[derive(Debug)]
pub struct Locality {
    free_at: Vec<AtomicU64>,
    /// With the device split of the area-optimal schedule: the CPU/GPU time ratio below
    /// which a task goes to CPUs, and each worker's kind.
    split: Option<(f64, Vec<DeviceKind>)>,
}

impl Locality {
    /// For a machine of `workers` workers.
    pub fn new(workers: usize) -> Self {
        Locality {
            free_at: (0..workers).map(|_| AtomicU64::new(0f64.to_bits())).collect(),
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

    fn free_at(&self, w: WorkerId) -> f64 {
        f64::from_bits(self.free_at[w.index()].load(Ordering::Relaxed))
    }

    fn set_free_at(&self, w: WorkerId, t: f64) {
        self.free_at[w.index()].store(t.to_bits(), Ordering::Relaxed);
    }

    /// Expected finish of `task` on `w` if it starts after `w`'s queued work. Input copies
    /// start when the task is placed (prefetch), so they overlap that queued work.
    fn finish_on<Q: ReadyQueues>(&self, q: &Q, task: u32, w: WorkerId, now: f64) -> Option<(f64, u64)> {
        let compute = q.compute_time(task, w)?;
        let (transfer, resident) = q.transfer(task, w);
        Some((now.max(self.free_at(w)).max(now + transfer) + compute, resident))
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
            let Some((finish, resident)) = self.finish_on(q, task, w, now) else {
                // Not calibrated for this worker: share the task as eager would.
                return place_unpreferred(plan, q, task);
            };
            let better = match best {
                None => true,
                Some((bf, br, _)) => {
                    finish < bf - TIE * bf.abs().max(1e-12)
                        || ((finish - bf).abs() <= TIE * bf.abs().max(1e-12) && resident > br)
                }
            };
            if better {
                best = Some((finish, resident, w));
            }
        }
        let Some((finish, _, w)) = best else {
            return place_unpreferred(plan, q, task);
        };
        self.set_free_at(w, finish);
        if releasing == Some(w) {
            q.push_local(w, task);
        } else {
            q.push_mailbox(w, plan.band(task), task);
        }
    }

    fn next<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, worker: WorkerId) -> Option<Pick> {
        if let Some(task) = q.pop_local(worker).or_else(|| take_queued(plan, q, worker, false)) {
            return Some(Pick {
                task,
                stolen_from: None,
            });
        }
        let now = q.now();
        self.set_free_at(worker, now);
        for &victim in plan.victims(worker) {
            for band in 0..plan.num_bands() {
                let stolen = q
                    .steal_mailbox(worker, victim, band)
                    .map(|t| (t, true))
                    .or_else(|| q.steal(worker, victim).map(|t| (t, false)));
                let Some((task, from_mailbox)) = stolen else { continue };
                if !plan.eligible(task, worker) {
                    place_unpreferred(plan, q, task);
                    continue;
                }
                let mine = self.finish_on(q, task, worker, now).map(|(f, _)| f);
                let theirs = self.free_at(victim);
                match mine {
                    Some(f) if f < theirs => {
                        self.set_free_at(worker, f);
                        return Some(Pick {
                            task,
                            stolen_from: Some(victim),
                        });
                    }
                    // Not worth moving: give it back to its owner.
                    _ => {
                        if from_mailbox {
                            q.push_mailbox(victim, band, task);
                        } else {
                            q.push_mailbox(victim, plan.band(task), task);
                        }
                        break;
                    }
                }
            }
        }
        None
    }
}
