//! `heteroprio`: StarPU's HeteroPrio (Agullo, Beaumont, Eyraud-Dubois et al.), the affinity
//! baseline. Ready tasks wait in shared buckets ordered by acceleration factor (a task's CPU
//! time over its GPU time); an idle GPU takes from the bucket of highest acceleration, an idle
//! CPU from the lowest, each bucket in arrival order. The devices thus split the work by what
//! each gains most on, without a plan and without looking at the critical path.
//!
//! The critical end, as StarPU's does it: a device may take a task of a bucket the other
//! class runs `f` times faster only while the bucket holds at least `f` tasks per worker of
//! that class; fewer are left to the faster class (so that the last, critical tasks of a
//! kind do not start on a slow CPU). There is no spoliation (an idle GPU restarting a task a
//! CPU is running): neither driver can take a running task back. Without costs for a task on both classes, it
//! goes to the bucket of its one class (GPU-only: highest, CPU-only: lowest); without any
//! costs the policy is `eager` with one bucket.
//!
//! Invariants: a task's bucket is fixed when the policy is built, and buckets are the shared
//! queues' bands (`0..MAX_BANDS`, 0 the most accelerated), so the queues of every driver hold
//! them.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Pick, Plan, Policy, ReadyQueues, TaskCost, MAX_BANDS};
use crate::topology::{DeviceKind, WorkerId};

/// The HeteroPrio policy.
#[derive(Debug)]
pub struct HeteroPrio {
    /// Per task, its bucket (0: the highest acceleration).
    bucket: Vec<u8>,
    /// Per worker, whether it takes the most accelerated tasks first (GPUs).
    fast: Vec<bool>,
    /// Per bucket, the least acceleration of its tasks (GPU over CPU speed).
    acceleration: [f64; MAX_BANDS as usize],
    /// Per bucket, tasks waiting in it (over every set's queue).
    waiting: [AtomicUsize; MAX_BANDS as usize],
    /// Workers of each class: `[cpus, gpus]`.
    workers: [usize; 2],
}

impl HeteroPrio {
    /// Buckets from per-task `[cpu, gpu]` costs (`kinds[w]`: worker `w`'s kind). Distinct
    /// accelerations get buckets of their own when there are at most [`MAX_BANDS`] of them
    /// (a tiled Cholesky has four: one per kernel), else the range of their logarithms is
    /// cut into [`MAX_BANDS`] equal parts.
    pub fn new(costs: &[TaskCost], kinds: &[DeviceKind]) -> Self {
        let fast = kinds.iter().map(|&k| k == DeviceKind::Gpu).collect();
        let acceleration: Vec<f64> = costs
            .iter()
            .map(|c| match (c[0], c[1]) {
                (Some(cpu), Some(gpu)) if gpu > 0.0 => cpu / gpu,
                (Some(_), Some(_)) => f64::INFINITY,
                (None, Some(_)) => f64::INFINITY,
                (Some(_), None) => 0.0,
                (None, None) => 1.0,
            })
            .collect();
        let mut distinct: Vec<f64> = acceleration.clone();
        distinct.sort_by(|a, b| b.total_cmp(a));
        distinct.dedup();
        let bands = usize::from(MAX_BANDS);
        let bucket: Vec<u8> = if distinct.len() <= bands {
            acceleration
                .iter()
                .map(|a| distinct.iter().position(|d| d == a).unwrap_or(0) as u8)
                .collect()
        } else {
            let finite: Vec<f64> = distinct.iter().copied().filter(|a| a.is_finite() && *a > 0.0).collect();
            let (hi, lo) = (
                finite.first().copied().unwrap_or(1.0).ln(),
                finite.last().copied().unwrap_or(1.0).ln(),
            );
            let span = (hi - lo).max(1e-12);
            acceleration
                .iter()
                .map(|&a| {
                    if a == f64::INFINITY {
                        0
                    } else if a <= 0.0 {
                        MAX_BANDS - 1
                    } else {
                        let x = ((hi - a.ln()) / span * bands as f64).floor();
                        x.clamp(0.0, (bands - 1) as f64) as u8
                    }
                })
                .collect()
        };
        let mut least = [f64::INFINITY; MAX_BANDS as usize];
        for (&b, &a) in bucket.iter().zip(&acceleration) {
            least[usize::from(b)] = least[usize::from(b)].min(a);
        }
        let gpus = kinds.iter().filter(|&&k| k == DeviceKind::Gpu).count();
        HeteroPrio {
            bucket,
            fast,
            acceleration: least,
            waiting: Default::default(),
            workers: [kinds.len() - gpus, gpus],
        }
    }

    /// Whether `fast_worker` (a GPU when true) may take a task of `bucket` now: always from
    /// a bucket its class runs faster; from one the other class runs `f` times faster, only
    /// while it holds at least `f` tasks per worker of that class.
    fn may_take(&self, bucket: u8, fast_worker: bool) -> bool {
        let a = self.acceleration[usize::from(bucket)];
        let (other_faster_by, others) = if fast_worker {
            (1.0 / a, self.workers[0])
        } else {
            (a, self.workers[1])
        };
        if other_faster_by.is_nan() || other_faster_by <= 1.0 || others == 0 {
            return true;
        }
        let waiting = self.waiting[usize::from(bucket)].load(Ordering::Relaxed) as f64;
        waiting >= other_faster_by * others as f64
    }

