//! What the runtime tells planning policies: the time since the run began, expected compute
//! times from the runtime's performance model (and, for kernels the model had no time for,
//! what this run has measured of them so far: [`LearnedCosts`]), and the time to copy a
//! task's missing inputs to a worker's memory (from the coherence state of each input and the
//! link model), plus, on a memory node that is full, the time to make room (evicted copies
//! written back).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::budget::Budgets;
use super::data::DataCell;
use crate::graph::Graph;
use crate::memory::{room_seconds, Node};
use crate::sched::perfmodel::PerfModel;
use crate::sched::{kind_index, TaskCost};
use crate::topology::{DeviceKind, WorkerId};

/// Host↔GPU bandwidth assumed until transfers have been measured (PCIe 3.0 x16), bytes/s.
pub const DEFAULT_BANDWIDTH: f64 = 12e9;
/// Link latency assumed until measured, seconds.
pub const DEFAULT_LATENCY: f64 = 10e-6;

/// The cost view of one run.
pub(crate) struct CostView<'a> {
    pub start: Instant,
    pub costs: Vec<TaskCost>,
    /// What this run measured where `costs` has no time (on machines with GPUs).
    pub learned: Option<&'a LearnedCosts>,
    pub kind_of: Vec<DeviceKind>,
    pub node_of: Vec<Node>,
    pub graph: &'a Graph,
    pub cells: &'a [Option<Arc<DataCell>>],
    pub data_bytes: &'a [u64],
    pub bandwidth: f64,
    pub latency: f64,
    pub budgets: &'a Budgets,
}

impl CostView<'_> {
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    pub fn compute_time(&self, task: u32, w: WorkerId) -> Option<f64> {
        self.time_on(task, self.kind_of[w.index()])
    }

    /// The expected time of `task` on a worker of `kind`: the model's, else what this run
    /// measured.
    pub fn time_on(&self, task: u32, kind: DeviceKind) -> Option<f64> {
        self.costs[task as usize][kind_index(kind)].or_else(|| self.learned?.get(task, kind))
    }

    pub fn transfer(&self, task: u32, w: WorkerId) -> (f64, u64) {
        let node = self.node_of[w.index()];
        let rec = &self.graph.tasks[task as usize];
        let (mut time, mut resident) = (0.0, 0u64);
        for &(d, access) in &self.graph.accesses[rec.accesses.range()] {
            if !access.reads() {
                continue;
            }
            let bytes = self.data_bytes[d as usize];
            match &self.cells[d as usize] {
                Some(cell) if !cell.is_valid_on(node) => time += self.latency + bytes as f64 / self.bandwidth,
                _ => resident += bytes,
            }
        }
        (time + self.room_time(task, node), resident)
    }

    /// On a limited node without room for the task's new copies: the time to write back as
    /// many bytes (the worst case, every evicted copy being the only valid one).
    fn room_time(&self, task: u32, node: Node) -> f64 {
        let nb = self.budgets.node(node);
        let cap = nb.capacity.load(std::sync::atomic::Ordering::Relaxed);
        if cap == u64::MAX {
            return 0.0;
        }
        let rec = &self.graph.tasks[task as usize];
        let new_bytes: u64 = self.graph.accesses[rec.accesses.range()]
            .iter()
            .filter_map(|&(d, _)| self.cells[d as usize].as_ref())
            .filter(|c| !c.has_copy_on(node))
            .map(|c| c.bytes() as u64)
            .sum();
        let used = nb.used.load(std::sync::atomic::Ordering::Relaxed);
        room_seconds(node, used, new_bytes, cap, |b| self.latency + b as f64 / self.bandwidth)
    }
}

/// Bytes of each task's operands (the size its performance model is keyed by).
pub(crate) fn task_sizes(graph: &Graph, data_bytes: &[u64]) -> Vec<u64> {
    graph
        .tasks
        .iter()
        .map(|t| {
            graph.accesses[t.accesses.range()]
                .iter()
                .map(|&(d, _)| data_bytes[d as usize])
                .sum()
        })
        .collect()
}

/// Bytes that task `t` reads of what task `p` writes.
pub(crate) fn shared_bytes(graph: &Graph, data_bytes: &[u64], p: u32, t: u32) -> u64 {
    graph.handed_over(p, t).map(|d| data_bytes[d as usize]).sum()
}

/// Expected costs of every task from the model, where the kernel can run, and each task's
/// cost group (one per kernel and operand size), for [`LearnedCosts`].
/// Lookups are memoised per (kernel, size): graphs repeat a few shapes many times.
pub(crate) fn model_costs(graph: &Graph, model: &PerfModel, sizes: &[u64]) -> (Vec<TaskCost>, Vec<u32>) {
    let mut memo: std::collections::HashMap<(u32, u64), (u32, TaskCost)> = std::collections::HashMap::new();
    graph
        .tasks
        .iter()
        .zip(sizes)
        .map(|(t, &size)| {
            let groups = memo.len() as u32;
            let (group, cost) = *memo.entry((t.kernel, size)).or_insert_with(|| {
                let k = &graph.kernels[t.kernel as usize];
                let on = |kind: DeviceKind, has: bool| {
                    if has {
                        model.expected(k.name(), &kind.to_string(), size)
                    } else {
                        None
                    }
                };
                (
                    groups,
                    [on(DeviceKind::Cpu, k.has_cpu()), on(DeviceKind::Gpu, k.has_gpu())],
                )
            });
            (cost, group)
        })
        .unzip()
}

