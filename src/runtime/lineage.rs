//! Lineage of data produced on GPUs, to recompute what a device loss takes.
//!
//! A datum whose only valid copy was on a lost GPU can be recomputed when the GPU task that
//! last wrote it produced it whole (write-only access), read only data it did not write, and
//! none of those inputs, nor the datum itself, has been written since: re-running that task
//! on a CPU gives the same bytes. Inputs lost too are recomputed first, recursively. A datum
//! last updated in place (read-write) cannot be rebuilt this way: its previous value is gone
//! with the device (keep a host replica of such data).
//!
//! Invariants: `versions[d]` counts the completed writes of datum `d` in this run (kept only
//! on machines with GPUs); a producer entry records the versions its inputs had when it ran
//! and the version it gave its output, and is only used while both still hold.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::graph::Graph;

/// The last GPU producer of a datum.
#[derive(Clone, Debug)]
pub(crate) struct Producer {
    pub task: u32,
    /// Its inputs, with the versions they had.
    pub inputs: Vec<(u32, u32)>,
    /// The version it gave the datum.
    pub version: u32,
}

/// The run's lineage (empty and inert without GPUs).
pub(crate) struct Lineage {
    versions: Vec<AtomicU32>,
    producers: Mutex<HashMap<u32, Producer>>,
    /// Tasks re-run to recompute lost data.
    pub recomputed: AtomicU64,
}

impl Lineage {
    pub fn new(data: usize, enabled: bool) -> Self {
        Lineage {
            versions: (0..if enabled { data } else { 0 }).map(|_| AtomicU32::new(0)).collect(),
            producers: Mutex::new(HashMap::new()),
            recomputed: AtomicU64::new(0),
        }
    }

    fn enabled(&self) -> bool {
        !self.versions.is_empty()
    }

    /// The completed writes of `d` so far.
    pub fn version(&self, d: u32) -> u32 {
        self.versions.get(d as usize).map_or(0, |v| v.load(Ordering::Acquire))
    }

    /// A CPU task completed: its writes count.
    pub fn cpu_task_done(&self, graph: &Graph, task: u32) {
        if !self.enabled() {
            return;
        }
        for &(d, access) in &graph.accesses[graph.tasks[task as usize].accesses.range()] {
            if access.writes() {
                self.versions[d as usize].fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// A GPU task completed: its writes count, and it becomes the producer of what it wrote
    /// whole from inputs it only read.
    pub fn gpu_task_done(&self, graph: &Graph, task: u32) {
        if !self.enabled() {
            return;
        }
        let accesses = &graph.accesses[graph.tasks[task as usize].accesses.range()];
        let pure = accesses.iter().all(|(_, a)| !(a.reads() && a.writes()));
        let inputs: Vec<(u32, u32)> = accesses
            .iter()
            .filter(|(_, a)| a.reads())
            .map(|&(e, _)| (e, self.version(e)))
            .collect();
        let mut producers = self.producers.lock().unwrap_or_else(|e| e.into_inner());
        for &(d, access) in accesses {
            if !access.writes() {
                continue;
            }
            let version = self.versions[d as usize].fetch_add(1, Ordering::AcqRel) + 1;
            if pure {
                producers.insert(
                    d,
                    Producer {
                        task,
                        inputs: inputs.clone(),
                        version,
                    },
                );
            } else {
                producers.remove(&d);
            }
        }
    }

    /// Sets `d`'s version back (a recomputation restores a version, it does not make one).
    pub fn restore(&self, d: u32, version: u32) {
        if let Some(v) = self.versions.get(d as usize) {
            v.store(version, Ordering::Release);
        }
    }

    /// The producer that can recompute `d` now, if any.
    pub fn producer_of(&self, d: u32) -> Option<Producer> {
        let p = self
            .producers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&d)
            .cloned()?;
        let current = p.version == self.version(d) && p.inputs.iter().all(|&(e, v)| self.version(e) == v);
        current.then_some(p)
    }
}