    /// A task's bucket.
    pub fn bucket(&self, task: u32) -> u8 {
        self.bucket.get(task as usize).copied().unwrap_or(0)
    }
}

impl Policy for HeteroPrio {
    fn name(&self) -> &'static str {
        "heteroprio"
    }

    fn immediate_successor(&self) -> bool {
        // Which device class runs a task is the policy's point where there are two; on a
        // machine of one class, running a released task at once keeps data warm and memory
        // low, as under `eager`.
        self.workers.contains(&0)
    }

    fn place<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, task: u32, _releasing: Option<WorkerId>) {
        let b = self.bucket(task);
        self.waiting[usize::from(b)].fetch_add(1, Ordering::Relaxed);
        q.push_shared(plan.task_set(task), b, task);
    }

    fn next<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, worker: WorkerId) -> Option<Pick> {
        // Retries and tasks passed on by a lost worker come first.
        let retried = (0..plan.num_bands()).find_map(|b| q.pop_mailbox(worker, b));
        let fast = self.fast.get(worker.index()).copied().unwrap_or(false);
        let task = retried.or_else(|| {
            (0..MAX_BANDS).find_map(|i| {
                let bucket = if fast { i } else { MAX_BANDS - 1 - i };
                if !self.may_take(bucket, fast) {
                    return None;
                }
                let task = plan
                    .sets_of(worker)
                    .iter()
                    .find_map(|&set| q.pop_shared(worker, set, bucket, false))?;
                self.waiting[usize::from(bucket)].fetch_sub(1, Ordering::Relaxed);
                Some(task)
            })
        })?;
        Some(Pick {
            task,
            stolen_from: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_acceleration_and_each_class_takes_its_end() {
        // Four kernels (Cholesky's): accelerations 92, 56, 24, 14, and one CPU-only task.
        let costs: Vec<TaskCost> = vec![
            [Some(92.0), Some(1.0)],
            [Some(56.0), Some(1.0)],
            [Some(24.0), Some(1.0)],
            [Some(14.0), Some(1.0)],
            [Some(1.0), None],
        ];
        let kinds = [DeviceKind::Cpu, DeviceKind::Gpu];
        let h = HeteroPrio::new(&costs, &kinds);
        let buckets: Vec<u8> = (0..5).map(|t| h.bucket(t)).collect();
        assert_eq!(buckets, vec![0, 1, 2, 3, 4]);
        // Both workers may run the first four; the CPU-only task on worker 0 alone.
        let mut mask = crate::sched::WorkerMask::empty(2);
        mask.insert(WorkerId(0));
        mask.insert(WorkerId(1));
        let all = crate::sched::EligibleSet {
            workers: vec![WorkerId(0), WorkerId(1)],
            mask,
        };
        let mut cpu_mask = crate::sched::WorkerMask::empty(2);
        cpu_mask.insert(WorkerId(0));
        let cpu = crate::sched::EligibleSet {
            workers: vec![WorkerId(0)],
            mask: cpu_mask,
        };
        let plan = Plan::new(vec![0, 0, 0, 0, 1], vec![0; 5], 1, vec![all, cpu], vec![Vec::new(); 2]);
        let mut q = crate::sched::SimQueues::new(2, 2, MAX_BANDS);
        for t in 0..5 {
            h.place(&plan, &mut q, t, None);
        }
        let take = |q: &mut crate::sched::SimQueues, w: u32| h.next(&plan, q, WorkerId(w)).map(|p| p.task);
        assert_eq!(take(&mut q, 1), Some(0), "the GPU takes the most accelerated task");
        assert_eq!(take(&mut q, 0), Some(4), "the CPU takes the least accelerated");
        // The GPU runs task 3 14 times faster and only one waits: the CPU leaves it.
        assert_eq!(take(&mut q, 0), None, "the critical end is left to the GPU");
        assert_eq!(take(&mut q, 1), Some(1));
        assert_eq!(take(&mut q, 1), Some(2));
        assert_eq!(take(&mut q, 1), Some(3));
        assert_eq!(take(&mut q, 1), None);
        // With 14 of them waiting, the CPU takes one.
        let many: Vec<TaskCost> = vec![[Some(14.0), Some(1.0)]; 14];
        let h = HeteroPrio::new(&many, &kinds);
        let plan = Plan::new(
            vec![0; 14],
            vec![0; 14],
            1,
            vec![plan.set(0).clone()],
            vec![Vec::new(); 2],
        );
        let mut q = crate::sched::SimQueues::new(2, 1, MAX_BANDS);
        for t in 0..14 {
            h.place(&plan, &mut q, t, None);
        }
        assert_eq!(h.next(&plan, &mut q, WorkerId(0)).map(|p| p.task), Some(0));
        assert_eq!(h.next(&plan, &mut q, WorkerId(0)), None, "13 left: below 14 per GPU");
    }
}