/// Times measured during a run for kernels the model had no time for, per cost group (a
/// kernel and an operand size, [`model_costs`]) and device kind, so that once one task of a
/// group has run on a kind, the rest of the group is placed by cost rather than as `eager`
/// places it. A fresh runtime's first graph (a demo's, a benchmark's first repetition) is
/// otherwise placed blind from start to end: the model learns only when a run ends.
///
/// The first time measured stays: a time that later went down would leave `locality`'s
/// per-worker queued work charged with the higher one. (GPU times are recorded only from
/// timestamp queries or a batch of one task, never a share of a mixed batch.) Relaxed
/// atomics: a placement that reads a time a moment late is still a placement.
pub(crate) struct LearnedCosts {
    group_of: Vec<u32>,
    /// Per group: whether the model has every time already (nothing to learn).
    known: Vec<bool>,
    /// `[group][kind]`: seconds as f64 bits; 0 until measured.
    seconds: Vec<[AtomicU64; 2]>,
    /// Per group, its kernel; per kernel, whether any of its tasks was timed on a GPU in
    /// this run (at any size).
    kernel_of_group: Vec<u32>,
    timed_on_gpu: Vec<AtomicBool>,
}

impl LearnedCosts {
    /// For tasks of these cost groups and kernels (`kernel_of(task)`), whose model costs
    /// are `costs`, on a graph of `kernels` kernels.
    pub fn new(group_of: Vec<u32>, costs: &[TaskCost], kernel_of: impl Fn(u32) -> u32, kernels: usize) -> Self {
        let groups = group_of.iter().map(|&g| g as usize + 1).max().unwrap_or(0);
        let mut known = vec![false; groups];
        let mut kernel_of_group = vec![0; groups];
        for (t, (&g, c)) in group_of.iter().zip(costs).enumerate() {
            known[g as usize] = c.iter().all(Option::is_some);
            kernel_of_group[g as usize] = kernel_of(t as u32);
        }
        LearnedCosts {
            group_of,
            known,
            seconds: (0..groups).map(|_| [AtomicU64::new(0), AtomicU64::new(0)]).collect(),
            kernel_of_group,
            timed_on_gpu: (0..kernels).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// The time measured in this run for `task`'s group on `kind`, if any.
    pub fn get(&self, task: u32, kind: DeviceKind) -> Option<f64> {
        let g = *self.group_of.get(task as usize)? as usize;
        let s = f64::from_bits(self.seconds.get(g)?[kind_index(kind)].load(Ordering::Relaxed));
        (s > 0.0).then_some(s)
    }

    /// Whether a task of `task`'s kernel, of any size, was timed on a GPU in this run.
    pub fn kernel_timed_on_gpu(&self, task: u32) -> bool {
        self.group_of
            .get(task as usize)
            .and_then(|&g| self.kernel_of_group.get(g as usize))
            .is_some_and(|&k| self.timed_on_gpu[k as usize].load(Ordering::Relaxed))
    }

    /// Records that `task` took `seconds` on `kind` (kept if its group had no time there).
    pub fn record(&self, task: u32, kind: DeviceKind, seconds: f64) {
        let Some(&g) = self.group_of.get(task as usize) else {
            return;
        };
        let g = g as usize;
        if self.known[g] || !(seconds > 0.0 && seconds.is_finite()) {
            return;
        }
        if kind == DeviceKind::Gpu {
            self.timed_on_gpu[self.kernel_of_group[g] as usize].store(true, Ordering::Relaxed);
        }
        let _ = self.seconds[g][kind_index(kind)].compare_exchange(
            0,
            seconds.to_bits(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tasks of one group share what the first of them measured, per kind; a kernel timed on
    /// a GPU at one size counts as timed there at every size; groups the model knows learn
    /// nothing.
    #[test]
    fn learned_costs_are_shared_by_a_group_and_keep_the_first() {
        let unknown: TaskCost = [None, None];
        // Tasks 0 and 2: group 0 (kernel 0); task 1: group 1 (kernel 0, another size);
        // task 3: group 2 (kernel 1), which the model knows.
        let costs = [unknown, unknown, unknown, [Some(1.0), Some(2.0)]];
        let l = LearnedCosts::new(vec![0, 1, 0, 2], &costs, |t| u32::from(t == 3), 2);
        assert_eq!(l.get(2, DeviceKind::Gpu), None);
        assert!(!l.kernel_timed_on_gpu(1));
        l.record(0, DeviceKind::Gpu, f64::NAN);
        assert_eq!(l.get(2, DeviceKind::Gpu), None);
        l.record(0, DeviceKind::Gpu, 0.5);
        l.record(2, DeviceKind::Gpu, 0.2);
        assert_eq!(l.get(2, DeviceKind::Gpu), Some(0.5));
        assert_eq!(l.get(0, DeviceKind::Cpu), None);
        assert_eq!(l.get(1, DeviceKind::Gpu), None);
        assert!(l.kernel_timed_on_gpu(1), "same kernel, another size");
        assert!(!l.kernel_timed_on_gpu(3));
        l.record(3, DeviceKind::Cpu, 0.1);
        assert_eq!(l.get(3, DeviceKind::Cpu), None);
        assert_eq!(
            LearnedCosts::new(Vec::new(), &[], |_| 0, 0).get(0, DeviceKind::Cpu),
            None
        );
    }
}
