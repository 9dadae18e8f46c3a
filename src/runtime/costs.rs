//! What the runtime tells planning policies: the time since the run began, expected compute
//! times from the runtime's performance model, and the time to copy a task's missing inputs
//! to a worker's memory (from the coherence state of each input and the link model), plus,
//! on a memory node that is full, the time to make room (evicted copies written back).

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
        self.costs[task as usize][kind_index(self.kind_of[w.index()])]
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

/// Expected costs of every task from the model, where the kernel can run.
/// Lookups are memoised per (kernel, size): graphs repeat a few shapes many times.
pub(crate) fn model_costs(graph: &Graph, model: &PerfModel, sizes: &[u64]) -> Vec<TaskCost> {
    let mut memo: std::collections::HashMap<(u32, u64), TaskCost> = std::collections::HashMap::new();
    graph
        .tasks
        .iter()
        .zip(sizes)
        .map(|(t, &size)| {
            *memo.entry((t.kernel, size)).or_insert_with(|| {
                let k = &graph.kernels[t.kernel as usize];
                let on = |kind: DeviceKind, has: bool| {
                    if has {
                        model.expected(k.name(), &kind.to_string(), size)
                    } else {
                        None
                    }
                };
                [on(DeviceKind::Cpu, k.has_cpu()), on(DeviceKind::Gpu, k.has_gpu())]
            })
        })
        .collect()
}
